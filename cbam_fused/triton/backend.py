"""``TritonPasses``: the pass contract of cbam_fused.passes on Triton kernels."""
import contextlib
import functools
import threading

import torch
from torch import Tensor

from ..passes import acc_dtype
from . import channel, gates, spatial

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_MAX_BATCH = 65535  # the batch is the third grid dimension

# One pass launches at a time per process. Triton's Autotuner keeps each call's arguments on the
# shared kernel object (triton-lang/triton#11494), and the interpreter (TRITON_INTERPRET=1) patches
# triton.language and keeps the grid in globals, so launches from concurrent Python threads crash
# or run the wrong programs. On a GPU the lock only covers the (asynchronous) launches.
_LAUNCH_LOCK = threading.RLock()


def _serialized(method):
    """One launch at a time, on the device of the pass's first tensor argument."""
    @functools.wraps(method)
    def run(self, first, *args, **kwargs):
        with _LAUNCH_LOCK, launch_device(first):
            return method(self, first, *args, **kwargs)
    return run


def launch_device(t):
    """A guard that makes t's GPU the current device: Triton launches on the current device, so a
    tensor on another GPU would otherwise be read by a kernel on the wrong one."""
    if isinstance(t, Tensor) and t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def _check_big(name: str, t: Tensor) -> None:
    if not isinstance(t, Tensor) or t.dim() != 4:
        raise ValueError(f"{name} must be a 4-D [N, C, H, W] tensor, got {getattr(t, 'shape', type(t))}")
    if t.dtype not in _DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}); the Triton passes need N, C, H, W >= 1")
    if t.shape[0] > _MAX_BATCH:
        raise ValueError(f"{name} has batch size {t.shape[0]}; the Triton passes launch one grid row per sample "
                         f"and CUDA allows at most {_MAX_BATCH}: split the batch")


def _small(x: Tensor, **named):
    """Per-channel/per-pixel tensors, checked for x's device, the contract's dtype and size, made contiguous."""
    n, c, h, w = x.shape
    sizes = {"channel": n * c, "pixel": n * h * w}
    acc = acc_dtype(x.dtype)
    out = []
    for name, (t, kind, dtype) in named.items():
        if t is not None:
            want = acc if dtype is None else dtype
            if not isinstance(t, Tensor) or t.device != x.device or t.dtype != want or t.numel() != sizes[kind]:
                raise ValueError(f"{name} must be a {want} tensor of {sizes[kind]} elements "
                                 f"([N, {'C' if kind == 'channel' else 'H*W'}]) on {x.device}, got "
                                 f"{getattr(t, 'dtype', type(t))} {tuple(getattr(t, 'shape', ()))} "
                                 f"on {getattr(t, 'device', None)}")
            t = t.contiguous()
        out.append(t)
    return out


class TritonPasses:
    """The six passes as Triton kernels; CUDA tensors, or CPU tensors under TRITON_INTERPRET=1."""

    name = "triton"

    # ties=False (cbam_fused/passes.py): argmax and count are neither tracked nor written, and come back as None;
    # mean and max are bitwise those of ties=True
    @_serialized
    def pool_hw(self, x, ties=True):
        _check_big("x", x)
        return channel.pool_hw(x, acc_dtype(x.dtype), bool(ties))

    @_serialized
    def pool_c(self, x, a, ties=True):
        _check_big("x", x)
        (a,) = _small(x, a=(a, "channel", None))
        return spatial.pool_c(x, a, acc_dtype(x.dtype), bool(ties))

    @_serialized
    def apply_gates(self, x, a, s):
        _check_big("x", x)
        a, s = _small(x, a=(a, "channel", None), s=(s, "pixel", None))
        return gates.apply_gates(x, a, s, acc_dtype(x.dtype))

    @_serialized
    def gate_grads(self, gy, x, a, s, want_a, want_s):
        _check_big("x", x)
        _check_big("gy", gy)
        if gy.shape != x.shape or gy.dtype != x.dtype or gy.device != x.device:
            raise ValueError(f"gy ({gy.dtype} {tuple(gy.shape)}) must match x ({x.dtype} {tuple(x.shape)})")
        a, s = _small(x, a=(a, "channel", None), s=(s, "pixel", None))
        return spatial.gate_grads(gy, x, a, s, want_a, want_s, acc_dtype(x.dtype))

    @_serialized
    def pool_c_grad_a(self, x, a, u, v, argmax, mx, split):
        _check_big("x", x)
        a, u, v, argmax, mx = _small(x, a=(a, "channel", None), u=(u, "pixel", None), v=(v, "pixel", None),
                                     argmax=(argmax, "pixel", torch.int32), mx=(mx, "pixel", None))
        return channel.pool_c_grad_a(x, a, u, v, argmax, mx, split, acc_dtype(x.dtype))

    @_serialized
    def input_grad(self, gy, x, a, s, u_c, v_c, argmax_c, max_c, u_hw, v_hw, argmax_hw, max_hw, split):
        _check_big("gy", gy)
        if split:
            if x is None:
                raise ValueError("input_grad with split-style ties needs x")
            _check_big("x", x)
            if x.shape != gy.shape or x.dtype != gy.dtype or x.device != gy.device:
                raise ValueError(f"x ({x.dtype} {tuple(x.shape)}) must match gy ({gy.dtype} {tuple(gy.shape)})")
        if (u_c is None) != (v_c is None) or (u_hw is None) != (v_hw is None):
            raise ValueError("u_c/v_c and u_hw/v_hw come in pairs")
        need_c = u_c is not None
        need_hw = u_hw is not None
        if need_c and (max_c if split else argmax_c) is None:
            raise ValueError("the pool over channels needs " + ("max_c" if split else "argmax_c"))
        if need_hw and (max_hw if split else argmax_hw) is None:
            raise ValueError("the pool over pixels needs " + ("max_hw" if split else "argmax_hw"))
        a, s, u_c, v_c, argmax_c, max_c, u_hw, v_hw, argmax_hw, max_hw = _small(
            gy, a=(a, "channel", None), s=(s, "pixel", None), u_c=(u_c, "pixel", None), v_c=(v_c, "pixel", None),
            argmax_c=(argmax_c, "pixel", torch.int32), max_c=(max_c, "pixel", None), u_hw=(u_hw, "channel", None),
            v_hw=(v_hw, "channel", None), argmax_hw=(argmax_hw, "channel", torch.int32),
            max_hw=(max_hw, "channel", None))
        return gates.input_grad(gy, x, a, s, u_c, v_c, argmax_c, max_c, u_hw, v_hw, argmax_hw, max_hw, split,
                                acc_dtype(gy.dtype))
