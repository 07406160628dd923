"""Reductions over channels, which feed the spatial gate: ``pool_c`` and ``gate_grads``.

A program owns a tile of ``BLOCK_P`` pixels of one sample and a chunk of its channels, which it walks
in steps of ``STEP_C``. When the batch times the pixel tiles gives few programs (small N, small
images), the channels are split into several chunks (``common.channel_split``, from the shape alone):
each program writes a partial per pixel into ``[N, splits, P]``, folded afterwards in chunk order;
with one chunk the program writes the result itself. ``gate_grads`` also reduces over pixels
(``ga``) in the same read of gy and x: each program writes that part per pixel tile into a small
``[N, C, T]`` buffer, summed afterwards.
"""
import torch
import triton
import triton.language as tl
from .._compat import wrap_triton

from .channel import fold_pool_partials
from .common import (AUTOTUNE_KEY, BLOCK_P, STEP_C, autotune_configs, channel_split, flat_strides, max_of,
                     merge_max, merge_max_only, num_pixel_tiles, reduce_max, tile_offsets, tree_sum)


@triton.autotune(configs=autotune_configs(block_c=False), key=AUTOTUNE_KEY)
@triton.jit
def _pool_c_kernel(x_ptr, a_ptr, sum_ptr, max_ptr, idx_ptr, count_ptr, C, P, CHUNK, length,
                   stride_xn, stride_xc, stride_xp,
                   HAS_A: tl.constexpr, TRACK: tl.constexpr, IS_FP64: tl.constexpr, STEP_C: tl.constexpr,
                   BLOCK_P: tl.constexpr):
    """Pools channels [split * CHUNK, (split + 1) * CHUNK) of a pixel tile into [N, splits, P] and
    stores sum / length (length = C with one chunk, then the output is the mean, else 1)."""
    tile, split, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    acc = tl.float64 if IS_FP64 else tl.float32
    p = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    col = p < P
    run_sum = tl.zeros([BLOCK_P], dtype=acc)
    run_max = tl.full([BLOCK_P], float("-inf"), dtype=acc)
    run_idx = tl.zeros([BLOCK_P], dtype=tl.int32)
    run_count = tl.zeros([BLOCK_P], dtype=tl.int32)
    c_end = tl.minimum(C, (split + 1) * CHUNK)
    for c0 in range(split * CHUNK, c_end, STEP_C):
        c = c0 + tl.arange(0, STEP_C)
        row = c < c_end
        valid = row[:, None] & col[None, :]
        v = tl.load(x_ptr + tile_offsets(n, c, p, stride_xn, stride_xc, stride_xp), mask=valid, other=0).to(acc)
        if HAS_A:
            v = v * tl.load(a_ptr + n.to(tl.int64) * C + c, mask=row, other=0)[:, None]
        run_sum += tree_sum(tl.trans(v))
        if TRACK:
            mx, idx, count = reduce_max(v, valid, c[:, None], 1, 0)
            run_max, run_idx, run_count = merge_max(run_max, run_idx, run_count, mx, idx, count)
        else:
            run_max = merge_max_only(run_max, max_of(v, valid, 0)[0])
    out = (n.to(tl.int64) * tl.num_programs(1) + split) * P + p
    tl.store(sum_ptr + out, run_sum / length, mask=col)
    tl.store(max_ptr + out, run_max, mask=col)
    if TRACK:
        tl.store(idx_ptr + out, run_idx, mask=col)
        tl.store(count_ptr + out, run_count, mask=col)


def pool_c(x: torch.Tensor, a, acc: torch.dtype, track: bool = True):
    x, sn, sc, sp = flat_strides(x)
    n, c, h, w = x.shape
    p = h * w
    chunk, splits = channel_split(n, c, p)
    kinds = (acc, acc, torch.int32, torch.int32)[:4 if track else 2]
    partial = [x.new_empty((n, splits, p), dtype=dt) for dt in kinds]
    stand_in = partial + [partial[0]] * (4 - len(partial))  # not written without TRACK
    wrap_triton(_pool_c_kernel)[(num_pixel_tiles(p), splits, n)](
        x, a if a is not None else x, *stand_in, c, p, chunk, c if splits == 1 else 1, sn, sc, sp,
        HAS_A=a is not None, TRACK=track, IS_FP64=acc == torch.float64, STEP_C=STEP_C, BLOCK_P=BLOCK_P)
    if splits == 1:
        return tuple(t.view(n, p) for t in partial) + (None,) * (4 - len(partial))
    return fold_pool_partials(partial, (n, p), p, c, track)


