"""Build of the cbam_fused op libraries with torch.utils.cpp_extension.

* ``cbam_fused._C``: the op schemas and the C++ CPU kernels; always built.
* ``cbam_fused._cuda``: the CUDA kernels; built whenever a CUDA toolkit (nvcc) is found, with or
  without a GPU, unless ``CBAM_FUSED_NO_CUDA=1``. It is a separate module so that ``import
  cbam_fused`` still works (with the CPU backend) under a CPU-only torch.

Environment:
  CBAM_FUSED_NO_CUDA=1     build the CPU kernels only
  TORCH_CUDA_ARCH_LIST     CUDA architectures (default: 8.0;8.6;8.9;9.0;10.0;12.0+PTX)
  CBAM_FUSED_PTXAS_VERBOSE=1  pass -Xptxas -v to nvcc (resource usage in the build log)
  MAX_JOBS                 parallel compile jobs (ninja)

The build step also writes ``cbam_fused/_build_info.json`` next to the extensions: the torch they
were built against, which ``import cbam_fused`` checks (see cbam_fused/_build.py).
"""
import glob
import json
import os
import shutil
import subprocess
import sys

from setuptools import setup

DEFAULT_CUDA_ARCHS = "8.0;8.6;8.9;9.0;10.0;12.0+PTX"
TORCH_REQUIREMENT = "torch>=2.11"  # as in pyproject.toml; checked below against the torch we build with
TORCH_MIN = (2, 11)
ROOT = os.path.dirname(os.path.abspath(__file__))


def _toolkit_root():
    """The CUDA toolkit root, or None. ``nvcc`` may be a wrapper script, so ask it for its TOP."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        out = subprocess.run([nvcc, "-dryrun", "-c", "-x", "cu", "/dev/null", "-o", "/dev/null"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    for line in (out.stdout + out.stderr).splitlines():
        if "TOP=" in line:
            return os.path.realpath(line.split("TOP=", 1)[1].strip())
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def _want_cuda():
    """(toolkit root, None) or (None, why the CUDA kernels are not built)."""
    if os.environ.get("CBAM_FUSED_NO_CUDA", "0") == "1":
        return None, "CBAM_FUSED_NO_CUDA=1"
    root = _toolkit_root()
    if root is None:
        return None, "no CUDA toolkit (nvcc) was found"
    os.environ["CUDA_HOME"] = root  # before torch.utils.cpp_extension reads it
    return root, None


CUDA_ROOT, CUDA_SKIPPED = _want_cuda()

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

if tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) < TORCH_MIN:
    sys.exit(f"cbam_fused needs {TORCH_REQUIREMENT}, but this build runs with torch {torch.__version__}")

if CUDA_ROOT is not None and torch.version.cuda is None:
    CUDA_SKIPPED = "this torch is CPU-only"
    print("cbam_fused: a CUDA toolkit was found but this torch is CPU-only; building the CPU kernels only",
          file=sys.stderr)
    CUDA_ROOT = None

CXX_FLAGS = ["-O3", "-fopenmp", "-Wall", "-Wno-unknown-pragmas"]


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


ext_modules = [
    CppExtension(
        "cbam_fused._C",
        _sources("csrc/ops.cpp") + _sources("csrc/attention*.cpp") + _sources("csrc/cpu/*.cpp"),
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=[("CBAM_FUSED_PYTHON_MODULE", "_C")],
        extra_compile_args={"cxx": CXX_FLAGS},
        extra_link_args=["-fopenmp"],
    )
]

if CUDA_ROOT is not None:
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
    nvcc_flags = ["-O3", "-lineinfo"]
    if os.environ.get("CBAM_FUSED_PTXAS_VERBOSE") == "1":
        nvcc_flags.append("-Xptxas=-v")
    # the orchestration is compiled into each library that registers a device kernel for the op pair
    cuda_sources = (_sources("csrc/cuda/*.cu") + _sources("csrc/cuda/*.cpp") + _sources("csrc/attention.cpp")
                    + _sources("csrc/attention_checks.cpp"))
    if cuda_sources:
        ext_modules.append(
            CUDAExtension(
                "cbam_fused._cuda",
                cuda_sources,
                include_dirs=[os.path.join(ROOT, "csrc")],
                define_macros=[("CBAM_FUSED_PYTHON_MODULE", "_cuda")],
                extra_compile_args={"cxx": CXX_FLAGS, "nvcc": nvcc_flags},
            )
        )


class BuildWithRecord(BuildExtension):
    """Builds the extensions, writes the build record beside them, and removes a ``_cuda`` module left
    by an earlier build when this one does not build it (it would belong to another torch)."""

    def run(self):
        super().run()
        built = [ext.name.rsplit(".", 1)[1] for ext in self.extensions]
        target = os.path.dirname(self.get_ext_fullpath("cbam_fused._C"))  # in place or build/lib
        if "_cuda" not in built:
            for stale in glob.glob(os.path.join(target, "_cuda.*.so")):
                print(f"cbam_fused: removing {stale}, left by an earlier build", file=sys.stderr)
                os.remove(stale)
        info = {
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "extensions": built,
            "cuda_skipped": None if "_cuda" in built else CUDA_SKIPPED,
            "cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST") if "_cuda" in built else None,
        }
        os.makedirs(target, exist_ok=True)
        with open(os.path.join(target, "_build_info.json"), "w") as f:
            json.dump(info, f, indent=1)
            f.write("\n")


setup(ext_modules=ext_modules, cmdclass={"build_ext": BuildWithRecord})
