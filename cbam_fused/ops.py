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
from .backends import BACKENDS, NoFusedBackendWarning, available_backends, resolve_backend, unavailable_reason
from .attention_op import forward_op
from .eager import eager_attention
from .passes import acc_dtype

__all__ = ["attention", "NoFusedBackendWarning", "available_backends", "resolve_backend", "unavailable_reason", "BACKENDS", "TIES",
           "validate", "check_config", "dense", "memory_format"]

TIES = ("index", "split")


def check_config(channel_kind, channel_pools, channel_gate, spatial_gate, ties):
    """ValueError naming an unknown option value."""
    for value, allowed, what in (
        (channel_kind, ss.CHANNEL_KINDS, "channel_kind"),
        (channel_pools, ss.CHANNEL_POOLS, "channel_pools"),
        (channel_gate, ss.GATES, "channel gate"),
        (spatial_gate, ss.GATES, "spatial gate"),
        (ties, TIES, "ties"),
    ):
        if value not in allowed:
            raise ValueError(f"unknown {what} {value!r}; expected one of {allowed}")


def _check_tensor(name, t, x, shape=None):
    if t is None:
        return
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a Tensor or None, got {type(t).__name__}")
    if t.dtype != x.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but x has dtype {x.dtype}; cast the weights to x's dtype")
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def validate(x, w1, b1, w2, b2, channel_kind, conv_w, conv_b, bn_w, bn_b, bn_mean, bn_var, bn_training):
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D [N, C, H, W], got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"x must be float16, bfloat16, float32 or float64, got {x.dtype}")
    n, c, h, w = x.shape
    if c == 0 or h == 0 or w == 0:  # N = 0 is fine: an empty batch, as in the reference
        raise ValueError(f"x has an empty C, H or W dimension (shape {tuple(x.shape)}); "
                         "the max pools over channels and pixels are undefined")
    if w1 is not None:
        _check_tensor("w1", w1, x)
        if channel_kind == "mlp":
            if w1.dim() != 2 or w1.shape[1] != c:
                raise ValueError(f"w1 must have shape [hidden, C={c}], got {tuple(w1.shape)}")
            hidden = w1.shape[0]
            if w2 is None:
                raise ValueError("channel_kind='mlp' needs w2")
            _check_tensor("w2", w2, x, (c, hidden))
            _check_tensor("b1", b1, x, (hidden,))
            _check_tensor("b2", b2, x, (c,))
        elif channel_kind == "linear":
            _check_tensor("w1", w1, x, (c, c))
            _check_tensor("b1", b1, x, (c,))
        elif channel_kind == "conv1d":
            if w1.dim() != 3 or w1.shape[:2] != (1, 1) or w1.shape[2] % 2 != 1:
                raise ValueError(f"conv1d channel weight must be [1, 1, k] with k odd, got {tuple(w1.shape)}")
            _check_tensor("b1", b1, x, (1,))
        if channel_kind != "mlp" and (w2 is not None or b2 is not None):
            raise ValueError(f"channel_kind={channel_kind!r} takes no w2/b2")
    elif any(t is not None for t in (b1, w2, b2)):
        raise ValueError("b1, w2 and b2 need w1")
    if conv_w is not None:
        _check_tensor("conv_weight", conv_w, x)
        if conv_w.dim() != 4 or conv_w.shape[:2] != (1, 2) or conv_w.shape[2] != conv_w.shape[3]:
            raise ValueError(f"conv_weight must have shape [1, 2, K, K], got {tuple(conv_w.shape)}")
        if conv_w.shape[2] % 2 != 1:
            raise ValueError(f"the spatial kernel size K must be odd, got {conv_w.shape[2]}")
        _check_tensor("conv_bias", conv_b, x, (1,))
        for name, t in (("bn_weight", bn_w), ("bn_bias", bn_b), ("bn_running_mean", bn_mean),
                        ("bn_running_var", bn_var)):
            _check_tensor(name, t, x, (1,))
        if not bn_training and (bn_mean is None) != (bn_var is None):
            raise ValueError("bn_running_mean and bn_running_var go together")
    elif any(t is not None for t in (conv_b, bn_w, bn_b, bn_mean, bn_var)):
        raise ValueError("conv_bias and the BatchNorm tensors need conv_weight")
    if w1 is None and conv_w is None:
        raise ValueError("neither a channel gate (w1) nor a spatial gate (conv_weight) was given")


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
    if isinstance(x, Tensor) and x.is_floating_point() and torch.is_autocast_enabled(x.device.type):
        w1, b1, w2, b2, conv_weight, conv_bias, bn_weight, bn_bias, bn_running_mean, bn_running_var = (
            t.to(x.dtype) if isinstance(t, Tensor) and t.is_floating_point() else t
            for t in (w1, b1, w2, b2, conv_weight, conv_bias, bn_weight, bn_bias, bn_running_mean,
                      bn_running_var))
    validate(x, w1, b1, w2, b2, channel_kind, conv_weight, conv_bias, bn_weight, bn_bias,
              bn_running_mean, bn_running_var, bn_training)
    check_config(channel_kind, channel_pools, channel_gate, spatial_gate, ties)
    bn = "none" if bn_training is None else ("train" if bn_training else "eval")
    if bn == "eval" and bn_running_mean is None:
        raise ValueError("BatchNorm in eval mode needs bn_running_mean and bn_running_var")
    name = resolve_backend(backend, x)
    if name == "torch" or x.numel() == 0:
        acc = acc_dtype(x.dtype)
        cw = None if w1 is None else ss.ChannelWeights.of(channel_kind, w1, b1, w2, b2, acc)
        sw = None if conv_weight is None else ss.SpatialWeights.of(
            conv_weight, conv_bias, spatial_order, bn, bn_weight, bn_bias, bn_running_mean, bn_running_var,
            bn_eps, acc)
        return eager_attention(x, cw, channel_pools, channel_gate, sw, spatial_gate, ties)
    out = forward_op(name)(x, w1, b1, w2, b2, conv_weight, conv_bias, bn_weight, bn_bias, bn_running_mean,
                           bn_running_var, channel_kind, channel_pools, channel_gate, spatial_order, spatial_gate,
                           bn, float(bn_eps), ties, name)
    return out[0], (out[-1] if bn == "train" else None)