@triton.autotune(configs=autotune_configs(block_c=False), key=AUTOTUNE_KEY)
@triton.jit
def _gate_grads_kernel(gy_ptr, x_ptr, a_ptr, s_ptr, ga_part_ptr, gs_ptr, C, P, T, CHUNK,
                       stride_gn, stride_gc, stride_gp, stride_xn, stride_xc, stride_xp,
                       WANT_A: tl.constexpr, WANT_S: tl.constexpr, HAS_A: tl.constexpr, HAS_S: tl.constexpr,
                       IS_FP64: tl.constexpr, STEP_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """ga partials per pixel tile into [N, C, T]; gs over channels [split * CHUNK, ...) into [N, splits, P]."""
    tile, split, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    acc = tl.float64 if IS_FP64 else tl.float32
    p = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    col = p < P
    pix = n.to(tl.int64) * P + p
    s = tl.full([BLOCK_P], 1, dtype=acc)
    if HAS_S:
        s = tl.load(s_ptr + pix, mask=col, other=0)
    gs = tl.zeros([BLOCK_P], dtype=acc)
    c_end = tl.minimum(C, (split + 1) * CHUNK)
    for c0 in range(split * CHUNK, c_end, STEP_C):
        c = c0 + tl.arange(0, STEP_C)
        row = c < c_end
        valid = row[:, None] & col[None, :]
        gyx = (tl.load(gy_ptr + tile_offsets(n, c, p, stride_gn, stride_gc, stride_gp), mask=valid, other=0)
               .to(acc)
               * tl.load(x_ptr + tile_offsets(n, c, p, stride_xn, stride_xc, stride_xp), mask=valid, other=0)
               .to(acc))
        if WANT_S:
            if HAS_A:
                gs += tree_sum(tl.trans(gyx * tl.load(a_ptr + n.to(tl.int64) * C + c, mask=row, other=0)[:, None]))
            else:
                gs += tree_sum(tl.trans(gyx))
        if WANT_A:
            if HAS_S:
                ga = tree_sum(gyx * s[None, :])
            else:
                ga = tree_sum(gyx)
            tl.store(ga_part_ptr + (n.to(tl.int64) * C + c) * T + tile, ga, mask=row)
    if WANT_S:
        tl.store(gs_ptr + (n.to(tl.int64) * tl.num_programs(1) + split) * P + p, gs, mask=col)


def gate_grads(gy, x, a, s, want_a: bool, want_s: bool, acc: torch.dtype):
    x, sn, sc, sp = flat_strides(x)
    gy, gn, gc, gp = flat_strides(gy)
    n, c, h, w = x.shape
    p, tiles = h * w, num_pixel_tiles(h * w)
    chunk, splits = channel_split(n, c, p)
    ga_part = x.new_empty((n, c, tiles) if want_a else (0,), dtype=acc)
    gs_part = x.new_empty((n, splits, p) if want_s else (0,), dtype=acc)
    if want_a or want_s:
        wrap_triton(_gate_grads_kernel)[(tiles, splits, n)](
            gy, x, a if a is not None else x, s if s is not None else x, ga_part, gs_part, c, p, tiles, chunk,
            gn, gc, gp, sn, sc, sp, WANT_A=want_a, WANT_S=want_s, HAS_A=a is not None, HAS_S=s is not None,
            IS_FP64=acc == torch.float64, STEP_C=STEP_C, BLOCK_P=BLOCK_P)
    ga = ga_part.sum(dim=2) if want_a else x.new_empty(0, dtype=acc)
    if not want_s:
        gs = x.new_empty(0, dtype=acc)
    else:  # the chunks' partials in chunk order
        gs = gs_part.view(n, p) if splits == 1 else gs_part.sum(dim=1)
    return ga, gs


# the autotuned kernel of each pass of this module (tests pin each config the autotuner may choose)
AUTOTUNED = {"pool_c": _pool_c_kernel, "gate_grads": _gate_grads_kernel}
