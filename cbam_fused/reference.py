"""Pure-PyTorch CBAM: the oracle every fused backend is tested against.

This module follows the common PyTorch version of CBAM (Woo et al., ECCV 2018):

* channel gate: ``shared_MLP = Sequential(Conv2d(C, Cr, 1, bias=False), ReLU, Conv2d(Cr, C, 1, bias=False))``
  applied to the average- and max-pooled maps, summed, then a sigmoid;
* spatial gate: ``conv2d = Conv2d(2, 1, K, padding=K // 2, bias=False)`` over ``[mean_c, max_c]``, then a sigmoid.

The hidden width is ``max(1, channels // reduction)`` so that ``channels < reduction`` still works (the
common version would build a zero-width layer).

It uses stock PyTorch ops only and knows nothing of the fused code. The functional forms take the same
weights as the fused API (``w1: [Cr, C]``, ``w2: [C, Cr]``, ``weight: [1, 2, K, K]``) so that tests can
call both with the same tensors.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "GATES",
    "gate_fn",
    "hidden_width",
    "channel_attention",
    "spatial_attention",
    "cbam",
    "ChannelAttention",
    "SpatialAttention",
    "CBAM",
]


def _keras_hard_sigmoid(z: Tensor) -> Tensor:
    # Keras 2's hard sigmoid: clip(0.2 * z + 0.5, 0, 1).
    return torch.clamp(0.2 * z + 0.5, 0.0, 1.0)


#: gate name -> function from logits to gate values
GATES = {
    "sigmoid": torch.sigmoid,
    "hard_sigmoid": F.hardsigmoid,
    "keras_hard_sigmoid": _keras_hard_sigmoid,
}


def gate_fn(name: str):
    try:
        return GATES[name]
    except KeyError:
        raise ValueError(f"unknown gate {name!r}; expected one of {sorted(GATES)}") from None


def hidden_width(channels: int, reduction: int = 16) -> int:
    """Hidden width of the channel MLP: ``max(1, channels // reduction)``."""
    return max(1, channels // reduction)


def _mlp(v: Tensor, w1: Tensor, w2: Tensor, b1: Tensor | None, b2: Tensor | None) -> Tensor:
    return F.linear(F.relu(F.linear(v, w1, b1)), w2, b2)


def _max_over(x: Tensor, dim, ties: str) -> Tensor:
    """Max over ``dim`` with the chosen gradient semantics on ties.

    ``"index"``: one index gets the gradient (``torch.max``, ``max_pool2d``);
    ``"split"``: the gradient is shared evenly among all maxima (``torch.amax``).
    """
    if ties == "split":
        return torch.amax(x, dim=dim)
    if ties != "index":
        raise ValueError(f"ties must be 'index' or 'split', got {ties!r}")
    if isinstance(dim, tuple):  # flatten the pixels so one torch.max picks a single index
        return x.flatten(dim[0]).max(dim=dim[0]).values
    return x.max(dim=dim).values


def channel_attention(
    x: Tensor,
    w1: Tensor,
    w2: Tensor,
    b1: Tensor | None = None,
    b2: Tensor | None = None,
    *,
    gate: str = "sigmoid",
    ties: str = "index",
) -> Tensor:
    """``x * G(MLP(avg_pool(x)) + MLP(max_pool(x)))`` with ``MLP(v) = w2 @ relu(w1 @ v + b1) + b2``."""
    avg = x.mean(dim=(2, 3))
    mx = _max_over(x, (2, 3), ties)
    m = _mlp(avg, w1, w2, b1, b2) + _mlp(mx, w1, w2, b1, b2)
    return x * gate_fn(gate)(m)[:, :, None, None]


def spatial_attention(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    gate: str = "sigmoid",
    ties: str = "index",
) -> Tensor:
    """``x * G(conv2d([mean_c(x), max_c(x)], weight, bias, padding=K // 2))``."""
    k = weight.shape[-1]
    pooled = torch.stack([x.mean(dim=1), _max_over(x, 1, ties)], dim=1)
    logits = F.conv2d(pooled, weight, bias, padding=k // 2)
    return x * gate_fn(gate)(logits)


def cbam(
    x: Tensor,
    w1: Tensor,
    w2: Tensor,
    conv_weight: Tensor,
    b1: Tensor | None = None,
    b2: Tensor | None = None,
    conv_bias: Tensor | None = None,
    *,
    gate: str = "sigmoid",
    ties: str = "index",
) -> Tensor:
    """The channel gate, then the spatial gate."""
    x1 = channel_attention(x, w1, w2, b1, b2, gate=gate, ties=ties)
    return spatial_attention(x1, conv_weight, conv_bias, gate=gate, ties=ties)


class ChannelAttention(nn.Module):
    """Channel gate of the common PyTorch CBAM; returns ``x`` times the channel map."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = hidden_width(channels, reduction)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        self.shared_MLP = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        avg_out = self.shared_MLP(self.avg_pool(x))
        max_out = self.shared_MLP(self.max_pool(x))
        return x * self.sigmoid(avg_out + max_out)


class SpatialAttention(nn.Module):
    """Spatial gate of the common PyTorch CBAM; returns ``x`` times the spatial map."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.conv2d = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        avg_out = torch.mean(x, dim=1, keepdim=True)
        max_out, _ = torch.max(x, dim=1, keepdim=True)
        return x * self.sigmoid(self.conv2d(torch.cat([avg_out, max_out], dim=1)))


class CBAM(nn.Module):
    """Channel gate followed by spatial gate."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7):
        super().__init__()
        self.channel_attention = ChannelAttention(channels, reduction)
        self.spatial_attention = SpatialAttention(kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.spatial_attention(self.channel_attention(x))
