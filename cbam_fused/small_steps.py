"""The small steps between the full-size passes, forward and backward, on pooled tensors.

Everything here works on tensors of size O(N*(C + H*W)) in the accumulation dtype (fp32, or fp64
for fp64 inputs), with stock torch ops, so every backend shares it and ``torch.compile`` can trace it.
Backward formulas are written out (docs/design.md §2) rather than taken from autograd, because they run
inside the fused backward op where autograd is not recording.

* gates: value and derivative, the derivative taken from the logits;
* channel logits ``m[N, C]`` from the pooled ``avg``/``max`` vectors: the shared two-layer MLP, a single
  linear layer, or ECA's 1-D convolution across channels, over the pools the flavor uses;
* spatial logits ``l[N, P]`` from the channel-pooled maps: a KxK convolution, optionally followed by
  BatchNorm (batch statistics in training, running statistics in eval).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

GATES = ("sigmoid", "hard_sigmoid", "keras_hard_sigmoid")
CHANNEL_KINDS = ("mlp", "linear", "conv1d")
CHANNEL_POOLS = ("avg+max", "avg", "max", "light")
SPATIAL_ORDERS = ("mean_max", "max_mean")
BN_MODES = ("none", "train", "eval")


# ----------------------------------------------------------------------------------------- gates
def gate_forward(name: str, z: Tensor) -> Tensor:
    if name == "sigmoid":
        return torch.sigmoid(z)
    if name == "hard_sigmoid":  # PyTorch: relu6(z + 3) / 6
        return (z + 3.0).clamp(0.0, 6.0) / 6.0
    if name == "keras_hard_sigmoid":  # Keras 2: clip(0.2 z + 0.5, 0, 1)
        return (0.2 * z + 0.5).clamp(0.0, 1.0)
    raise ValueError(f"unknown gate {name!r}; expected one of {GATES}")


def gate_backward(name: str, z: Tensor, g: Tensor) -> Tensor:
    """``g * G'(z)``; the derivative is taken from the logits (open intervals for the hard gates)."""
    if name == "sigmoid":
        s = torch.sigmoid(z)
        return g * s * (1.0 - s)
    if name == "hard_sigmoid":
        return torch.where((z > -3.0) & (z < 3.0), g / 6.0, torch.zeros_like(g))
    if name == "keras_hard_sigmoid":
        return torch.where((z > -2.5) & (z < 2.5), g * 0.2, torch.zeros_like(g))
    raise ValueError(f"unknown gate {name!r}; expected one of {GATES}")


