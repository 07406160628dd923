"""CMakeLists.txt builds the op library for libtorch users, loadable with torch.ops.load_library.

Configures and builds in a temporary directory (CPU-only), then loads the library in a fresh
process (the in-place Python module registers the same namespace, so the two must not meet) and
checks ``torch.ops.cbam_fused.pool_hw`` against ``TorchPasses``.
"""
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest
import torch

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cmake():
    """pip's cmake<4 next to this interpreter first (the system cmake may be too old for torch)."""
    local = os.path.join(os.path.dirname(sys.executable), "cmake")
    return local if os.path.exists(local) else shutil.which("cmake")


def _cuda_toolkit_flags():
    """torch's CMake config of a CUDA build wants the toolkit even for a CPU-only library."""
    if torch.version.cuda is None:
        return []
    root = os.environ.get("CUDA_HOME")
    nvcc = shutil.which("nvcc")
    if root is None and nvcc is not None:
        out = subprocess.run([nvcc, "-dryrun", "-c", "-x", "cu", "/dev/null", "-o", "/dev/null"],
                             capture_output=True, text=True, timeout=60)
        for line in (out.stdout + out.stderr).splitlines():
            if "TOP=" in line:
                root = os.path.realpath(line.split("TOP=", 1)[1].strip())
    flags = []
    if root:
        flags.append(f"-DCUDA_TOOLKIT_ROOT_DIR={root}")
    site = os.path.dirname(os.path.dirname(torch.__file__))
    major = torch.version.cuda.split(".")[0]
    nvrtc = os.path.join(site, "nvidia", f"cu{major}", "lib", f"libnvrtc.so.{major}")
    if os.path.exists(nvrtc):
        flags.append(f"-DCUDA_nvrtc_LIBRARY={nvrtc}")
    return flags


CHECK = r"""
import importlib.util, sys, torch
torch.ops.load_library(sys.argv[1])
spec = importlib.util.spec_from_file_location("passes", sys.argv[2])  # without importing cbam_fused
passes = importlib.util.module_from_spec(spec); spec.loader.exec_module(passes)
x = torch.randn(2, 37, 5, 7)
x[0, 3] = 0
for t in (x, x.contiguous(memory_format=torch.channels_last)):
    got, want = torch.ops.cbam_fused.pool_hw(t), passes.TorchPasses().pool_hw(t)
    torch.testing.assert_close(got[0], want[0], rtol=2e-5, atol=2e-6)
    for g, w in zip(got[1:], want[1:]):
        assert torch.equal(g, w), (g, w)
print("OK", torch.ops.cbam_fused.cpu_info())
"""


def test_cmake_build_loads_and_matches_spec(tmp_path):
    cmake = _cmake()
    if cmake is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true and cmake is not installed")
        pytest.skip("cmake is not installed")
    build = tmp_path / "build"
    configure = [cmake, "-S", ROOT, "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                 f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
                 f"-DPython3_INCLUDE_DIR={sysconfig.get_paths()['include']}", *_cuda_toolkit_flags()]
    ninja = shutil.which("ninja") or os.path.join(os.path.dirname(sys.executable), "ninja")
    if os.path.exists(ninja):
        configure += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
    out = subprocess.run(configure, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    out = subprocess.run([cmake, "--build", str(build), "-j", "2"], capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lib = build / "libcbam_fused.so"
    assert lib.exists(), sorted(os.listdir(build))
    out = subprocess.run([sys.executable, "-c", CHECK, str(lib), os.path.join(ROOT, "cbam_fused", "passes.py")],
                         capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert out.returncode == 0 and out.stdout.startswith("OK"), out.stdout[-2000:] + out.stderr[-3000:]
    assert "threads=" in out.stdout
