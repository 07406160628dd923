"""Functional forms of the fused gates: thin wrappers over ``cbam_fused.ops.attention``."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from .ops import attention

__all__ = ["channel_attention", "spatial_attention", "cbam"]


def channel_attention(
    x: Tensor,
    w1: Tensor,
    w2: Tensor,
    b1: Optional[Tensor] = None,
    b2: Optional[Tensor] = None,
    *,
    gate: str = "sigmoid",
    ties: str = "index",
    backend: Optional[str] = None,
) -> Tensor:
    """``x * G(MLP(avg_pool(x)) + MLP(max_pool(x)))``; w1: [Cr, C], w2: [C, Cr], b1: [Cr], b2: [C]."""
    return attention(x, w1=w1, b1=b1, w2=w2, b2=b2, channel_gate=gate, ties=ties, backend=backend)[0]


def spatial_attention(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    *,
    gate: str = "sigmoid",
    ties: str = "index",
    backend: Optional[str] = None,
) -> Tensor:
    """``x * G(conv2d([mean_c(x), max_c(x)], weight, bias, padding=K // 2))``; weight: [1, 2, K, K]."""
    return attention(x, conv_weight=weight, conv_bias=bias, spatial_gate=gate, ties=ties, backend=backend)[0]


def cbam(
    x: Tensor,
    w1: Tensor,
    w2: Tensor,
    conv_weight: Tensor,
    b1: Optional[Tensor] = None,
    b2: Optional[Tensor] = None,
    conv_bias: Optional[Tensor] = None,
    *,
    gate: str = "sigmoid",
    ties: str = "index",
    backend: Optional[str] = None,
) -> Tensor:
    """The channel gate, then the spatial gate, as one fused autograd op."""
    return attention(
        x, w1=w1, b1=b1, w2=w2, b2=b2, conv_weight=conv_weight, conv_bias=conv_bias,
        channel_gate=gate, spatial_gate=gate, ties=ties, backend=backend,
    )[0]
