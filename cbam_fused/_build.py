"""The build record: which torch the compiled extensions were built against.

setup.py's build step writes ``_build_info.json`` next to the extensions. A C++ extension only loads
under the torch it was compiled for; under another one it fails with an undefined-symbol error that
names neither version, so ``import cbam_fused`` checks the record first (``check``), without loading
the extensions.
"""
import json
import os
import sys
from typing import Optional

import torch

RECORD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_build_info.json")


def record() -> Optional[dict]:
    """The build record, or None when there is none (never built, or built by other means)."""
    try:
        with open(RECORD) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _release(version: str) -> str:
    # 2.14.1+cu130 and 2.14.1+cpu share their C++ ABI; the local label only says which CUDA
    return version.split("+")[0]


def rebuild_command() -> str:
    """The command that rebuilds the extensions for the running torch."""
    pkg = os.path.dirname(RECORD)
    root = os.path.dirname(pkg)
    if os.path.isfile(os.path.join(root, "setup.py")):  # a source checkout (in-place or editable build)
        return f"cd {root} && {sys.executable} -m pip install --no-build-isolation --no-deps -e ."
    return (f"{sys.executable} -m pip install --no-build-isolation --no-deps --force-reinstall "
            "<cbam_fused source folder>")


def check() -> None:
    """Raise ImportError when the extensions were built against another torch than the running one."""
    rec = record()
    if rec is None or not rec.get("torch"):
        return
    built, running = rec["torch"], torch.__version__
    if _release(built) == _release(running):
        return
    raise ImportError(
        f"cbam_fused was built against torch {built}, but torch {running} is running; its compiled "
        f"extensions load only under the torch they were built for. Rebuild them for this torch:\n"
        f"    {rebuild_command()}"
    )
