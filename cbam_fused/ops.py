"""The public fused op, ``attention``: checks its inputs, picks the backend and calls the op pair.

The op pair itself (schemas in C++, fakes, the Python twins and their orchestration) lives in
``cbam_fused.attention_op``; the backend choice in ``cbam_fused.backends``; the stock-op path in
``cbam_fused.eager``.
"""
from typing import Optional

import torch
from torch import Tensor

from . import small_steps as ss
from .attention_op import dense, memory_format
from .backends import (BACKENDS, NoFusedBackendWarning, available_backends, is_native, resolve_backend,
                       under_functorch, unavailable_reason)
from .attention_op import forward_op
from .eager import eager_attention
from .passes import acc_dtype

__all__ = ["attention", "run", "check_inputs", "NoFusedBackendWarning", "available_backends", "resolve_backend",
           "unavailable_reason", "BACKENDS", "TIES", "dense", "memory_format"]

TIES = ("index", "split")

_CHECK_INPUTS = torch.ops.cbam_fused.check_inputs.default


def check_inputs(*args) -> None:
    """TypeError or ValueError naming a bad argument; ``args`` are the forward op's, in its order
    (``cbam_fused.attention_op.FORWARD_ARGS``). The checks are the compiled ops' own
    (csrc/attention_checks.cpp), so every backend rejects the same input with the same message.
    Not while torch.compile traces (sizes may be symbolic there; the compiled ops check at run time)."""
    if not isinstance(args[0], Tensor):
        raise TypeError(f"x must be a Tensor, got {type(args[0]).__name__}")
    if not torch.compiler.is_compiling():
        _CHECK_INPUTS(*args)


def run(x, w1, b1, w2, b2, conv_w, conv_b, bn_w, bn_b, bn_mean, bn_var,
        channel_kind, channel_pools, channel_gate, spatial_order, spatial_gate, bn, bn_eps, ties, backend):
    """``attention`` with the forward op's arguments, in its order and with its names (``bn`` is "none",
    "train" or "eval"; tests/test_api.py checks the list), for callers that hold them so: the modules.
    Returns ``(y, bn_batch_stats)``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
    if torch.is_autocast_enabled(x.device.type) and x.is_floating_point():
        w1, b1, w2, b2, conv_w, conv_b, bn_w, bn_b, bn_mean, bn_var = (
            t.to(x.dtype) if isinstance(t, Tensor) and t.is_floating_point() else t
            for t in (w1, b1, w2, b2, conv_w, conv_b, bn_w, bn_b, bn_mean, bn_var))
    name = resolve_backend(backend, x)
    args = (x, w1, b1, w2, b2, conv_w, conv_b, bn_w, bn_b, bn_mean, bn_var,
            channel_kind, channel_pools, channel_gate, spatial_order, spatial_gate, bn, float(bn_eps), ties, name)
    if name == "torch" or x.numel() == 0:
        check_inputs(*args)
        acc = acc_dtype(x.dtype)
        cw = None if w1 is None else ss.ChannelWeights.of(channel_kind, w1, b1, w2, b2, acc)
        sw = None if conv_w is None else ss.SpatialWeights.of(
            conv_w, conv_b, spatial_order, bn, bn_w, bn_b, bn_mean, bn_var, bn_eps, acc)
        return eager_attention(x, cw, channel_pools, channel_gate, sw, spatial_gate, ties)
    if ties in TIES and not _grad_follows(x, w1, b1, w2, b2, conv_w, conv_b, bn_w, bn_b):  # else the op rejects it
        args = (*args[:-2], "none", name)  # inference: the pools track no argmax or count
    if not is_native(name):
        check_inputs(*args)  # the compiled ops check inside, the Python twins here
    out = forward_op(name)(*args)
    return out[0], (out[-1] if bn == "train" else None)


def _grad_follows(*tensors) -> bool:
    """Whether autograd records the op: grad mode on and some input requiring a gradient. Under
    torch.compile this is read at trace time, so the graph holds the matching ``ties``. Under a
    torch.func transform it is assumed (the wrappers hide requires_grad)."""
    if not torch.is_grad_enabled():
        return False
    if not torch.compiler.is_compiling() and under_functorch():
        return True
    return any(isinstance(t, Tensor) and t.requires_grad for t in tensors)


def attention(
    x: Tensor,
    *,
    w1: Optional[Tensor] = None,
    b1: Optional[Tensor] = None,
    w2: Optional[Tensor] = None,
    b2: Optional[Tensor] = None,
    channel_kind: str = "mlp",
    channel_pools: str = "avg+max",
    channel_gate: str = "sigmoid",
    conv_weight: Optional[Tensor] = None,
    conv_bias: Optional[Tensor] = None,
    spatial_order: str = "mean_max",
    spatial_gate: str = "sigmoid",
    bn_weight: Optional[Tensor] = None,
    bn_bias: Optional[Tensor] = None,
    bn_running_mean: Optional[Tensor] = None,
    bn_running_var: Optional[Tensor] = None,
    bn_training: Optional[bool] = None,
    bn_eps: float = 1e-5,
    ties: str = "index",
    backend: Optional[str] = None,
) -> tuple[Tensor, Optional[Tensor]]:
    """Fused channel gate (if ``w1``) followed by spatial gate (if ``conv_weight``).

    ``bn_training`` is None for no BatchNorm after the spatial conv; True uses batch statistics,
    False the running ones. Returns ``(y, bn_batch_stats)``: the stats are ``[mean, biased var]`` of
    the conv output in BN training mode (the caller updates running buffers), else None.

    Under autocast on x's device, the floating-point weights are cast to x's dtype (as the modules
    always do): the op computes in x's dtype with fp32 accumulation and returns x's dtype.
    """
    bn = "none" if bn_training is None else ("train" if bn_training else "eval")
    return run(x, w1, b1, w2, b2, conv_weight, conv_bias, bn_weight, bn_bias, bn_running_mean, bn_running_var,
               channel_kind, channel_pools, channel_gate, spatial_order, spatial_gate, bn, bn_eps, ties, backend)
