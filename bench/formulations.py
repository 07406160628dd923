"""Eager CBAM formulations as users write them, each faithful to ``cbam_fused.reference.CBAM``.

``torch.compile`` does better on some of them than on others, so the benchmark compiles each and
keeps the fastest as "the strongest torch.compile"; eager timings use the reference module itself.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cbam_fused import reference


class MatmulCBAM(nn.Module):
    """The reference CBAM with the shared MLP as matrix products on the stacked pools, and amax."""

    def __init__(self, ref: reference.CBAM):
        super().__init__()
        mlp = ref.channel_attention.shared_MLP
        self.w1 = nn.Parameter(mlp[0].weight.detach().flatten(1).clone())
        self.w2 = nn.Parameter(mlp[2].weight.detach().flatten(1).clone())
        self.conv_w = nn.Parameter(ref.spatial_attention.conv2d.weight.detach().clone())

    def forward(self, x):
        n = x.shape[0]
        p = torch.cat([x.mean((2, 3)), x.amax((2, 3))])
        m = F.relu(p @ self.w1.t()) @ self.w2.t()
        x = x * torch.sigmoid(m[:n] + m[n:])[:, :, None, None]
        q = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * torch.sigmoid(F.conv2d(q, self.conv_w, padding=self.conv_w.shape[-1] // 2))


def reference_cbam(ref: reference.CBAM) -> nn.Module:
    return ref


# name -> builder from a reference module; every one computes the same function
FORMULATIONS = {"conv1x1": reference_cbam, "matmul": MatmulCBAM}
