"""Which backends exist in this process, and the one place that chooses a backend for a tensor.

* ``"cpu"`` and ``"cuda"``: the compiled op pair (``cbam_fused::attention_forward/backward``), whose
  C++ orchestration runs a device's kernel table (csrc/pass_args.h);
* ``"triton"``: the Triton passes under the Python orchestration (``cbam_fused.attention_op``);
* ``"torch"``: the same math with stock ops (``cbam_fused.eager``), also the export path.

Tests add more: kernel tables for CPU tensors registered with the C++ ops (the CUDA launchers built
for the CPU emulator) and Python pass sets (the pure-torch spec ``cbam_fused.passes.TorchPasses``).
"""
from __future__ import annotations

import os
import warnings
from typing import Optional

import torch
from torch import Tensor

from . import _build, _compat

__all__ = ["NoFusedBackendWarning", "BACKENDS", "available_backends", "unavailable_reason", "resolve_backend", "register_passes",
           "register_pass_table", "is_native", "python_passes", "passes_for", "has_backend"]

BACKENDS = ("cpu", "cuda", "triton", "torch")

try:  # the C++ op library: schemas, CPU kernels, autograd; always built
    from . import _C  # noqa: F401

    _CPP_ERROR = None
except ImportError as e:  # pragma: no cover - exercised only on broken installs
    _CPP_ERROR = e

try:  # CUDA kernels live in their own extension so that a CPU-only torch can import us
    from . import _cuda  # noqa: F401

    _CUDA_ERROR = None
except ImportError as e:
    _CUDA_ERROR = e

# Python pass sets run by the Python orchestration (tests: the spec passes).
_PYTHON_PASSES: dict = {}

# Kernel tables the compiled ops know by name (the CPU kernels and, when built, the CUDA ones).
_NATIVE = set()
if _CPP_ERROR is None:
    from .pass_ops import register_fakes

    register_fakes()
    _NATIVE.add("cpu")
    if _CUDA_ERROR is None:
        if torch._C._dispatch_has_kernel_for_dispatch_key("cbam_fused::attention_forward", "CUDA"):
            _NATIVE.add("cuda")
        else:  # a CUDA library with the pass ops only: the Python orchestration runs them
            from .pass_ops import CppPasses

            _PYTHON_PASSES["cuda"] = CppPasses("cuda")



def register_passes(name: str, passes) -> None:
    """Run backend ``name`` with a Python pass set (``cbam_fused.passes`` contract)."""
    _PYTHON_PASSES[name] = passes


def register_pass_table(name: str, address: int) -> None:
    """Run backend ``name`` on CPU tensors with the C++ kernel table at ``address`` (a ``PassTable``
    of csrc/pass_args.h that lives in this process, e.g. in a library loaded with ctypes)."""
    torch.ops.cbam_fused.register_pass_table(name, address)
    _NATIVE.add(name)


def is_native(name: str) -> bool:
    """Whether backend ``name`` runs through the compiled op pair."""
    return name in _NATIVE


def has_backend(name: str) -> bool:
    """Whether ``name`` is known here: a public backend or one a test registered."""
    return name in BACKENDS or name in _NATIVE or name in _PYTHON_PASSES


def python_passes(name: str):
    """The Python pass set of a resolved backend name ("triton" or a registered one)."""
    if name == "triton":
        from . import triton as tt

        return tt.TritonPasses()
    try:
        return _PYTHON_PASSES[name]
    except KeyError:
        raise RuntimeError(f"backend {name!r} has no Python pass set in this process") from None


def passes_for(name: str):
    """A pass set for orchestrations written in Python (the parallel arrangement): the pass ops of
    the compiled backends, the Triton passes, a registered set, or the spec for "torch"."""
    from .pass_ops import CppPasses
    from .passes import TorchPasses

    if name == "torch":
        return TorchPasses()
    if name in ("cpu", "cuda") and name in _NATIVE:
        return CppPasses(name)
    return python_passes(name)


