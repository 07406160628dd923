"""Checks of the CUDA kernels on the CPU emulator that only the emulator has: the Python wrapper's
argument checks and the launchers under AddressSanitizer. The passes' comparison with the spec is the
``cudaemu`` pass set of tests/test_passes.py. Run each thread order as its own process:
``CUDACPU_ORDER=fwd|rev|rand pytest -m emulator``.
"""
import os
import subprocess

import pytest
import torch

from .conftest import require_backend

pytestmark = pytest.mark.emulator


@pytest.fixture(scope="module")
def emu():
    require_backend("cudaemu")
    from tests import cudaemu

    return cudaemu


def test_bad_input_is_rejected(emu):
    e = emu.EmuPasses()
    x = torch.randn(2, 4, 3, 5)
    with pytest.raises(ValueError, match="NCHW-contiguous or channels_last"):
        e.pool_hw(x[:, :, :, ::2])
    with pytest.raises(ValueError, match="a must be"):
        e.pool_c(x, torch.ones(2, 5))
    with pytest.raises(ValueError, match="split-style ties need x"):
        e.input_grad(x, None, None, None, None, None, None, None, None, None, None, None, True)


def test_asan_driver(emu, tmp_path):
    """Every launcher on odd and misaligned shapes under AddressSanitizer, checked by host loops."""
    driver = emu.ROOT / "tests" / "cudaemu" / "asan_driver.cu"
    try:
        exe = emu.build(("-fsanitize=address", "-g", "-O1", "-fno-strict-aliasing"), source=driver, shared=False,
                        tag="asan_driver")
    except RuntimeError as e:
        pytest.fail(f"the ASan driver did not build: {e}")
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0")
    proc = subprocess.run([str(exe)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"ASan driver failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    assert "asan_driver: all checks passed" in proc.stdout
