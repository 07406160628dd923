"""The wheel: build it, install it into a clean virtual environment, import it and run it there.

Marked slow: it compiles the extension again (with the CUDA kernels when a toolkit is found, for the
TORCH_CUDA_ARCH_LIST in the environment) and installs torch into a fresh venv (from the local wheel
cache on these machines, about two minutes).
"""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECK = r"""
import sys, torch, cbam_fused
from cbam_fused import reference as R
assert "site-packages" in cbam_fused.__file__, cbam_fused.__file__
assert "cpu" in cbam_fused.available_backends(), cbam_fused.available_backends()
torch.manual_seed(0)
ref = R.CBAM(32); fused = cbam_fused.CBAM(32); fused.load_state_dict(ref.state_dict())
x = torch.randn(2, 32, 9, 11)
torch.testing.assert_close(fused(x), ref(x), atol=1e-5, rtol=1e-4)
has_cuda = True
try:
    import cbam_fused._cuda
except ImportError:
    has_cuda = False
print("OK", cbam_fused.__file__, "cuda kernels:", has_cuda)
"""


@pytest.mark.slow
def test_wheel_builds_installs_and_imports(tmp_path):
    dist = tmp_path / "dist"
    env = dict(os.environ, MAX_JOBS=os.environ.get("MAX_JOBS", "2"))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-build-isolation", "--no-deps", "-w", str(dist)],
        capture_output=True, text=True, env=env, timeout=3600,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    wheels = list(dist.glob("cbam_fused-*.whl"))
    assert len(wheels) == 1, wheels
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert any(n.startswith("cbam_fused/_C.") and n.endswith(".so") for n in names), names
    assert "cbam_fused/reference.py" in names and not any(n.startswith("tests/") for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    import torch

    torch_spec = f"torch=={torch.__version__.split('+')[0]}"
    install = subprocess.run([str(py), "-m", "pip", "install", "-q", torch_spec, str(wheels[0])],
                             capture_output=True, text=True, timeout=1800)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    run = subprocess.run([str(py), "-c", CHECK], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert run.returncode == 0 and "OK" in run.stdout, run.stdout + run.stderr
    built_cuda = any(n.startswith("cbam_fused/_cuda.") for n in names)
    assert ("cuda kernels: True" in run.stdout) == built_cuda, run.stdout
