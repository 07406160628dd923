"""The full-size passes as compiled ops (``torch.ops.cbam_fused.<pass>``, schemas in csrc/ops.cpp),
wrapped in the pass-set interface of ``cbam_fused.passes``, with their fake kernels."""
from __future__ import annotations

import torch

from .passes import acc_dtype

__all__ = ["CppPasses"]


class CppPasses:
    """The passes as C++ ops; the dispatcher picks the CPU or the CUDA kernels by x's device."""

    def __init__(self, name: str):
        self.name = name

    @staticmethod
    def pool_hw(x, ties=True):
        return _ties_or_none(torch.ops.cbam_fused.pool_hw(x, ties), ties)

    @staticmethod
    def pool_c(x, a, ties=True):
        return _ties_or_none(torch.ops.cbam_fused.pool_c(x, a, ties), ties)

    @staticmethod
    def apply_gates(x, a, s):
        return torch.ops.cbam_fused.apply_gates(x, a, s)

    @staticmethod
    def gate_grads(gy, x, a, s, want_a, want_s):
        return torch.ops.cbam_fused.gate_grads(gy, x, a, s, want_a, want_s)

    @staticmethod
    def pool_c_grad_a(x, a, u, v, argmax, mx, split):
        return torch.ops.cbam_fused.pool_c_grad_a(x, a, u, v, argmax, mx, split)

    @staticmethod
    def input_grad(gy, x, a, s, u_c, v_c, argmax_c, max_c, u_hw, v_hw, argmax_hw, max_hw, split):
        return torch.ops.cbam_fused.input_grad(
            gy, x, a, s, u_c, v_c, argmax_c, max_c, u_hw, v_hw, argmax_hw, max_hw, split
        )


def _ties_or_none(pools, ties):
    """The ops return empty argmax and count without ties; the pass-set interface says None."""
    return pools if ties else (pools[0], pools[1], None, None)


def _dense_like(x):
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return torch.empty_like(x)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def register_fakes() -> None:
    """Fake kernels of the pass ops (needs cbam_fused._C loaded)."""

    def small(x, per_channel, dtype=None):
        n, c, h, w = x.shape
        return x.new_empty((n, c) if per_channel else (n, h * w), dtype=dtype or acc_dtype(x.dtype))

    def pools(x, per_channel, ties):
        ints = (small(x, per_channel, torch.int32) if ties else x.new_empty(0, dtype=torch.int32) for _ in range(2))
        return (small(x, per_channel), small(x, per_channel), *ints)

    def none(x):
        return x.new_empty(0, dtype=acc_dtype(x.dtype))

    lib = "cbam_fused::"
    torch.library.register_fake(lib + "pool_hw")(lambda x, ties=True: pools(x, True, ties))
    torch.library.register_fake(lib + "pool_c")(lambda x, a, ties=True: pools(x, False, ties))
    torch.library.register_fake(lib + "apply_gates")(lambda x, a, s: _dense_like(x))
    torch.library.register_fake(lib + "gate_grads")(
        lambda gy, x, a, s, want_a, want_s: (small(x, True) if want_a else none(x),
                                             small(x, False) if want_s else none(x)))
    torch.library.register_fake(lib + "pool_c_grad_a")(lambda x, a, u, v, argmax, mx, split: small(x, True))
    torch.library.register_fake(lib + "input_grad")(lambda gy, *rest: _dense_like(gy))
    torch.library.register_fake(lib + "spatial_conv")(
        lambda in0, in1, weight, bias, h, w: in0.new_empty(in0.shape))
    torch.library.register_fake(lib + "spatial_conv_backward")(
        lambda grad_out, in0, in1, weight, has_bias, h, w: (
            in0.new_empty(in0.shape), in0.new_empty(in0.shape), weight.new_empty(weight.shape),
            weight.new_empty(1 if has_bias else 0)))
