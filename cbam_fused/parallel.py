"""The parallel arrangement of CBAM: ``y = x * G(m[n,c] + l[n,p])``, one gate over summed logits.

Both maps come from x itself: ``m`` from the pools over pixels (channel MLP), ``l`` from the pools over
channels (KxK conv, optional BatchNorm). The gate is not separable into a per-channel times a
per-pixel factor, so the fused ``apply_gates`` / ``gate_grads`` passes cannot form it. This module
uses the backend's pool passes and ``input_grad`` and does the non-separable part with torch ops
(no new kernel pass, see docs/design.md §2.9).

Bytes per call, in units of |x| (fp32 x; bf16/fp16 x also materialise an fp32 copy of x):

* forward 8: ``pool_hw`` 1, ``pool_c`` 1, ``z = m + l`` written 1, ``G(z)`` in place 2, ``y = x * g`` 3.
  A dedicated apply pass would bring it to 3 (two pools, one read of x and one write of y);
* backward 18: ``z`` 1, ``G(z)`` in place 2, ``gy * g`` 3, ``gy * x`` 3, ``G'`` in place 2, times ``G'`` 3,
  two reductions 2, ``input_grad`` 2 (read gy*g, write gx; split ties also read x). A dedicated pass
  pair (gm and gl from one read of gy and x; gx from gy and x) would need 4;
* saved for backward: x plus the small tensors (the same as the fused channel->spatial op).
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import backends, ops
from . import small_steps as ss
from .passes import acc_dtype


def _gate_(name: str, z: Tensor) -> Tensor:
    """``G(z)``, overwriting z (one read and one write of a full-size tensor)."""
    if name == "sigmoid":
        return z.sigmoid_()
    if name == "hard_sigmoid":
        return z.add_(3.0).clamp_(0.0, 6.0).div_(6.0)
    if name == "keras_hard_sigmoid":
        return z.mul_(0.2).add_(0.5).clamp_(0.0, 1.0)
    raise ValueError(f"unknown gate {name!r}; expected one of {ss.GATES}")


def _slope_(name: str, g: Tensor) -> Tensor:
    """``G'(z)`` from ``g = G(z)``, overwriting g. The hard gates' slope is nonzero exactly where
    0 < g < 1, i.e. on the open interval of z (docs/design.md §2.9)."""
    if name == "sigmoid":
        return g.addcmul_(g, g, value=-1.0)  # g * (1 - g)
    slope = 1.0 / 6.0 if name == "hard_sigmoid" else 0.2
    return g.copy_(((g > 0) & (g < 1)).to(g.dtype)).mul_(slope)


def _logits(cw, pools, sw, shape, avg, max_hw, mean_c, max_c):
    n, _, h, w = shape
    m = ss.channel_logits(cw, pools, avg, max_hw)
    l, stats = ss.spatial_logits(sw, mean_c, max_c, (n, h, w))
    return m, l, stats


def _summed_logits(m: Tensor, l: Tensor, shape) -> Tensor:
    n, c, h, w = shape
    return m[:, :, None, None] + l.reshape(n, 1, h, w)


class _Parallel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, conv_w, conv_b, bn_w, bn_b, bn_mean, bn_var, cfg):
        kind, pools, gate, order, bn, bn_eps, ties, backend = cfg
        passes = backends.passes_for(backend)
        x = ops.dense(x)
        acc = acc_dtype(x.dtype)
        cw = ss.ChannelWeights.of(kind, w1, b1, w2, b2, acc)
        sw = ss.SpatialWeights.of(conv_w, conv_b, order, bn, bn_w, bn_b, bn_mean, bn_var, bn_eps, acc)
        avg, max_hw, argmax_hw, count_hw = passes.pool_hw(x)
        mean_c, max_c, argmax_c, count_c = passes.pool_c(x, None)
        m, l, stats = _logits(cw, pools, sw, x.shape, avg, max_hw, mean_c, max_c)
        g = _gate_(gate, _summed_logits(m, l, x.shape))
        y = (x.to(acc) * g).to(x.dtype)
        del g
        ctx.cfg = cfg
        ctx.save_for_backward(x, w1, b1, w2, b2, conv_w, conv_b, bn_w, bn_b, bn_mean, bn_var,
                              avg, max_hw, argmax_hw, count_hw, mean_c, max_c, argmax_c, count_c, m, l)
        ctx.mark_non_differentiable(stats)
        return y, stats

    @staticmethod
    def backward(ctx, gy, _g_stats):
        kind, pools, gate, order, bn, bn_eps, ties, backend = ctx.cfg
        (x, w1, b1, w2, b2, conv_w, conv_b, bn_w, bn_b, bn_mean, bn_var,
         avg, max_hw, argmax_hw, count_hw, mean_c, max_c, argmax_c, count_c, m, l) = ctx.saved_tensors
        passes = backends.passes_for(backend)
        n, c, h, w = x.shape
        acc = acc_dtype(x.dtype)
        split = ties == "split"
        gy = gy.contiguous(memory_format=ops.memory_format(x))
        g = _gate_(gate, _summed_logits(m, l, x.shape))
        gy_acc = gy.to(acc)
        gy_direct = (gy_acc * g).to(gy.dtype)  # the gradient through the gate's multiplicand
        gz = gy_acc * x.to(acc)
        gz.mul_(_slope_(gate, g))
        del g
        gm, gl = gz.sum(dim=(2, 3)), gz.sum(dim=1).reshape(n, h * w)
        del gz

        # the small steps again, under autograd, from the saved pools: gradients of weights and pools
        weights = [w1, b1, w2, b2, conv_w, conv_b, bn_w, bn_b]
        leaves = [t.detach().requires_grad_() if t is not None else None for t in weights]
        pooled = [t.detach().requires_grad_() for t in (avg, max_hw, mean_c, max_c)]
        with torch.enable_grad():
            cw = ss.ChannelWeights.of(kind, *leaves[:4], acc)
            sw = ss.SpatialWeights.of(leaves[4], leaves[5], order, bn, leaves[6], leaves[7], bn_mean, bn_var,
                                      bn_eps, acc)
            m2, l2, _ = _logits(cw, pools, sw, x.shape, *pooled)
            inputs = [t for t in leaves + pooled if t is not None]
            grads = torch.autograd.grad((m2, l2), inputs, (gm, gl), allow_unused=True)
        got = dict(zip(map(id, inputs), grads))

        def grad_of(t):
            if t is None:
                return None
            gr = got[id(t)]
            return torch.zeros_like(t) if gr is None else gr

        g_avg, g_max_hw, g_mean_c, g_max_c = (grad_of(t) for t in pooled)
        gx = passes.input_grad(
            gy_direct, x if split else None, None, None,
            g_mean_c / c, g_max_c / count_c if split else g_max_c, argmax_c, max_c,
            g_avg / (h * w), g_max_hw / count_hw if split else g_max_hw, argmax_hw, max_hw, split,
        )
        wgrads = [grad_of(t) for t in leaves]
        return (gx, *wgrads, None, None, None)


def parallel_attention(x, *, w1, b1=None, w2=None, b2=None, channel_kind="mlp", channel_pools="avg+max",
                       conv_weight, conv_bias=None, spatial_order="mean_max", gate="sigmoid", bn_weight=None,
                       bn_bias=None, bn_running_mean=None, bn_running_var=None, bn_training=None, bn_eps=1e-5,
                       ties="index", backend=None):
    """``(y, bn_batch_stats)`` of the parallel arrangement, with the argument conventions of
    ``cbam_fused.ops.attention``, checked as it checks them."""
    if w1 is None or conv_weight is None:
        raise ValueError("the parallel arrangement needs both a channel map (w1) and a spatial map (conv_weight)")
    bn = "none" if bn_training is None else ("train" if bn_training else "eval")
    name = ops.resolve_backend(backend, x)
    if not torch.compiler.is_compiling() and backends.under_functorch_autodiff():  # _Parallel has no functorch rules
        raise RuntimeError("the parallel arrangement does not support torch.func.grad, vjp, jacrev, jvp, jacfwd or "
                           "hessian (with any backend); loop over the samples with ordinary autograd instead")
    ops.check_inputs(x, w1, b1, w2, b2, conv_weight, conv_bias, bn_weight, bn_bias, bn_running_mean, bn_running_var,
                     channel_kind, channel_pools, gate, spatial_order, gate, bn, float(bn_eps), ties, name)
    cfg = (channel_kind, channel_pools, gate, spatial_order, bn, float(bn_eps), ties, name)
    y, stats = _Parallel.apply(x, w1, b1, w2, b2, conv_weight, conv_bias, bn_weight, bn_bias,
                               bn_running_mean, bn_running_var, cfg)
    return y, (stats if bn == "train" else None)
