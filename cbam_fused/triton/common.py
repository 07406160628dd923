"""Helpers shared by the Triton passes: tiling constants, autotune configs, strided offsets, sums, max pooling.

Every pass works on tiles of ``[BLOCK_C, BLOCK_P]`` elements of one sample. The tiling that sets a
reduction's summation order is fixed here, never autotuned: ``BLOCK_P`` (the pixels of a tile and so
the partials of the reductions over pixels), ``STEP_C`` (the channels one step of a reduction over
channels adds) and the channel split of those reductions (``channel_split``, from the shape alone).
Inside a tile, sums are pairwise trees built from ``tl.split`` (``tree_sum``), which do not depend on
how the compiler lays the tile out over threads. The autotuned values (``BLOCK_C`` where channels are
not reduced, the warp count) therefore change no result bit. Under ``TRITON_INTERPRET=1`` there is
exactly one config (the interpreter rejects several) and the blocks are small, so that small test
shapes still spread every reduction over several programs.
"""
import dataclasses
import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@dataclasses.dataclass(frozen=True)
class Tiling:
    """The fixed tiling of the passes (host constants, never autotuned)."""

    block_p: int  # pixels per tile
    step_c: int  # channels per step of a reduction over channels: one [step_c, block_p] tile, a tree sum
    # the reductions over pixels walk up to this many pixel tiles per program, which keeps their
    # partial results (one per program) at a small fraction of |x|
    tiles_per_program: int
    fold_block: int  # partials folded per step of the fold loop
    # A reduction over channels is split over several programs per pixel tile when the batch times
    # the pixel tiles gives fewer programs than this. A constant, not the device's SM count, so that
    # results do not depend on the device. Each program keeps at least min_steps steps of channels.
    target_programs: int
    min_steps: int


# two programs per SM of a 132-SM GPU (H100, H200)
GPU_TILING = Tiling(block_p=64, step_c=16, tiles_per_program=8, fold_block=16, target_programs=264, min_steps=2)
# small blocks, so that the test shapes spread every reduction over several programs
INTERPRET_TILING = Tiling(block_p=16, step_c=8, tiles_per_program=2, fold_block=4, target_programs=24, min_steps=2)
TILING = INTERPRET_TILING if INTERPRET else GPU_TILING
BLOCK_P = TILING.block_p
STEP_C = TILING.step_c
TILES_PER_PROGRAM = TILING.tiles_per_program
FOLD_BLOCK = TILING.fold_block
INT32_MAX = tl.constexpr(2**31 - 1)

# what the autotuner may choose on a GPU; the interpreter gets INTERPRET_CONFIG only
GPU_BLOCK_C = (16, 32, 64)
GPU_WARPS = (2, 4, 8)
INTERPRET_CONFIG = triton.Config({"BLOCK_C": 16}, num_warps=1)


def gpu_configs(block_c: bool = True):
    """Every config the autotuner may choose on a GPU: BLOCK_C x warps, or the warps alone for the
    kernels whose channel step is the fixed STEP_C."""
    if not block_c:
        return [triton.Config({}, num_warps=w) for w in GPU_WARPS]
    return [triton.Config({"BLOCK_C": bc}, num_warps=w) for bc in GPU_BLOCK_C for w in GPU_WARPS]


def autotune_configs(block_c: bool = True):
    """``gpu_configs``, or a single small config under the interpreter."""
    if INTERPRET:
        return [INTERPRET_CONFIG] if block_c else [triton.Config({}, num_warps=1)]
    return gpu_configs(block_c)


# autotune key: the sizes plus x's channel stride, which tells NCHW from channels_last (input_grad,
# which may not read x, keys on gy's and gx's)
AUTOTUNE_KEY = ["C", "P", "stride_xc"]


def num_pixel_tiles(pixels: int, tiling: Tiling = TILING) -> int:
    return triton.cdiv(pixels, tiling.block_p)


def num_pixel_chunks(pixels: int, tiling: Tiling = TILING) -> int:
    """Programs along the pixels of a reduction over pixels (each walks up to tiles_per_program tiles)."""
    return triton.cdiv(pixels, tiling.block_p * tiling.tiles_per_program)


def channel_split(n: int, c: int, pixels: int, tiling: Tiling = TILING):
    """``(chunk, splits)`` of a reduction over channels: each program reduces ``chunk`` channels (a
    multiple of step_c) of one pixel tile, and ``splits`` programs share a tile. From the shape only."""
    steps = triton.cdiv(c, tiling.step_c)
    want = triton.cdiv(tiling.target_programs, n * num_pixel_tiles(pixels, tiling))
    chunk_steps = steps if want <= 1 else min(steps, max(tiling.min_steps, steps // want))
    return chunk_steps * tiling.step_c, triton.cdiv(steps, chunk_steps)


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
def tree_sum(v):
    """Sum of a 2-D ``v`` along its last axis (a power of two) as a pairwise tree in index order:
    ((v0+v1)+(v2+v3))+... Made of elementwise adds, so the order does not depend on the layout."""
    for _ in tl.static_range(12):  # up to 4096 columns
        if v.shape[1] > 1:
            lo, hi = tl.split(tl.reshape(v, [v.shape[0], v.shape[1] // 2, 2]))
            v = lo + hi
    return tl.reshape(v, [v.shape[0]])


@triton.jit
def max_of(v, valid, AXIS: tl.constexpr):
    """``(max, has_nan)`` of the ``valid`` entries along AXIS; NaN wins the max (a canonical NaN).
    A zero maximum is +0 (-0 + 0 = +0): which zero a max returns would depend on the reduction's order."""
    is_nan = v != v
    has_nan = tl.max(tl.where(valid & is_nan, 1, 0), axis=AXIS) > 0
    finite_max = tl.max(tl.where(valid & ~is_nan, v, float("-inf")), axis=AXIS) + 0.0
    return tl.where(has_nan, float("nan"), finite_max), has_nan


@triton.jit
def reduce_max(v, valid, index, weight, AXIS: tl.constexpr):
    """Max of ``v`` over the ``valid`` entries along AXIS, its first ``index`` and the summed ``weight`` of
    the entries equal to it. NaN wins the max; then the first NaN is the argmax and the count is 1.

    With weight 1 this pools raw values; with partial maxima, their argmax and counts it merges partials.
    Rows with no valid entry give (-inf, INT32_MAX, 0).
    """
    mx, has_nan = max_of(v, valid, AXIS)
    is_nan = v != v
    hit = valid & tl.where(tl.expand_dims(has_nan, AXIS), is_nan, v == tl.expand_dims(mx, AXIS))
    first = tl.min(tl.where(hit, index, INT32_MAX), axis=AXIS)
    count = tl.sum(tl.where(hit, weight, 0), axis=AXIS)
    return mx, first, tl.where(has_nan, 1, count)


@triton.jit
def merge_max(run_max, run_idx, run_count, max_, idx, count):
    """Fold the max of a later block into a running (max, first index, count); run_count 0 means empty."""
    run_nan = run_max != run_max
    take = (run_count == 0) | ((max_ != max_) & ~run_nan) | (max_ > run_max)
    same = ~take & (max_ == run_max)
    return (tl.where(take, max_, run_max), tl.where(take, idx, run_idx),
            tl.where(take, count, tl.where(same, run_count + count, run_count)))


@triton.jit
def merge_max_only(run_max, max_):
    """``merge_max`` without positions and counts: the same maximum (a running -inf stands for empty)."""
    take = ((max_ != max_) & (run_max == run_max)) | (max_ > run_max)
    return tl.where(take, max_, run_max)
