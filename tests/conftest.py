"""Shared fixtures: the backends every correctness test runs on, and the reference oracle.

Backends: "cpu" (C++ kernels), "triton" (under TRITON_INTERPRET=1 without a GPU), "cudaemu" (the CUDA
kernels run on the CPU by the emulator in third_party/cudacpu, see tests/cudaemu.py), "cuda" (a real GPU) and
"spec" (the pure-torch pass spec, which tests the orchestration on its own).

Under CI=true a backend that should run here but cannot (no emulator, no interpreter) fails instead
of skipping: a silently skipped suite looks green.
"""
import os

import torch

if not torch.cuda.is_available():  # must precede any triton import
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from cbam_fused import backends, ops  # noqa: E402
from cbam_fused.passes import TorchPasses  # noqa: E402

IN_CI = os.environ.get("CI") == "true"

backends.register_passes("spec", TorchPasses())


def _missing(reason: str):
    if IN_CI:
        pytest.fail(f"CI=true and this backend cannot run: {reason}")
    pytest.skip(reason)


def _emulator_reason():
    try:
        from tests import cudaemu
    except ImportError as e:
        return f"tests/cudaemu.py is not importable: {e}"
    return cudaemu.unavailable_reason()


def require_backend(name: str) -> None:
    """Skip (or fail under CI) unless ``name`` can run in this process."""
    if name == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA device")
        if "cuda" not in ops.available_backends():
            _missing(f"the CUDA extension is not built: {backends.unavailable_reason('cuda')}")
    elif name == "cpu":
        if "cpu" not in ops.available_backends():
            _missing(f"the C++ extension is not built: {backends.unavailable_reason('cpu')}")
    elif name == "triton":
        if "triton" not in ops.available_backends():
            _missing("the Triton backend is not available (triton missing or kernels not importable)")
    elif name == "cudaemu":
        reason = _emulator_reason()
        if reason:
            _missing(reason)
        from tests import cudaemu

        cudaemu.register()


# Every backend a GPU-less CI can run, plus "cuda" for users with GPUs.
BACKEND_PARAMS = [
    pytest.param("cpu", id="cpu"),
    pytest.param("spec", id="spec"),
    pytest.param("triton", id="triton", marks=pytest.mark.triton),
    pytest.param("cudaemu", id="cudaemu", marks=pytest.mark.emulator),
    pytest.param("cuda", id="cuda", marks=pytest.mark.gpu),
]


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request):
    require_backend(request.param)
    return request.param


def device_of(backend: str) -> str:
    # Triton runs on CUDA tensors when there is a GPU (the interpreter is only set without one)
    if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
