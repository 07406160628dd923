"""The version moves with every change to the public API or to an op schema (README, "Versions and changes").

The public surface is every name in ``cbam_fused.__all__`` (and in the ``__all__`` of a public
module it lists) with its call signature (parameter names, kinds and defaults; annotations are left
out, their text differs between Python versions), the public methods a class defines itself, and the
schema of every ``torch.ops.cbam_fused`` op. ``tests/api_lock.json`` records that surface, its
sha256 fingerprint and the version it belongs to. When the surface changes:

1. bump ``__version__`` in ``cbam_fused/__init__.py`` (pyproject.toml reads it from there);
2. give the new version a section in CHANGELOG.md (move the Unreleased entries under it);
3. run ``python -m tests.test_api_lock --update`` to record the new surface.

Run as a script, ``--update`` refuses to write a changed surface without steps 1 and 2.
"""
import difflib
import hashlib
import inspect
import json
import re
import sys
import types
from pathlib import Path

import pytest
import torch

import cbam_fused

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "tests" / "api_lock.json"
CHANGELOG = ROOT / "CHANGELOG.md"
HOW = ("bump __version__ in cbam_fused/__init__.py, give that version a section in CHANGELOG.md (move "
       "the Unreleased entries under it), then run `python -m tests.test_api_lock --update`")


def _signature(obj) -> str:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(?)"
    plain = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    return str(sig.replace(parameters=plain, return_annotation=inspect.Signature.empty))


def _describe(name: str, obj) -> list:
    if isinstance(obj, types.ModuleType):
        lines = [f"module {name}"]
        for member in sorted(getattr(obj, "__all__", ())):
            lines += _describe(f"{name}.{member}", getattr(obj, member))
        return lines
    if inspect.isclass(obj):
        bases = ", ".join(b.__qualname__ for b in obj.__bases__)
        sig = "" if issubclass(obj, BaseException) else _signature(obj)  # exceptions take *args
        lines = [f"class {name}{sig} <- {bases}"]
        for attr, value in sorted(vars(obj).items()):
            if attr.startswith("_"):
                continue
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            if inspect.isfunction(value):
                lines.append(f"  def {name}.{attr}{_signature(value)}")
            elif isinstance(value, property):
                lines.append(f"  property {name}.{attr}")
        return lines
    if callable(obj):
        return [f"def {name}{_signature(obj)}"]
    if isinstance(obj, dict):  # e.g. a table of functions: its keys (values print with addresses)
        return [f"{name}: dict with keys {sorted(obj)}"]
    return [f"{name} = {obj!r}"]


def _op_schemas() -> list:
    """Schemas of the ops in the cbam_fused namespace. The ``*_triton`` twins are left out: they are
    defined on first use of the Triton backend, from the same Python signature as their plain ops."""
    out = []
    for qualname in sorted(torch._C._dispatch_get_all_op_names()):
        ns, _, op = qualname.partition("::")
        if ns != "cbam_fused" or op.endswith("_triton"):
            continue
        packet = getattr(torch.ops.cbam_fused, op)
        out += [f"op {getattr(packet, overload)._schema}" for overload in sorted(packet.overloads())]
    return out


def surface() -> list:
    lines = []
    for name in sorted(cbam_fused.__all__):
        lines += _describe(name, getattr(cbam_fused, name))
    return lines + _op_schemas()


def fingerprint(lines: list) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def changelog_versions() -> list:
    return re.findall(r"^## \[([^\]]+)\]", CHANGELOG.read_text(), flags=re.MULTILINE)


def _lock() -> dict:
    return json.loads(LOCK.read_text())


def _diff(old: list, new: list) -> str:
    return "\n".join(difflib.unified_diff(old, new, "locked", "now", lineterm="", n=0))


def _require_full_build():
    from cbam_fused import backends

    if backends.unavailable_reason("cpu") is not None:  # the op schemas live in the C++ library
        pytest.skip(f"the C++ extension is not built: {backends.unavailable_reason('cpu')}")


# ------------------------------------------------------------------------------------------ tests
def test_version_has_one_source():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"], "pyproject.toml must not repeat the version"
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "cbam_fused.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", cbam_fused.__version__), cbam_fused.__version__


def test_changelog_has_the_version_and_unreleased():
    versions = changelog_versions()
    assert versions[0] == "Unreleased", "CHANGELOG.md starts with an [Unreleased] section"
    assert cbam_fused.__version__ in versions, (
        f"CHANGELOG.md has no section for the current version {cbam_fused.__version__}; add "
        f"'## [{cbam_fused.__version__}] - YYYY-MM-DD' with its changes")
    assert _lock()["version"] in versions


def test_public_api_matches_the_lock():
    _require_full_build()
    lock, now = _lock(), surface()
    assert fingerprint(lock["surface"]) == lock["fingerprint"], f"{LOCK.name} was edited by hand; {HOW}"
    if fingerprint(now) == lock["fingerprint"]:
        return
    diff = _diff(lock["surface"], now)
    if cbam_fused.__version__ == lock["version"]:
        pytest.fail(f"the public API or an op schema changed, but the version is still {lock['version']}: "
                    f"{HOW}.\n{diff}")
    pytest.fail(f"the version moved to {cbam_fused.__version__} but {LOCK.relative_to(ROOT)} still records "
                f"{lock['version']}: run `python -m tests.test_api_lock --update`.\n{diff}")


def test_the_surface_sees_changes():
    """The fingerprint notices a renamed parameter, a new default and a new public name."""
    def f(x, *, backend=None):
        pass

    def renamed(x, *, device=None):
        pass

    def new_default(x, *, backend="cpu"):
        pass

    base = fingerprint(_describe("f", f))
    assert fingerprint(_describe("f", renamed)) != base
    assert fingerprint(_describe("f", new_default)) != base
    assert fingerprint(_describe("f", f) + _describe("g", f)) != base


# ------------------------------------------------------------------------------------------- update
def update() -> int:
    now = surface()
    old = _lock() if LOCK.exists() else None
    version = cbam_fused.__version__
    if old is not None and fingerprint(now) == old["fingerprint"]:
        print(f"{LOCK.relative_to(ROOT)}: unchanged (version {old['version']})")
        return 0
    if old is not None and version == old["version"]:
        print(f"refused: the surface changed but the version is still {version}; bump __version__ in "
              f"cbam_fused/__init__.py first.\n{_diff(old['surface'], now)}", file=sys.stderr)
        return 1
    if version not in changelog_versions():
        print(f"refused: CHANGELOG.md has no '## [{version}]' section", file=sys.stderr)
        return 1
    LOCK.write_text(json.dumps({"version": version, "fingerprint": fingerprint(now), "surface": now}, indent=1)
                    + "\n")
    print(f"{LOCK.relative_to(ROOT)}: recorded the surface of version {version}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        print(__doc__)
        sys.exit(2)
    sys.exit(update())
