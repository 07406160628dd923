"""Test fixtures: CBAM variants found in the wild, written here from their published structure (module
layout and parameter names; the forward math as the papers and the projects describe it), and an
eager oracle for every flavor of ``cbam_fused.CBAM``.

* ``Official*``: the CBAM authors' code: ``ChannelGate`` (Linear MLP with biases behind a flatten, a
  list of pool types, ``F.max_pool2d`` over the whole map), ``SpatialGate`` (a ``ChannelPool`` giving
  [max, mean], then a conv with BatchNorm(momentum 0.01) and no activation);
* ``Ultra*``: ultralytics-style: channel gate = avg pool, one 1x1 conv C->C with bias, sigmoid; spatial
  gate = conv over [mean, max] without bias, ``torch.max`` for the max;
* ``MapOnlyChannelAttention``: the widespread copy whose forward returns the sigmoid map only (the
  residual block multiplies);
* ``SiluSE``: an SE block with a SiLU between its layers (not reproducible: left alone).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cbam_fused import reference as R


# ----------------------------------------------------------------------------- official (paper code)
class Flatten(nn.Module):
    def forward(self, x):
        return x.reshape(x.shape[0], -1)


class OfficialConvBN(nn.Module):
    def __init__(self, cin, cout, k, padding, bn=True, relu=False, bias=False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=padding, bias=bias)
        self.bn = nn.BatchNorm2d(cout, eps=1e-5, momentum=0.01, affine=True) if bn else None
        self.relu = nn.ReLU() if relu else None

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.relu(x) if self.relu is not None else x


class OfficialChannelGate(nn.Module):
    def __init__(self, channels, reduction=16, pool_types=("avg", "max")):
        super().__init__()
        self.mlp = nn.Sequential(Flatten(), nn.Linear(channels, channels // reduction), nn.ReLU(),
                                 nn.Linear(channels // reduction, channels))
        self.pool_types = list(pool_types)

    def forward(self, x):
        total = None
        hw = (x.shape[2], x.shape[3])
        for kind in self.pool_types:
            if kind == "avg":
                pooled = F.avg_pool2d(x, hw, stride=hw)
            elif kind == "max":
                pooled = F.max_pool2d(x, hw, stride=hw)
            elif kind == "lp":
                pooled = F.lp_pool2d(x, 2, hw, stride=hw)
            else:
                raise ValueError(kind)
            out = self.mlp(pooled)
            total = out if total is None else total + out
        return x * torch.sigmoid(total)[:, :, None, None]


class OfficialChannelPool(nn.Module):
    def forward(self, x):
        return torch.cat([torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)], dim=1)


class OfficialSpatialGate(nn.Module):
    def __init__(self, kernel_size=7):
        super().__init__()
        self.compress = OfficialChannelPool()
        self.spatial = OfficialConvBN(2, 1, kernel_size, padding=(kernel_size - 1) // 2)

    def forward(self, x):
        return x * torch.sigmoid(self.spatial(self.compress(x)))


class OfficialCBAM(nn.Module):
    def __init__(self, channels, reduction=16, pool_types=("avg", "max"), no_spatial=False):
        super().__init__()
        self.ChannelGate = OfficialChannelGate(channels, reduction, pool_types)
        self.no_spatial = no_spatial
        if not no_spatial:
            self.SpatialGate = OfficialSpatialGate()

    def forward(self, x):
        out = self.ChannelGate(x)
        return out if self.no_spatial else self.SpatialGate(out)


# ----------------------------------------------------------------------------- ultralytics-style
class UltraChannelAttention(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(channels, channels, 1, 1, 0, bias=True)
        self.act = nn.Sigmoid()

    def forward(self, x):
        return x * self.act(self.fc(self.pool(x)))


class UltraSpatialAttention(nn.Module):
    def __init__(self, kernel_size=7):
        super().__init__()
        self.cv1 = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.act = nn.Sigmoid()

    def forward(self, x):
        pooled = torch.cat([torch.mean(x, 1, keepdim=True), torch.max(x, 1, keepdim=True)[0]], 1)
        return x * self.act(self.cv1(pooled))


class UltraCBAM(nn.Module):
    def __init__(self, c1, kernel_size=7):
        super().__init__()
        self.channel_attention = UltraChannelAttention(c1)
        self.spatial_attention = UltraSpatialAttention(kernel_size)

    def forward(self, x):
        return self.spatial_attention(self.channel_attention(x))


# ----------------------------------------------------------------------------- not convertible
class MapOnlyChannelAttention(nn.Module):
    """Returns the channel map only; the caller multiplies."""

    def __init__(self, channels, reduction=16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        avg = self.fc2(self.relu1(self.fc1(self.avg_pool(x))))
        mx = self.fc2(self.relu1(self.fc1(self.max_pool(x))))
        return self.sigmoid(avg + mx)


class MapOnlyUser(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.ca = MapOnlyChannelAttention(channels, 4)

    def forward(self, x):
        return x + self.ca(x) * x  # a residual around the gated map: the user block itself is no CBAM


class SiluSE(nn.Module):
    def __init__(self, channels, hidden):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = nn.SiLU()
        self.fc2 = nn.Conv2d(hidden, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        return x * self.gate(self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))))


# ----------------------------------------------------------------------------- eager flavor oracle
def _max(t, dims, ties):
    if ties == "split":
        return t.amax(dim=dims)
    if isinstance(dims, tuple):
        return t.flatten(2).max(dim=2).values
    return t.max(dim=dims).values


def eager_cbam(x, p: dict, o: dict, bn: nn.BatchNorm2d | None):
    """CBAM flavor ``o`` (the keyword options of ``cbam_fused.CBAM``) with weights ``p`` in stock torch
    ops; ``bn`` is an ``nn.BatchNorm2d`` (its own forward updates its running statistics)."""
    gate = o.get("gate", "sigmoid")
    cg = R.gate_fn(o.get("channel_gate") or gate)
    sg = R.gate_fn(o.get("spatial_gate") or gate)
    ties = o.get("ties", "index")
    pools = o.get("channel_pools", "avg+max")
    kind = o.get("channel_kind", "mlp")

    def channel_logits(t):
        avg, mx = t.mean(dim=(2, 3)), _max(t, (2, 3), ties)
        vs = {"avg+max": [avg, mx], "avg": [avg], "max": [mx], "light": [0.5 * avg + 0.5 * mx]}[pools]
        if kind == "linear":
            return sum(F.linear(v, p["w1"], p["b1"]) for v in vs)
        return sum(F.linear(F.relu(F.linear(v, p["w1"], p.get("b1"))), p["w2"], p.get("b2")) for v in vs)

    def spatial_logits(t):
        pair = [t.mean(dim=1, keepdim=True), _max(t, 1, ties).unsqueeze(1)]
        if o.get("spatial_order", "mean_max") == "max_mean":
            pair.reverse()
        k = p["conv_w"].shape[-1]
        c = F.conv2d(torch.cat(pair, dim=1), p["conv_w"], p.get("conv_b"), padding=k // 2)
        return bn(c) if bn is not None else c

    arrangement = o.get("arrangement", "channel_spatial")
    if arrangement == "channel_spatial":
        x1 = x * cg(channel_logits(x))[:, :, None, None]
        return x1 * sg(spatial_logits(x1))
    if arrangement == "spatial_channel":
        x1 = x * sg(spatial_logits(x))
        return x1 * cg(channel_logits(x1))[:, :, None, None]
    return x * sg(channel_logits(x)[:, :, None, None] + spatial_logits(x))
