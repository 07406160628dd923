"""Helpers shared by the Triton passes: tiling constants, autotune configs, strided offsets, max pooling.

Every pass works on tiles of ``[BLOCK_C, BLOCK_P]`` elements of one sample. ``BLOCK_P`` is fixed on
the host because it sizes the per-tile partial results of the reductions over pixels; ``BLOCK_C``
and the warp count are autotuned on GPUs. Under ``TRITON_INTERPRET=1`` there is exactly one config
(the interpreter rejects several) with small blocks, so that small test shapes still spread every
reduction over several programs.
"""
import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

BLOCK_P = 16 if INTERPRET else 64
# the reductions over pixels walk this many pixel tiles per program, which keeps their partial
# results (one per program) at a small fraction of |x|
TILES_PER_PROGRAM = 2 if INTERPRET else 8
# partials folded per step of the fold loop
FOLD_BLOCK = 4 if INTERPRET else 16
INT32_MAX = tl.constexpr(2**31 - 1)


def block_c_configs(block_cs=(16, 32, 64), warps=(2, 4, 8)):
    """Autotune configs over BLOCK_C and num_warps; a single small one under the interpreter."""
    if INTERPRET:
        return [triton.Config({"BLOCK_C": 16}, num_warps=1)]
    return [triton.Config({"BLOCK_C": bc}, num_warps=w) for bc in block_cs for w in warps]


# autotune key: the sizes plus x's channel stride, which tells NCHW from channels_last (input_grad,
# which may not read x, keys on gy's and gx's)
AUTOTUNE_KEY = ["C", "P", "stride_xc"]


def num_pixel_tiles(pixels: int) -> int:
    return triton.cdiv(pixels, BLOCK_P)


def num_pixel_chunks(pixels: int) -> int:
    """Programs along the pixels of a reduction over pixels (each walks TILES_PER_PROGRAM tiles)."""
    return triton.cdiv(pixels, BLOCK_P * TILES_PER_PROGRAM)


def pixel_stride(t: torch.Tensor):
    """Stride of the flattened pixel index p = h*W + w, or None if H and W do not flatten."""
    _, _, h, w = t.shape
    if w == 1:
        return t.stride(2) if h > 1 else 1
    if h > 1 and t.stride(2) != w * t.stride(3):
        return None
    return t.stride(3)


def flat_strides(t: torch.Tensor):
    """``(t', stride_n, stride_c, stride_p)`` with t' = t, or t made NCHW-contiguous if its pixels do not flatten."""
    sp = pixel_stride(t)
    if sp is None:
        t = t.contiguous()
        sp = pixel_stride(t)
    return t, t.stride(0), t.stride(1), sp


def memory_format(t: torch.Tensor) -> torch.memory_format:
    """The layout the contract asks for outputs: channels_last only if t is that and not NCHW."""
    if not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


@triton.jit
def tile_offsets(n, c, p, stride_n, stride_c, stride_p):
    """int64 element offsets of the tile rows ``c`` x columns ``p`` of sample ``n``."""
    return (n.to(tl.int64) * stride_n + c.to(tl.int64)[:, None] * stride_c
            + p.to(tl.int64)[None, :] * stride_p)


@triton.jit
def reduce_max(v, valid, index, weight, AXIS: tl.constexpr):
    """Max of ``v`` over the ``valid`` entries along AXIS, its first ``index`` and the summed ``weight`` of
    the entries equal to it. NaN wins the max; then the first NaN is the argmax and the count is 1.

    With weight 1 this pools raw values; with partial maxima, their argmax and counts it merges partials.
    Rows with no valid entry give (-inf, INT32_MAX, 0).
    """
    is_nan = v != v
    has_nan = tl.max(tl.where(valid & is_nan, 1, 0), axis=AXIS) > 0
    finite_max = tl.max(tl.where(valid & ~is_nan, v, float("-inf")), axis=AXIS)
    hit = valid & tl.where(tl.expand_dims(has_nan, AXIS), is_nan, v == tl.expand_dims(finite_max, AXIS))
    first = tl.min(tl.where(hit, index, INT32_MAX), axis=AXIS)
    count = tl.sum(tl.where(hit, weight, 0), axis=AXIS)
    mx = tl.where(has_nan, float("nan"), finite_max)
    return mx, first, tl.where(has_nan, 1, count)


@triton.jit
def merge_max(run_max, run_idx, run_count, max_, idx, count):
    """Fold the max of a later block into a running (max, first index, count); run_count 0 means empty."""
    run_nan = run_max != run_max
    take = (run_count == 0) | ((max_ != max_) & ~run_nan) | (max_ > run_max)
    same = ~take & (max_ == run_max)
    return (tl.where(take, max_, run_max), tl.where(take, idx, run_idx),
            tl.where(take, count, tl.where(same, run_count + count, run_count)))