def _triton_usable() -> bool:
    try:
        from . import triton as _t  # noqa: F401
    except ImportError:
        return False
    return _t.AVAILABLE and (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1")


def available_backends() -> list:
    """Backends that work in this process, best first for CUDA tensors then CPU tensors."""
    out = []
    if ("cuda" in _NATIVE or "cuda" in _PYTHON_PASSES) and torch.cuda.is_available():
        out.append("cuda")
    if _triton_usable():
        out.append("triton")
    if "cpu" in _NATIVE:
        out.append("cpu")
    out.append("torch")
    return out


def unavailable_reason(name: str) -> Optional[str]:
    """Why backend ``name`` cannot run in this process, or None when it can."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")
    if name in available_backends():
        return None
    if name == "cpu":
        return f"the C++ extension cbam_fused._C did not load ({_CPP_ERROR})"
    if name == "cuda":
        if _CUDA_ERROR is not None:
            skipped = (_build.record() or {}).get("cuda_skipped")
            if skipped:
                return f"the CUDA kernels were not built: {skipped}"
            return f"the CUDA extension cbam_fused._cuda did not load ({_CUDA_ERROR})"
        return "no CUDA device is available"
    if name == "triton":
        try:
            from . import triton as _t
        except ImportError as e:
            return f"the Triton kernels did not import ({e})"
        if not _t.AVAILABLE:
            return "triton is not installed"
        return "there is no CUDA device, and TRITON_INTERPRET=1 (the Triton interpreter) is not set"
    return "unknown reason"


class NoFusedBackendWarning(UserWarning):
    """Tensors on a device with no fused backend (MPS, XPU, ROCm, ...): the stock-op path runs."""


_NO_FUSED_WARNED = False


def _warn_no_fused_backend(x: Tensor) -> None:
    """Say once per process that x's device has no fused backend (not while compiling: dynamo
    would trace the warning and the global flag)."""
    global _NO_FUSED_WARNED
    if _NO_FUSED_WARNED or torch.compiler.is_compiling():
        return
    _NO_FUSED_WARNED = True
    where = "ROCm (HIP)" if x.device.type == "cuda" else repr(x.device.type)
    warnings.warn(f"cbam_fused has no fused kernels for {where} tensors: its modules and functions run the "
                  "same math with stock PyTorch ops (backend='torch'), without the fused speed-up or memory "
                  "saving. This warning is shown once per process.", NoFusedBackendWarning, stacklevel=4)


def under_functorch_autodiff() -> bool:
    """Inside torch.func.grad/vjp/jacrev/jvp/jacfwd/hessian, where the fused ops' autograd cannot run.
    vmap alone is fine."""
    stack = torch._C._functorch.get_interpreter_stack() or ()
    kinds = (torch._C._functorch.TransformType.Grad, torch._C._functorch.TransformType.Jvp)
    return any(level.key() in kinds for level in stack)


def under_functorch() -> bool:
    """Inside any torch.func transform (vmap included), whose wrapped tensors do not show whether
    the tensors they wrap require a gradient."""
    return bool(torch._C._functorch.get_interpreter_stack())


def resolve_backend(backend: Optional[str], x: Tensor) -> str:
    """Pick the backend for ``x``: the named one (checked), or the best for x's device.

    While exporting (``torch.export``, ``torch.onnx.export``) it is always "torch": the opaque custom
    ops do not export, the stock-op decomposition does. Under the torch.func transforms that
    differentiate, the default is "torch" too and a named fused backend raises. On a device with no
    fused backend (MPS, XPU, ROCm, ...) the default is "torch", with a warning once per process.
    """
    if _compat.is_exporting() or torch.onnx.is_in_onnx_export():
        return "torch"
    if not torch.compiler.is_compiling() and under_functorch_autodiff():
        if backend in (None, "auto", "torch"):
            return "torch"
        raise RuntimeError(
            f"backend {backend!r} cannot run under torch.func.grad, vjp, jacrev, jvp, jacfwd or hessian: the "
            "fused ops' autograd does not support function transforms that differentiate. Use "
            "backend='torch' (or None, which picks it there), or loop over the samples with ordinary autograd.")
    if backend in (None, "auto"):
        if x.device.type == "cuda" and torch.version.hip is None:
            for name in ("cuda", "triton"):
                if name in available_backends():
                    return name
            return "torch"
        if x.device.type == "cpu":
            return "cpu" if "cpu" in _NATIVE else "torch"
        _warn_no_fused_backend(x)  # MPS, XPU, ROCm (its devices are "cuda" to torch), ...
        return "torch"
    if backend == "torch":
        return backend
    if backend not in BACKENDS and (backend in _NATIVE or backend in _PYTHON_PASSES):  # test-only sets
        return backend
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS + ('auto',)}")
    if backend not in available_backends():
        raise RuntimeError(f"backend {backend!r} is not available: {unavailable_reason(backend)}")
    wanted = {"cpu": "cpu", "cuda": "cuda"}.get(backend)
    if wanted is not None and x.device.type != wanted:
        raise ValueError(f"backend {backend!r} needs {wanted} tensors, got a tensor on {x.device}")
    if backend == "triton" and x.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)")
    return backend