def _cast(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if t is None else t.to(dtype)


# ------------------------------------------------------------------------------- channel logits
@dataclass
class ChannelWeights:
    """Weights of the channel mapping, cast to the accumulation dtype.

    ``mlp``: w1 [Cr, C], b1 [Cr]?, w2 [C, Cr], b2 [C]?;  ``linear``: w1 [C, C], b1 [C]?;
    ``conv1d`` (ECA): w1 [1, 1, k], b1 [1]?.
    """

    kind: str
    w1: Tensor
    b1: Tensor | None
    w2: Tensor | None
    b2: Tensor | None

    @classmethod
    def of(cls, kind, w1, b1, w2, b2, dtype) -> "ChannelWeights":
        if kind != "conv1d":  # 1x1 conv weights [rows, cols, 1, 1] are the matrices [rows, cols]
            w1, w2 = _matrix(w1), _matrix(w2)
        return cls(kind, w1.to(dtype), _cast(b1, dtype), _cast(w2, dtype), _cast(b2, dtype))


def _matrix(w):
    return w.flatten(1) if w is not None and w.dim() == 4 else w


def _channel_inputs(pools: str, avg: Tensor, mx: Tensor) -> list[Tensor]:
    if pools == "avg+max":
        return [avg, mx]
    if pools == "avg":
        return [avg]
    if pools == "max":
        return [mx]
    if pools == "light":  # LightCBAM: one MLP pass on the mean of the two pools
        return [0.5 * avg + 0.5 * mx]
    raise ValueError(f"unknown channel pools {pools!r}; expected one of {CHANNEL_POOLS}")


def _conv1d_padding(w: Tensor) -> int:
    return (w.shape[-1] - 1) // 2


def _map_one(wt: ChannelWeights, v: Tensor) -> Tensor:
    if wt.kind == "mlp":
        return F.linear(F.relu(F.linear(v, wt.w1, wt.b1)), wt.w2, wt.b2)
    if wt.kind == "linear":
        return F.linear(v, wt.w1, wt.b1)
    if wt.kind == "conv1d":
        return F.conv1d(v[:, None, :], wt.w1, wt.b1, padding=_conv1d_padding(wt.w1))[:, 0, :]
    raise ValueError(f"unknown channel kind {wt.kind!r}; expected one of {CHANNEL_KINDS}")


def channel_logits(wt: ChannelWeights, pools: str, avg: Tensor, mx: Tensor) -> Tensor:
    """``m = sum over the used pools v of map(v)``; the pools go through the map as one batch."""
    inputs = _channel_inputs(pools, avg, mx)
    return _map_one(wt, torch.cat(inputs)).unflatten(0, (len(inputs), -1)).sum(0)


def channel_logits_backward(wt: ChannelWeights, pools: str, avg: Tensor, mx: Tensor, gm: Tensor):
    """Returns ``(g_avg, g_max, gw1, gb1, gw2, gb2)``; a gradient is None where it has no input.

    The pools are stacked into one batch (and gm repeated for each), so each layer's gradient is a
    single matrix product whatever the number of pools.
    """
    inputs = _channel_inputs(pools, avg, mx)
    v = torch.cat(inputs)
    g = gm.repeat(len(inputs), 1)
    gw2 = gb2 = None
    if wt.kind == "mlp":
        h = F.linear(v, wt.w1, wt.b1)
        gw2 = g.t() @ F.relu(h)
        gb2 = g.sum(0) if wt.b2 is not None else None  # b2 enters m once per pool
        g = torch.where(h > 0, g @ wt.w2, torch.zeros_like(h))
    if wt.kind in ("mlp", "linear"):
        gw1 = g.t() @ v
        gb1 = g.sum(0) if wt.b1 is not None else None
        gv = g @ wt.w1
    elif wt.kind == "conv1d":
        gin, gw1, gb1 = torch.ops.aten.convolution_backward(
            g[:, None, :], v[:, None, :], wt.w1, [1] if wt.b1 is not None else None,
            [1], [_conv1d_padding(wt.w1)], [1], False, [0], 1, [True, True, wt.b1 is not None],
        )
        gv = gin[:, 0, :]
        gb1 = gb1 if wt.b1 is not None else None
    else:
        raise ValueError(f"unknown channel kind {wt.kind!r}; expected one of {CHANNEL_KINDS}")
    gvs = gv.unflatten(0, (len(inputs), -1))
    if pools == "avg+max":
        g_avg, g_mx = gvs[0], gvs[1]
    elif pools == "avg":
        g_avg, g_mx = gvs[0], None
    elif pools == "max":
        g_avg, g_mx = None, gvs[0]
    else:  # light
        g_avg = g_mx = 0.5 * gvs[0]
    return g_avg, g_mx, gw1, gb1, gw2, gb2


# ------------------------------------------------------------------------------- spatial logits
@dataclass
class SpatialWeights:
    """KxK conv over the two pooled maps, then an optional BatchNorm2d(1); all in the acc dtype."""

    conv_w: Tensor  # [1, 2, K, K]
    conv_b: Tensor | None  # [1]
    order: str  # order of the pooled maps into the conv
    bn: str  # "none", "train" (batch statistics) or "eval" (running statistics)
    bn_w: Tensor | None
    bn_b: Tensor | None
    bn_mean: Tensor | None
    bn_var: Tensor | None
    bn_eps: float

    @classmethod
    def of(cls, conv_w, conv_b, order, bn, bn_w, bn_b, bn_mean, bn_var, bn_eps, dtype) -> "SpatialWeights":
        if order not in SPATIAL_ORDERS:
            raise ValueError(f"unknown spatial order {order!r}; expected one of {SPATIAL_ORDERS}")
        if bn not in BN_MODES:
            raise ValueError(f"unknown BatchNorm mode {bn!r}; expected one of {BN_MODES}")
        return cls(conv_w.to(dtype), _cast(conv_b, dtype), order, bn, _cast(bn_w, dtype), _cast(bn_b, dtype),
                   _cast(bn_mean, dtype), _cast(bn_var, dtype), bn_eps)


def _stack(wt: SpatialWeights, q_mean: Tensor, q_max: Tensor, shape) -> Tensor:
    n, h, w = shape
    pair = (q_mean, q_max) if wt.order == "mean_max" else (q_max, q_mean)
    return torch.stack(pair, dim=1).reshape(n, 2, h, w)


def _conv(wt: SpatialWeights, q: Tensor) -> Tensor:
    return F.conv2d(q, wt.conv_w, wt.conv_b, padding=wt.conv_w.shape[-1] // 2)


def _bn_stats(wt: SpatialWeights, c: Tensor, batch_stats: Tensor | None) -> tuple[Tensor, Tensor]:
    """(mean, var) used to normalise ``c``: batch statistics in train mode, running ones in eval."""
    if wt.bn == "train":
        return batch_stats[0], batch_stats[1]
    return wt.bn_mean.reshape(()), wt.bn_var.reshape(())


def _affine(t: Tensor | None, default: float, like: Tensor) -> Tensor:
    return t.reshape(()) if t is not None else like.new_tensor(default)


def spatial_logits(wt: SpatialWeights, q_mean: Tensor, q_max: Tensor, shape) -> tuple[Tensor, Tensor]:
    """``(l [N, P], bn_batch_stats)``; the stats are ``[mean, biased var]`` in train mode, else empty."""
    c = _conv(wt, _stack(wt, q_mean, q_max, shape))
    stats = c.new_empty(0)
    if wt.bn != "none":
        if wt.bn == "train":
            stats = torch.stack([c.mean(), c.var(correction=0)])
        mean, var = _bn_stats(wt, c, stats)
        c = (c - mean) * torch.rsqrt(var + wt.bn_eps) * _affine(wt.bn_w, 1.0, c) + _affine(wt.bn_b, 0.0, c)
    return c.flatten(1), stats  # flatten, not reshape(n, -1): N may be 0


# Terms one convolution output may accumulate in the weight gradient before its partial is folded
# in float64: one fp32 sum over all N*H*W pixels lost 3% (measured, same-sign data, 4097x4097 image).
_WEIGHT_GRAD_TERMS = 1 << 16


def conv_weight_grad(q: Tensor, gc: Tensor, k: int) -> Tensor:
    """Gradient of the KxK conv's weight, ``[1, 2, K, K]``, as convolutions of q with gc.

    The pixels are cut into bands of rows so that each convolution sums at most ``_WEIGHT_GRAD_TERMS``
    products; the bands' partials are added in float64. Each band reads its K // 2 halo rows from q
    and leaves the image border to the convolution's own zero padding (explicit zeros would turn an
    infinite gradient into NaN where the reference has none).
    """
    n, _, h, w = q.shape
    pad = k // 2
    qt, g = q.transpose(0, 1), gc.transpose(0, 1)  # [2, N, H, W] and the "kernel" [1, N, H, W]
    band = max(1, _WEIGHT_GRAD_TERMS // (n * w))
    parts = []
    for r in range(0, h, band):
        rows = min(band, h - r)
        lo, hi = max(0, r - pad), min(h, r + rows + pad)
        out = F.conv2d(qt[:, :, lo:hi], g[:, :, r:r + rows], padding=pad)  # rows beyond the halo: dropped
        parts.append(out[:, :, r - lo:r - lo + k])
    gw = parts[0] if len(parts) == 1 else torch.stack(parts).to(torch.float64).sum(0).to(q.dtype)
    # A convolution with zero padding multiplies every tap by every gradient entry (0 on the padding),
    # so a NaN or Inf anywhere in gc reaches every tap; the convolutions above skip the padding.
    return gw.transpose(0, 1) + gc.sum() * 0


def spatial_logits_backward(wt: SpatialWeights, q_mean, q_max, shape, bn_stats, gl: Tensor):
    """Returns ``(g_mean, g_max, gconv_w, gconv_b, gbn_w, gbn_b)``; None where there is no input."""
    n, h, w = shape
    q = _stack(wt, q_mean, q_max, shape)
    gc = gl.reshape(n, 1, h, w)
    gbn_w = gbn_b = None
    if wt.bn != "none":
        c = _conv(wt, q)
        mean, var = _bn_stats(wt, c, bn_stats)
        invstd = torch.rsqrt(var + wt.bn_eps)
        xhat = (c - mean) * invstd
        gamma = _affine(wt.bn_w, 1.0, c)
        if wt.bn_w is not None:
            gbn_w = (gc * xhat).sum().reshape(1)
        if wt.bn_b is not None:
            gbn_b = gc.sum().reshape(1)
        if wt.bn == "train":  # batch statistics depend on c as well
            gc = gamma * invstd * (gc - gc.mean() - xhat * (gc * xhat).mean())
        else:
            gc = gc * gamma * invstd
    # The conv has one output and two input channels; ATen's generic convolution_backward is slow
    # for that shape on the CPU (measured 4-8x slower), so both gradients are written as convolutions.
    k = wt.conv_w.shape[-1]
    gq = F.conv2d(gc, wt.conv_w.flip(-1, -2).transpose(0, 1), padding=k // 2)  # [N, 2, H, W]
    gw = conv_weight_grad(q, gc, k)
    gb = gc.sum().reshape(1) if wt.conv_b is not None else None
    g0, g1 = gq[:, 0].reshape(n, -1), gq[:, 1].reshape(n, -1)
    g_mean, g_max = (g0, g1) if wt.order == "mean_max" else (g1, g0)
    return g_mean, g_max, gw, gb, gbn_w, gbn_b
