"""The six full-size passes every backend implements, and their executable specification (plus the
spatial gate's small convolution, which the C++ and CUDA backends also implement as kernels).

The fused ops (``cbam_fused.ops``) split CBAM into passes over the big tensors and small steps on
pooled vectors. Only the passes are backend-specific: C++ for the CPU, CUDA, Triton. This module is
their contract. ``TorchPasses`` implements it with plain torch ops; it is slow (it materialises
full-size temporaries) and exists as the spec that kernel tests compare against, and as a backend
for testing the orchestration on its own.

Notation: ``x`` is ``[N, C, H, W]`` in NCHW-contiguous or channels_last layout, ``P = H * W``,
``acc`` is float64 for float64 inputs and float32 otherwise. Small tensors are ``acc`` and contiguous:
per-channel ``[N, C]``, per-pixel ``[N, P]``; indices and counts are int32. ``a`` (per channel) and
``s`` (per pixel) are gate values; ``None`` means "all ones".

Max pooling keeps the first index of the maximum (as ``torch.max`` on CPU) and the number of
elements equal to it. NaN wins a max and the first NaN is the argmax (as ``torch.max``). With
``ties=False`` (inference: no gradient follows) a pool keeps neither and returns ``None`` for both;
its mean and max are bitwise those it gives with ``ties=True``.

A ``v`` gradient for max pooling is routed by ``tie``:

* index-style (``split=False``): element ``i`` gets ``v`` iff ``i == argmax``;
* split-style (``split=True``): element ``i`` gets ``v`` iff its pooled value equals the max; the caller
  has already divided ``v`` by the count. The pooled value is recomputed exactly as in the forward
  pass (``acc(x) * a``), so the comparison is exact.

Byte budget of the fused block (docs/design.md §3): forward reads x in ``pool_hw`` and ``pool_c`` and reads
x / writes y in ``apply_gates`` (4|x|); backward reads gy and x in ``gate_grads``, x in
``pool_c_grad_a``, and gy / writes gx in ``input_grad`` (5|x|; split-style ties also read x there).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["acc_dtype", "TorchPasses"]


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _first_max(v: Tensor, dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """max, first argmax and count of maxima along ``dim`` (NaN wins, first NaN is the argmax)."""
    mx, idx = v.max(dim=dim)  # torch.max: NaN propagates, first index on ties
    count = (v == mx.unsqueeze(dim)).sum(dim=dim)
    count = torch.where(torch.isnan(mx), torch.ones_like(count), count)
    return mx, idx.to(torch.int32), count.to(torch.int32)


class TorchPasses:
    """Reference implementation of the pass contract with plain torch ops."""

    name = "spec"

    @staticmethod
    def _flat(x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        return x.to(acc_dtype(x.dtype)).reshape(n, c, h * w)

    def pool_hw(self, x: Tensor, ties: bool = True) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """Pool over pixels: ``(avg, max, argmax, count)``, each ``[N, C]`` (the last two None
        without ``ties``)."""
        v = self._flat(x)
        mx, idx, count = _first_max(v, 2)
        return (v.mean(dim=2), mx, idx, count) if ties else (v.mean(dim=2), mx, None, None)

    def pool_c(self, x: Tensor, a: Tensor | None, ties: bool = True
               ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """Pool ``acc(x) * a`` over channels: ``(mean, max, argmax, count)``, each ``[N, P]`` (the last
        two None without ``ties``)."""
        v = self._flat(x)
        if a is not None:
            v = v * a[:, :, None]
        mx, idx, count = _first_max(v, 1)
        return (v.mean(dim=1), mx, idx, count) if ties else (v.mean(dim=1), mx, None, None)

    def apply_gates(self, x: Tensor, a: Tensor | None, s: Tensor | None) -> Tensor:
        """``y = (acc(x) * a) * s`` in x's dtype and memory format."""
        v = self._flat(x)
        if a is not None:
            v = v * a[:, :, None]
        if s is not None:
            v = v * s[:, None, :]
        return _fresh(v.to(x.dtype).reshape(x.shape), x)

    def gate_grads(
        self, gy: Tensor, x: Tensor, a: Tensor | None, s: Tensor | None, want_a: bool, want_s: bool
    ) -> tuple[Tensor, Tensor]:
        """``ga[n,c] = sum_p gy*x*s`` and ``gs[n,p] = sum_c gy*x*a``; an empty tensor where not wanted."""
        gyx = self._flat(gy) * self._flat(x)
        ga = (gyx * s[:, None, :] if s is not None else gyx).sum(dim=2) if want_a else gyx.new_empty(0)
        gs = (gyx * a[:, :, None] if a is not None else gyx).sum(dim=1) if want_s else gyx.new_empty(0)
        return ga, gs

    def pool_c_grad_a(
        self, x: Tensor, a: Tensor, u: Tensor, v: Tensor, argmax: Tensor, mx: Tensor, split: bool
    ) -> Tensor:
        """``ga[n,c] = sum_p acc(x) * (u[p] + T(c,p) * v[p])`` for the channel pool of ``x * a``."""
        xf = self._flat(x)
        tie = _tie_over_c(xf, a, argmax, mx, split, xf.shape[1])
        return (xf * (u[:, None, :] + tie * v[:, None, :])).sum(dim=2)

    def input_grad(
        self,
        gy: Tensor,
        x: Tensor | None,
        a: Tensor | None,
        s: Tensor | None,
        u_c: Tensor | None,
        v_c: Tensor | None,
        argmax_c: Tensor | None,
        max_c: Tensor | None,
        u_hw: Tensor | None,
        v_hw: Tensor | None,
        argmax_hw: Tensor | None,
        max_hw: Tensor | None,
        split: bool,
    ) -> Tensor:
        """``gx = A*(gy*S + u_c[p] + Tc*v_c[p]) + u_hw[c] + Thw*v_hw[c]`` in gy's dtype and x's layout.

        ``A``/``S`` are ``a``/``s`` or 1. The ``_c`` terms are the gradient of the pools over channels
        (spatial gate), the ``_hw`` terms of the pools over pixels (channel gate); either group may be
        ``None``. ``x`` is needed (and read) only when ``split`` is true.
        """
        g = self._flat(gy)
        n, c, p = g.shape
        if s is not None:
            g = g * s[:, None, :]
        xf = self._flat(x) if split else None
        if u_c is not None:
            g = g + u_c[:, None, :] + _tie_over_c(xf, a, argmax_c, max_c, split, c) * v_c[:, None, :]
        if a is not None:
            g = g * a[:, :, None]
        if u_hw is not None:
            g = g + u_hw[:, :, None] + _tie_over_hw(xf, argmax_hw, max_hw, split, p) * v_hw[:, :, None]
        return _fresh(g.to(gy.dtype).reshape(gy.shape), gy)

    # The spatial gate's convolution (csrc/pass_args.h, SpatialConvArgs): the planes in0, in1 and
    # grad_out are acc-typed [N, h*w], weight is [1, 2, K, K] (K odd), bias [1] or None.
    def spatial_conv(self, in0: Tensor, in1: Tensor, weight: Tensor, bias: Tensor | None, h: int, w: int) -> Tensor:
        """``conv2d([in0, in1], weight, bias, padding=K // 2)`` as ``[N, h*w]``."""
        q = torch.stack((in0, in1), dim=1).reshape(in0.shape[0], 2, h, w)
        return F.conv2d(q, weight, bias, padding=weight.shape[-1] // 2).reshape(in0.shape[0], h * w)

    def spatial_conv_backward(
        self, grad_out: Tensor, in0: Tensor, in1: Tensor, weight: Tensor, has_bias: bool, h: int, w: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(grad_in0, grad_in1, grad_weight, grad_bias)``; grad_bias is ``[1]`` if has_bias, else empty.

        The input gradient is the transposed convolution (as conv2d's autograd: taps outside grad_out
        are skipped, so an infinite weight makes no NaN at the border); the weight gradient is
        ``small_steps.conv_weight_grad`` (banded, with a float64 fold).
        """
        n, k = in0.shape[0], weight.shape[-1]
        gc = grad_out.reshape(n, 1, h, w)
        gq = F.conv_transpose2d(gc, weight, padding=k // 2).reshape(n, 2, h * w)
        if n == 0:  # no pixels: zero weight gradients (the banded sum needs a pixel row)
            gw = torch.zeros_like(weight)
        else:
            # imported here: this module also loads on its own, as a file (tests/test_cmake_build.py)
            from .small_steps import conv_weight_grad

            gw = conv_weight_grad(torch.stack((in0, in1), dim=1).reshape(n, 2, h, w), gc, k)
        gb = grad_out.sum().reshape(1) if has_bias else grad_out.new_empty(0)
        return gq[:, 0].contiguous(), gq[:, 1].contiguous(), gw, gb


def _memory_format(x: Tensor) -> torch.memory_format:
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _fresh(t: Tensor, like: Tensor) -> Tensor:
    """``t`` in ``like``'s layout as a tensor of its own, never a view: a custom op's output that is a
    view becomes a multi-output view to autograd, and in-place ops on it (``y += shortcut``) fail."""
    out = torch.empty_like(t, memory_format=_memory_format(like))
    return out.copy_(t)


def _tie_over_c(xf, a, argmax, mx, split, channels) -> Tensor:
    if split:
        v = xf * a[:, :, None] if a is not None else xf
        return (v == mx[:, None, :]).to(v.dtype)
    ar = torch.arange(channels, device=argmax.device)[None, :, None]
    return (ar == argmax[:, None, :].long()).to(acc_dtype(mx.dtype))


def _tie_over_hw(xf, argmax, mx, split, pixels) -> Tensor:
    if split:
        return (xf == mx[:, :, None]).to(xf.dtype)
    ar = torch.arange(pixels, device=argmax.device)[None, None, :]
    return (ar == argmax[:, :, None].long()).to(acc_dtype(mx.dtype))
