"""Drop-in fused modules with the reference's parameter names and shapes.

A checkpoint of ``cbam_fused.reference.CBAM`` loads into ``cbam_fused.CBAM`` with ``strict=True`` and
back. The modules only gather their weights (cast to x's dtype, as ``F.linear`` does under autocast)
and call ``cbam_fused.ops.attention``, which picks the backend.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .ops import attention
from .reference import hidden_width

__all__ = ["ChannelAttention", "SpatialAttention", "CBAM"]


def _as(t: Optional[Tensor], x: Tensor) -> Optional[Tensor]:
    return None if t is None else t.to(x.dtype)


class ChannelAttention(nn.Module):
    """Fused channel gate: returns ``x * G(MLP(avg) + MLP(max))``."""

    def __init__(self, channels: int, reduction: int = 16, *, gate: str = "sigmoid",
                 backend: Optional[str] = None):
        super().__init__()
        hidden = hidden_width(channels, reduction)
        self.shared_MLP = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )
        self.gate = gate
        self.backend = backend

    def weights(self, x: Tensor) -> dict:
        fc1, fc2 = self.shared_MLP[0], self.shared_MLP[2]
        return dict(w1=fc1.weight.flatten(1).to(x.dtype), b1=_as(fc1.bias, x),
                    w2=fc2.weight.flatten(1).to(x.dtype), b2=_as(fc2.bias, x), channel_gate=self.gate)

    def forward(self, x: Tensor) -> Tensor:
        return attention(x, **self.weights(x), backend=self.backend)[0]


class SpatialAttention(nn.Module):
    """Fused spatial gate: returns ``x * G(conv2d([mean_c, max_c]))``."""

    def __init__(self, kernel_size: int = 7, *, gate: str = "sigmoid", backend: Optional[str] = None):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.conv2d = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.gate = gate
        self.backend = backend

    def weights(self, x: Tensor) -> dict:
        return dict(conv_weight=self.conv2d.weight.to(x.dtype), conv_bias=_as(self.conv2d.bias, x),
                    spatial_gate=self.gate)

    def forward(self, x: Tensor) -> Tensor:
        return attention(x, **self.weights(x), backend=self.backend)[0]


class CBAM(nn.Module):
    """Fused CBAM: channel gate then spatial gate in one autograd op."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7, *, gate: str = "sigmoid",
                 backend: Optional[str] = None):
        super().__init__()
        self.channel_attention = ChannelAttention(channels, reduction, gate=gate, backend=backend)
        self.spatial_attention = SpatialAttention(kernel_size, gate=gate, backend=backend)
        self.backend = backend

    def forward(self, x: Tensor) -> Tensor:
        kw = {**self.channel_attention.weights(x), **self.spatial_attention.weights(x)}
        return attention(x, **kw, backend=self.backend)[0]
