"""The bug-report facts (``cbam_fused.info()``, ``python -m cbam_fused.info``) and the build record.

Each fact is checked against something found independently: torch's and Triton's own version
attributes, the ISA forced through CBAM_FUSED_CPU_ISA, the architectures nvcc was asked for, the
extension files on disk.
"""
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cbam_fused
from cbam_fused import _info

ROOT = Path(__file__).resolve().parents[1]
PKG = Path(cbam_fused.__file__).resolve().parent


def _run(*args, env=None, cwd=ROOT):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=300,
                          env=dict(os.environ, **(env or {})))


def _built(name):
    return sorted(PKG.glob(f"{name}.*.so"))


def test_report_names_the_versions_and_the_chosen_isa():
    proc = _run("-m", "cbam_fused.info", env={"CBAM_FUSED_CPU_ISA": "default"})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"torch           {torch.__version__}" in out, out
    assert f"built against   torch {torch.__version__}" in out, out
    assert f"cbam_fused      {cbam_fused.__version__}" in out, out
    assert "isa=default" in out, out
    assert "RuntimeWarning" not in proc.stderr, proc.stderr  # runpy warns if the package imported info
    try:
        import triton
    except ImportError:
        assert "triton          not installed" in out
    else:
        assert f"triton          {triton.__version__}" in out, out


def test_json_and_function_agree_with_torch():
    proc = _run("-m", "cbam_fused.info", "--json")
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout)
    assert facts["torch"] == torch.__version__
    assert facts["cuda"] == torch.version.cuda
    assert facts["built_against_torch"] == torch.__version__
    buf = io.StringIO()
    here = cbam_fused.info(file=buf)
    assert here["torch"] == torch.__version__ and f"torch           {torch.__version__}" in buf.getvalue()
    assert cbam_fused.info(file=None)["backends"] == here["backends"]


def test_backends_and_reasons():
    facts = cbam_fused.info(file=None)
    assert "cpu" in facts["backends"] and facts["backends"][-1] == "torch"
    assert set(facts["backends"]) | set(facts["unavailable"]) == {"cpu", "cuda", "triton", "torch"}
    for name, why in facts["unavailable"].items():
        assert why and cbam_fused.unavailable_reason(name) == why
    if not torch.cuda.is_available():
        assert "cuda" in facts["unavailable"]
        why = facts["unavailable"]["cuda"]
        if torch.version.cuda is None and shutil.which("nvcc") and os.environ.get("CBAM_FUSED_NO_CUDA") != "1":
            assert why == "the CUDA kernels were not built: this torch is CPU-only"
        else:
            assert "no CUDA device" in why or "not built" in why or "did not load" in why, why
    for name in facts["backends"]:
        assert cbam_fused.unavailable_reason(name) is None
    with pytest.raises(ValueError, match="unknown backend"):
        cbam_fused.unavailable_reason("metal")


def test_triton_reason_without_interpreter_or_gpu():
    if torch.cuda.is_available():
        pytest.skip("with a GPU, Triton needs no interpreter")
    code = "import cbam_fused; print(cbam_fused.unavailable_reason('triton'))"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    try:
        import triton  # noqa: F401
    except ImportError:
        assert "not installed" in proc.stdout
    else:
        assert "TRITON_INTERPRET=1" in proc.stdout and "no CUDA device" in proc.stdout, proc.stdout


def test_cuda_archs_of_the_extension():
    """The archs read from _cuda's fatbinary are those nvcc was asked for: the TORCH_CUDA_ARCH_LIST
    that setup.py saw (kept in the build record)."""
    archs = _info.cuda_archs()
    if not _built("_cuda"):
        assert archs == "not built"
        return
    wanted = json.loads((PKG / "_build_info.json").read_text()).get("cuda_arch_list")
    if not wanted or not all(c.isdigit() or c in ".+PTXa; " for c in wanted):
        pytest.skip(f"the build's arch list is unknown or not numeric: {wanted!r}")
    sass, ptx = [], []
    for item in wanted.replace(" ", ";").split(";"):
        num = item.replace("+PTX", "").replace(".", "")
        sass.append(f"sm_{num}")
        if item.endswith("+PTX"):
            ptx.append(f"compute_{num}")
    expected = ", ".join(sass) + ("; PTX " + ", ".join(ptx) if ptx else "")
    assert archs == expected


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc to make a fatbinary")
def test_fatbin_parser_on_a_known_object(tmp_path):
    """A kernel compiled for chosen targets: plain and arch-specific machine code, and PTX."""
    src = tmp_path / "k.cu"
    src.write_text("__global__ void k(float* p) { p[threadIdx.x] *= 2.f; }\n")
    obj = tmp_path / "k.o"
    targets = ["-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90a,code=sm_90a",
               "-gencode", "arch=compute_120,code=compute_120"]
    proc = subprocess.run(["nvcc", "-c", str(src), "-o", str(obj), *targets], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert sorted(_info.fatbin_archs(obj.read_bytes())) == [
        ("ptx", "compute_120"), ("sass", "sm_80"), ("sass", "sm_90a")]


def test_fatbin_parser_rejects_other_files():
    with pytest.raises(ValueError, match="ELF"):
        _info.fatbin_archs(b"not an elf file at all")
    c_ext = _built("_C")
    if c_ext:  # an ELF file without CUDA code
        with pytest.raises(ValueError, match="nv_fatbin"):
            _info.fatbin_archs(c_ext[0].read_bytes())


def test_build_record_matches_this_build():
    record = json.loads((PKG / "_build_info.json").read_text())
    assert record["torch"] == torch.__version__
    on_disk = sorted(name for name in ("_C", "_cuda") if _built(name))
    assert sorted(record["extensions"]) == on_disk


def test_import_under_another_torch_names_both_versions(tmp_path):
    """A copy of the package whose record names another torch: importing it fails before loading the
    extensions, with both versions and the rebuild command."""
    copy = tmp_path / "cbam_fused"
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "_build_info.json").write_text(json.dumps({"torch": "2.0.0+cu118", "extensions": ["_C"]}))
    proc = _run("-c", "import cbam_fused", cwd=tmp_path)
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert any(line.startswith("ImportError: cbam_fused was built against torch 2.0.0+cu118, but torch "
                               f"{torch.__version__} is running") for line in err), proc.stderr
    assert f"{sys.executable} -m pip install --no-build-isolation" in proc.stderr, proc.stderr
