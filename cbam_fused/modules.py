"""Drop-in fused modules with the reference's parameter names and shapes, and the flavors in the wild.

A checkpoint of ``cbam_fused.reference.CBAM`` loads into ``cbam_fused.CBAM`` (default options) with
``strict=True`` and back. Flavor options are keyword-only; they add parameters only where the flavor
has them (biases, a BatchNorm after the spatial conv). ``SE`` and ``ECA`` are the channel-only
relatives. The modules only gather their weights (cast to x's dtype, as ``F.linear`` does under
autocast) and call ``run_attention``, which ``cbam_fused.convert`` shares.

Arrangements (the paper's ablation):

* ``"channel_spatial"`` (default): one fused op, 4|x| forward and 5|x| backward (docs/design.md §3);
* ``"spatial_channel"``: the spatial-only op then the channel-only op on its output, each fused. The
  intermediate x1 = x*s is written and read back: 6|x| forward, 8|x| backward, and both x and x1 are
  saved (2|x|, as in eager);
* ``"parallel"``: ``y = x * G(m[c] + l[p])``, see ``cbam_fused.parallel`` (8|x| forward, 18|x| backward).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

import torch
from torch import Tensor, nn

from . import small_steps as ss
from . import ops
from .ops import TIES
from .parallel import parallel_attention
from .reference import hidden_width

__all__ = ["Flavor", "run_attention", "ChannelAttention", "SpatialAttention", "CBAM", "SE", "ECA",
           "eca_kernel_size", "ARRANGEMENTS"]

ARRANGEMENTS = ("channel_spatial", "spatial_channel", "parallel")


@dataclass(frozen=True)
class Flavor:
    """How the weights are combined; the weights themselves are passed separately."""

    channel_kind: str = "mlp"  # "mlp" (w1, b1, w2, b2), "linear" (w1 [C, C], b1) or "conv1d" (ECA)
    channel_pools: str = "avg+max"  # "avg+max", "avg", "max" or "light" (one pass on 0.5*avg + 0.5*max)
    channel_gate: str = "sigmoid"
    spatial_order: str = "mean_max"  # order of the pooled maps into the conv
    spatial_gate: str = "sigmoid"  # the parallel arrangement's single gate is this one
    ties: str = "index"  # "index" (torch.max, max_pool2d) or "split" (amax)
    arrangement: str = "channel_spatial"

    def __post_init__(self):
        for value, allowed, what in (
            (self.channel_kind, ss.CHANNEL_KINDS, "channel_kind"),
            (self.channel_pools, ss.CHANNEL_POOLS, "channel_pools"),
            (self.channel_gate, ss.GATES, "channel_gate"),
            (self.spatial_gate, ss.GATES, "spatial_gate"),
            (self.spatial_order, ss.SPATIAL_ORDERS, "spatial_order"),
            (self.ties, TIES, "ties"),
            (self.arrangement, ARRANGEMENTS, "arrangement"),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {what} {value!r}; expected one of {allowed}")
        if self.arrangement == "parallel" and self.channel_gate != self.spatial_gate:
            raise ValueError("the parallel arrangement has one gate: channel_gate and spatial_gate must be equal")


def _as(t: Optional[Tensor], x: Tensor) -> Optional[Tensor]:
    return t if t is None or t.dtype == x.dtype else t.to(x.dtype)  # no call at all when it is a no-op


def _bn_args(bn: nn.modules.batchnorm._BatchNorm, x: Tensor) -> tuple:
    """The fused op's BatchNorm arguments (mode, weight, bias, running mean and var, eps), following
    ``nn.BatchNorm2d.forward``: batch statistics in training mode, and in eval mode when there are no
    running buffers."""
    if bn.num_features != 1:
        raise ValueError(f"the BatchNorm after the spatial conv must have 1 feature, got {bn.num_features}")
    if bn.training or (bn.running_mean is None and bn.running_var is None):
        return "train", _as(bn.weight, x), _as(bn.bias, x), None, None, bn.eps
    return "eval", _as(bn.weight, x), _as(bn.bias, x), _as(bn.running_mean, x), _as(bn.running_var, x), bn.eps


def _update_running_stats(bn: nn.modules.batchnorm._BatchNorm, stats: Tensor, count: int) -> None:
    """BatchNorm's running-statistics update from the op's ``[mean, biased var]`` of ``count`` values."""
    if not (bn.training and bn.track_running_stats):
        return
    with torch.no_grad():
        factor = 0.0 if bn.momentum is None else bn.momentum
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        mean, var = stats.detach().to(bn.running_mean.dtype)
        bn.running_mean.mul_(1.0 - factor).add_(mean, alpha=factor)
        bn.running_var.mul_(1.0 - factor).add_(var * (count / (count - 1)), alpha=factor)


def run_attention(
    x: Tensor,
    flavor: Flavor,
    *,
    w1: Optional[Tensor] = None,
    b1: Optional[Tensor] = None,
    w2: Optional[Tensor] = None,
    b2: Optional[Tensor] = None,
    conv_weight: Optional[Tensor] = None,
    conv_bias: Optional[Tensor] = None,
    bn: Optional[nn.modules.batchnorm._BatchNorm] = None,
    backend: Optional[str] = None,
) -> Tensor:
    """Apply the gates of ``flavor`` with these weights (cast to x's dtype here) and update ``bn``'s
    running statistics in training mode. Either group of weights may be absent (a single gate). The
    channel map's weights may be 1x1 conv weights [rows, cols, 1, 1], as the modules hold them.

    This is every fused module's forward, so it stays lean: the op checks the arguments itself."""
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"expected a 4-D tensor [N, C, H, W], got {getattr(x, 'shape', type(x).__name__)}")
    f = flavor
    channel, spatial = w1 is not None, conv_weight is not None
    if channel:
        w1, b1, w2, b2 = _as(w1, x), _as(b1, x), _as(w2, x), _as(b2, x)
    if spatial:
        conv_weight, conv_bias = _as(conv_weight, x), _as(conv_bias, x)
    bn_mode, bn_w, bn_b, bn_mean, bn_var, bn_eps = "none", None, None, None, None, 1e-5
    if bn is not None:
        if not spatial:
            raise ValueError("a BatchNorm needs the spatial conv it follows")
        bn_mode, bn_w, bn_b, bn_mean, bn_var, bn_eps = _bn_args(bn, x)
        n, _, h, w = x.shape
        if bn_mode == "train" and n * h * w <= 1:
            raise ValueError(f"BatchNorm in training mode needs more than 1 value, got input shape {tuple(x.shape)}")
    if channel and spatial and f.arrangement == "parallel":
        y, stats = parallel_attention(
            x, w1=w1, b1=b1, w2=w2, b2=b2, channel_kind=f.channel_kind, channel_pools=f.channel_pools,
            conv_weight=conv_weight, conv_bias=conv_bias, spatial_order=f.spatial_order, gate=f.spatial_gate,
            bn_weight=bn_w, bn_bias=bn_b, bn_running_mean=bn_mean, bn_running_var=bn_var,
            bn_training=None if bn_mode == "none" else bn_mode == "train", bn_eps=bn_eps, ties=f.ties,
            backend=backend)
    elif channel and spatial and f.arrangement == "spatial_channel":
        x1, stats = ops.run(x, None, None, None, None, conv_weight, conv_bias, bn_w, bn_b, bn_mean, bn_var,
                            f.channel_kind, f.channel_pools, f.channel_gate, f.spatial_order, f.spatial_gate,
                            bn_mode, bn_eps, f.ties, backend)
        y, _ = ops.run(x1, w1, b1, w2, b2, None, None, None, None, None, None, f.channel_kind, f.channel_pools,
                       f.channel_gate, f.spatial_order, f.spatial_gate, "none", bn_eps, f.ties, backend)
    else:
        y, stats = ops.run(x, w1, b1, w2, b2, conv_weight, conv_bias, bn_w, bn_b, bn_mean, bn_var,
                           f.channel_kind, f.channel_pools, f.channel_gate, f.spatial_order, f.spatial_gate,
                           bn_mode, bn_eps, f.ties, backend)
    if stats is not None and bn is not None:
        _update_running_stats(bn, stats, x.shape[0] * x.shape[2] * x.shape[3])
    return y


