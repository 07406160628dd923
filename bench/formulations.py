"""Eager formulations of the reference units as users write them, for the torch.compile baseline.

``torch.compile`` does much better on some formulations than on others (the reference's 1x1
convolutions compile about 2x slower on the CPU than the same MLP as matrix products), so the sweep
compiles each formulation in ``FORMULATIONS`` and reports the fastest as "compile". Every one computes
the reference's output and gradients; ``ties`` says how the max pools share the gradient among equal
maxima (``tests/test_bench_formulations.py`` checks both in float64, with ties planted).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cbam_fused import reference


def _max_hw(x: Tensor, ties: str) -> Tensor:
    if ties == "split":
        return x.amax((2, 3))
    # one max over the flattened pixels: the gradient goes to one index, like adaptive_max_pool2d
    return x.flatten(2).max(2).values


def _max_c(x: Tensor, ties: str) -> Tensor:
    return x.amax(1, keepdim=True) if ties == "split" else x.max(1, keepdim=True).values


class MatmulChannelAttention(nn.Module):
    """The reference channel gate with the shared MLP as matrix products on the stacked pools."""

    def __init__(self, ref: reference.ChannelAttention, ties: str = "index"):
        super().__init__()
        mlp = ref.shared_MLP
        self.w1 = nn.Parameter(mlp[0].weight.detach().flatten(1).clone())
        self.w2 = nn.Parameter(mlp[2].weight.detach().flatten(1).clone())
        self.ties = ties

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        p = torch.cat([x.mean((2, 3)), _max_hw(x, self.ties)])  # one MLP call for both pools
        m = F.relu(p @ self.w1.t()) @ self.w2.t()
        return x * torch.sigmoid(m[:n] + m[n:])[:, :, None, None]


class PooledSpatialAttention(nn.Module):
    """The reference spatial gate (it has no MLP) with the chosen max."""

    def __init__(self, ref: reference.SpatialAttention, ties: str = "index"):
        super().__init__()
        self.weight = nn.Parameter(ref.conv2d.weight.detach().clone())
        self.ties = ties

    def forward(self, x: Tensor) -> Tensor:
        q = torch.cat([x.mean(1, keepdim=True), _max_c(x, self.ties)], 1)
        return x * torch.sigmoid(F.conv2d(q, self.weight, padding=self.weight.shape[-1] // 2))


class MatmulCBAM(nn.Module):
    """The reference CBAM with the channel MLP as matrix products."""

    def __init__(self, ref: reference.CBAM, ties: str = "index"):
        super().__init__()
        self.channel_attention = MatmulChannelAttention(ref.channel_attention, ties)
        self.spatial_attention = PooledSpatialAttention(ref.spatial_attention, ties)

    def forward(self, x: Tensor) -> Tensor:
        return self.spatial_attention(self.channel_attention(x))


# reference unit -> its matrix-product formulation
MATMUL_UNITS = {reference.CBAM: MatmulCBAM, reference.ChannelAttention: MatmulChannelAttention,
                reference.SpatialAttention: PooledSpatialAttention}


@dataclass(frozen=True)
class Formulation:
    summary: str
    matmul: bool  # False: the reference module itself
    ties: str  # "index": one maximum gets the gradient, as in the reference; "split": shared (amax)

    def build(self, ref: nn.Module) -> nn.Module:
        """This formulation of the reference unit ``ref``, with copies of its weights."""
        if not self.matmul:
            return ref
        return MATMUL_UNITS[type(ref)](ref, self.ties)


# name -> formulation; the sweep compiles each one (``--compile-formulations``)
FORMULATIONS = {
    "conv1x1": Formulation("the reference module: MLP as 1x1 convolutions, adaptive pools", False, "index"),
    "matmul": Formulation("MLP as matrix products on the stacked pools, torch.max", True, "index"),
    "matmul_amax": Formulation("as matmul with amax: ties share the gradient (ties='split')", True, "split"),
}


def build(name: str, ref: nn.Module) -> nn.Module:
    return FORMULATIONS[name].build(ref)