# ------------------------------------------------------------------------------------- modules
class ChannelAttention(nn.Module):
    """Fused channel gate: ``x * G(sum over pools v of map(v))``.

    ``kind="mlp"`` keeps the reference's ``shared_MLP`` (1x1 convs, optionally with biases);
    ``kind="linear"`` is a single 1x1 conv ``fc`` from C to C with bias (ultralytics, timm's EffectiveSE).
    ``hidden`` overrides the width ``max(1, channels // reduction)`` (timm rounds C/16 instead).
    """

    def __init__(self, channels: int, reduction: int = 16, *, gate: str = "sigmoid", hidden: Optional[int] = None,
                 bias: bool = False, pools: str = "avg+max", kind: str = "mlp", ties: str = "index",
                 backend: Optional[str] = None):
        super().__init__()
        if kind == "mlp":
            hidden = hidden_width(channels, reduction) if hidden is None else hidden
            if hidden < 1:
                raise ValueError(f"hidden width must be at least 1, got {hidden}")
            self.shared_MLP = nn.Sequential(
                nn.Conv2d(channels, hidden, 1, bias=bias),
                nn.ReLU(),
                nn.Conv2d(hidden, channels, 1, bias=bias),
            )
        elif kind == "linear":
            self.fc = nn.Conv2d(channels, channels, 1, bias=True)
        else:
            raise ValueError(f"unknown channel kind {kind!r}; expected 'mlp' or 'linear' (ECA is cbam_fused.ECA)")
        self.flavor = Flavor(channel_kind=kind, channel_pools=pools, channel_gate=gate, ties=ties)
        self.backend = backend

    def weights(self) -> dict:
        if self.flavor.channel_kind == "linear":
            return dict(w1=self.fc.weight, b1=self.fc.bias)
        fc1, fc2 = self.shared_MLP[0], self.shared_MLP[2]
        return dict(w1=fc1.weight, b1=fc1.bias, w2=fc2.weight, b2=fc2.bias)

    def forward(self, x: Tensor) -> Tensor:
        return run_attention(x, self.flavor, **self.weights(), backend=self.backend)


class SpatialAttention(nn.Module):
    """Fused spatial gate: ``x * G(BN?(conv2d([mean_c, max_c])))`` (the order of the maps is an option)."""

    def __init__(self, kernel_size: int = 7, *, gate: str = "sigmoid", bias: bool = False, order: str = "mean_max",
                 bn: bool = False, bn_momentum: Optional[float] = 0.1, bn_eps: float = 1e-5, ties: str = "index",
                 backend: Optional[str] = None):
        super().__init__()
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
        self.conv2d = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=bias)
        if bn:
            self.bn = nn.BatchNorm2d(1, eps=bn_eps, momentum=bn_momentum)
        self.flavor = Flavor(spatial_order=order, spatial_gate=gate, ties=ties)
        self.backend = backend

    def weights(self) -> dict:
        return dict(conv_weight=self.conv2d.weight, conv_bias=self.conv2d.bias, bn=getattr(self, "bn", None))

    def forward(self, x: Tensor) -> Tensor:
        return run_attention(x, self.flavor, **self.weights(), backend=self.backend)


class CBAM(nn.Module):
    """Fused CBAM. With default options the parameters are exactly the reference's.

    Flavor options (keyword-only): ``channel_gate``/``spatial_gate`` (default ``gate``), ``hidden``,
    ``mlp_bias``, ``channel_pools``, ``channel_kind`` (``"mlp"`` or ``"linear"``), ``spatial_order``,
    ``conv_bias``, ``spatial_bn`` (BatchNorm2d(1) after the conv, with ``bn_momentum`` and ``bn_eps``),
    ``ties`` and ``arrangement`` (``"channel_spatial"``, ``"spatial_channel"`` or ``"parallel"``).
    """

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7, *, gate: str = "sigmoid",
                 channel_gate: Optional[str] = None, spatial_gate: Optional[str] = None,
                 hidden: Optional[int] = None, mlp_bias: bool = False, channel_pools: str = "avg+max",
                 channel_kind: str = "mlp", spatial_order: str = "mean_max", conv_bias: bool = False,
                 spatial_bn: bool = False, bn_momentum: Optional[float] = 0.1, bn_eps: float = 1e-5,
                 ties: str = "index", arrangement: str = "channel_spatial", backend: Optional[str] = None):
        super().__init__()
        channel_gate = channel_gate or gate
        spatial_gate = spatial_gate or gate
        self.channel_attention = ChannelAttention(channels, reduction, gate=channel_gate, hidden=hidden,
                                                  bias=mlp_bias, pools=channel_pools, kind=channel_kind, ties=ties,
                                                  backend=backend)
        self.spatial_attention = SpatialAttention(kernel_size, gate=spatial_gate, bias=conv_bias,
                                                  order=spatial_order, bn=spatial_bn, bn_momentum=bn_momentum,
                                                  bn_eps=bn_eps, ties=ties, backend=backend)
        self.flavor = replace(self.channel_attention.flavor, spatial_order=spatial_order, spatial_gate=spatial_gate,
                              arrangement=arrangement)
        self.backend = backend

    def forward(self, x: Tensor) -> Tensor:
        return run_attention(x, self.flavor, **self.channel_attention.weights(), **self.spatial_attention.weights(),
                             backend=self.backend)


class SE(nn.Module):
    """Fused squeeze-and-excitation: ``x * G(fc2(relu(fc1(avg_pool(x)))))`` with 1x1 convs (biases by default).

    Parameter names follow timm's SEModule (``fc1``, ``fc2``).
    """

    def __init__(self, channels: int, reduction: int = 16, *, hidden: Optional[int] = None, bias: bool = True,
                 gate: str = "sigmoid", backend: Optional[str] = None):
        super().__init__()
        hidden = hidden_width(channels, reduction) if hidden is None else hidden
        if hidden < 1:
            raise ValueError(f"hidden width must be at least 1, got {hidden}")
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=bias)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=bias)
        self.flavor = Flavor(channel_pools="avg", channel_gate=gate)
        self.backend = backend

    def forward(self, x: Tensor) -> Tensor:
        return run_attention(x, self.flavor, w1=self.fc1.weight, b1=self.fc1.bias, w2=self.fc2.weight,
                             b2=self.fc2.bias, backend=self.backend)


def eca_kernel_size(channels: int, gamma: float = 2.0, b: float = 1.0) -> int:
    """ECA's adaptive kernel size: ``|log2(C) / gamma + b / gamma|`` truncated, made odd by adding 1."""
    if channels < 1:
        raise ValueError(f"channels must be positive, got {channels}")
    t = int(abs(math.log2(channels) / gamma + b / gamma))
    return t if t % 2 else t + 1


class ECA(nn.Module):
    """Fused efficient channel attention: ``x * G(conv1d(avg_pool(x)))`` across channels, no bias.

    The kernel size is ``eca_kernel_size(channels, gamma, b)`` unless given. Parameter name ``conv``
    as in timm's EcaModule.
    """

    def __init__(self, channels: Optional[int] = None, kernel_size: Optional[int] = None, *, gamma: float = 2.0,
                 b: float = 1.0, gate: str = "sigmoid", backend: Optional[str] = None):
        super().__init__()
        if kernel_size is None:
            if channels is None:
                raise ValueError("ECA needs channels (for the adaptive kernel size) or an explicit kernel_size")
            kernel_size = eca_kernel_size(channels, gamma, b)
        if kernel_size < 1 or kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        self.flavor = Flavor(channel_kind="conv1d", channel_pools="avg", channel_gate=gate)
        self.backend = backend

    def forward(self, x: Tensor) -> Tensor:
        return run_attention(x, self.flavor, w1=self.conv.weight, backend=self.backend)
