"""Reductions over pixels, which feed the channel gate: ``pool_hw`` and ``pool_c_grad_a``.

One program handles ``BLOCK_C`` channels of a chunk of up to ``TILES_PER_PROGRAM`` pixel tiles (only
the tiles that hold pixels: at 7x7 one tile, not eight) and writes its partial result into a small
``[N, C, T]`` buffer (T = number of chunks); a second step folds the T partials. The partials are
|x| / (BLOCK_P * TILES_PER_PROGRAM) elements (1/512 on GPUs).
"""
import torch
import triton
import triton.language as tl
from .._compat import wrap_triton

from .common import (AUTOTUNE_KEY, BLOCK_P, FOLD_BLOCK, TILES_PER_PROGRAM, autotune_configs, flat_strides,
                     max_of, merge_max, merge_max_only, num_pixel_chunks, reduce_max, tile_offsets, tree_sum)


@triton.jit
def chunk_tiles(chunk, P, BLOCK_P: tl.constexpr, TILES_PER_PROGRAM: tl.constexpr):
    """Pixel tiles of ``chunk`` that hold at least one pixel (fully masked tiles are skipped)."""
    return tl.minimum(TILES_PER_PROGRAM, tl.cdiv(P - chunk * (TILES_PER_PROGRAM * BLOCK_P), BLOCK_P))


@triton.autotune(configs=autotune_configs(), key=AUTOTUNE_KEY)
@triton.jit
def _pool_hw_tiles(x_ptr, sum_ptr, max_ptr, idx_ptr, count_ptr, C, P, T,
                   stride_xn, stride_xc, stride_xp, TRACK: tl.constexpr, IS_FP64: tl.constexpr,
                   BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, TILES_PER_PROGRAM: tl.constexpr):
    """TRACK: also the first argmax and the count of maxima (idx_ptr and count_ptr are unused otherwise)."""
    chunk, cb, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    acc = tl.float64 if IS_FP64 else tl.float32
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    row = c < C
    run_sum = tl.zeros([BLOCK_C], dtype=acc)
    run_max = tl.full([BLOCK_C], float("-inf"), dtype=acc)
    run_idx = tl.zeros([BLOCK_C], dtype=tl.int32)
    run_count = tl.zeros([BLOCK_C], dtype=tl.int32)
    for i in range(chunk_tiles(chunk, P, BLOCK_P, TILES_PER_PROGRAM)):
        p = (chunk * TILES_PER_PROGRAM + i) * BLOCK_P + tl.arange(0, BLOCK_P)
        valid = row[:, None] & (p < P)[None, :]
        v = tl.load(x_ptr + tile_offsets(n, c, p, stride_xn, stride_xc, stride_xp), mask=valid, other=0).to(acc)
        run_sum += tree_sum(v)
        if TRACK:
            mx, idx, count = reduce_max(v, valid, p[None, :], 1, 1)
            run_max, run_idx, run_count = merge_max(run_max, run_idx, run_count, mx, idx, count)
        else:
            run_max = merge_max_only(run_max, max_of(v, valid, 1)[0])
    out = (n.to(tl.int64) * C + c) * T + chunk
    tl.store(sum_ptr + out, run_sum, mask=row)
    tl.store(max_ptr + out, run_max, mask=row)
    if TRACK:
        tl.store(idx_ptr + out, run_idx, mask=row)
        tl.store(count_ptr + out, run_count, mask=row)


@triton.jit
def _fold_pool_partials(sum_ptr, max_ptr, idx_ptr, count_ptr, avg_ptr, out_max_ptr, out_idx_ptr,
                        out_count_ptr, R, T, INNER, length, TRACK: tl.constexpr,
                        BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr):
    """Fold the T partials of each of the R outputs into mean (sum / length), max, first argmax, count.

    Output r's partial t is at (r // INNER) * T * INNER + t * INNER + r % INNER: [N, C, T] with
    INNER = 1 (pool_hw), [N, T, P] with INNER = P (pool_c). Folded in t order, by blocks of BLOCK_T.
    """
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rows = r < R
    r64 = r.to(tl.int64)
    base = (r64 // INNER) * T * INNER + r64 % INNER
    run_sum = tl.zeros([BLOCK_R], dtype=sum_ptr.dtype.element_ty)
    run_max = tl.full([BLOCK_R], float("-inf"), dtype=max_ptr.dtype.element_ty)
    run_idx = tl.zeros([BLOCK_R], dtype=tl.int32)
    run_count = tl.zeros([BLOCK_R], dtype=tl.int32)
    for t0 in range(0, T, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        valid = rows[:, None] & (t < T)[None, :]
        offs = base[:, None] + t.to(tl.int64)[None, :] * INNER
        run_sum += tree_sum(tl.load(sum_ptr + offs, mask=valid, other=0))
        if TRACK:
            mx, idx, count = reduce_max(tl.load(max_ptr + offs, mask=valid, other=0),
                                        valid, tl.load(idx_ptr + offs, mask=valid, other=0),
                                        tl.load(count_ptr + offs, mask=valid, other=0), 1)
            run_max, run_idx, run_count = merge_max(run_max, run_idx, run_count, mx, idx, count)
        else:
            run_max = merge_max_only(run_max, max_of(tl.load(max_ptr + offs, mask=valid, other=0), valid, 1)[0])
    tl.store(avg_ptr + r, run_sum / length, mask=rows)
    tl.store(out_max_ptr + r, run_max, mask=rows)
    if TRACK:
        tl.store(out_idx_ptr + r, run_idx, mask=rows)
        tl.store(out_count_ptr + r, run_count, mask=rows)


def fold_pool_partials(partial, shape, inner: int, length: int, track: bool):
    """The pooled ``(mean, max, argmax, count)`` of ``shape`` from the partials (sum, max, argmax,
    count) that ``_fold_pool_partials`` reads; argmax and count are None unless ``track``."""
    rows = shape[0] * shape[1]
    t = partial[0].numel() // rows
    out = [partial[0].new_empty(shape, dtype=partial[k].dtype) for k in range(4 if track else 2)]
    stand_in = out + [out[0]] * (4 - len(out))  # not written without TRACK
    block_r = 16
    wrap_triton(_fold_pool_partials)[(triton.cdiv(rows, block_r),)](
        *(partial if track else partial[:2] + [partial[0]] * 2), *stand_in, rows, t, inner, length,
        TRACK=track, BLOCK_R=block_r, BLOCK_T=FOLD_BLOCK)
    return tuple(out) + (None,) * (4 - len(out))


def _chunk_grid(n, c, chunks):
    return lambda meta: (chunks, triton.cdiv(c, meta["BLOCK_C"]), n)


def pool_hw(x: torch.Tensor, acc: torch.dtype, track: bool = True):
    x, sn, sc, sp = flat_strides(x)
    n, c, h, w = x.shape
    p, chunks = h * w, num_pixel_chunks(h * w)
    partial = [x.new_empty((n, c, chunks), dtype=dt) for dt in (acc, acc, torch.int32, torch.int32)[:4 if track else 2]]
    stand_in = partial + [partial[0]] * (4 - len(partial))  # not written without TRACK
    wrap_triton(_pool_hw_tiles)[_chunk_grid(n, c, chunks)](
        x, *stand_in, c, p, chunks, sn, sc, sp, TRACK=track, IS_FP64=acc == torch.float64, BLOCK_P=BLOCK_P,
        TILES_PER_PROGRAM=TILES_PER_PROGRAM)
    return fold_pool_partials(partial, (n, c), 1, p, track)


@triton.autotune(configs=autotune_configs(), key=AUTOTUNE_KEY)
@triton.jit
def _pool_c_grad_a_tiles(x_ptr, a_ptr, u_ptr, v_ptr, argmax_ptr, max_ptr, out_ptr, C, P, T,
                         stride_xn, stride_xc, stride_xp,
                         HAS_A: tl.constexpr, SPLIT: tl.constexpr, IS_FP64: tl.constexpr,
                         BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, TILES_PER_PROGRAM: tl.constexpr):
    chunk, cb, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    acc = tl.float64 if IS_FP64 else tl.float32
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    row = c < C
    a = tl.full([BLOCK_C], 1, dtype=acc)
    if HAS_A:
        a = tl.load(a_ptr + n.to(tl.int64) * C + c, mask=row, other=0)
    part = tl.zeros([BLOCK_C], dtype=acc)
    for i in range(chunk_tiles(chunk, P, BLOCK_P, TILES_PER_PROGRAM)):
        p = (chunk * TILES_PER_PROGRAM + i) * BLOCK_P + tl.arange(0, BLOCK_P)
        col = p < P
        valid = row[:, None] & col[None, :]
        xv = tl.load(x_ptr + tile_offsets(n, c, p, stride_xn, stride_xc, stride_xp), mask=valid,
                     other=0).to(acc)
        pix = n.to(tl.int64) * P + p
        u = tl.load(u_ptr + pix, mask=col, other=0)
        v = tl.load(v_ptr + pix, mask=col, other=0)
        if SPLIT:  # the pooled value x*a is recomputed exactly as in pool_c
            pooled = xv
            if HAS_A:
                pooled = xv * a[:, None]
            tie = pooled == tl.load(max_ptr + pix, mask=col, other=0)[None, :]
        else:
            tie = c[:, None] == tl.load(argmax_ptr + pix, mask=col, other=-1)[None, :]
        part += tree_sum(xv * (u[None, :] + tie.to(acc) * v[None, :]))
    tl.store(out_ptr + (n.to(tl.int64) * C + c) * T + chunk, part, mask=row)


def pool_c_grad_a(x, a, u, v, argmax, mx, split: bool, acc: torch.dtype):
    x, sn, sc, sp = flat_strides(x)
    n, c, h, w = x.shape
    chunks = num_pixel_chunks(h * w)
    partial = x.new_empty((n, c, chunks), dtype=acc)
    wrap_triton(_pool_c_grad_a_tiles)[_chunk_grid(n, c, chunks)](
        x, a if a is not None else x, u, v, argmax, mx, partial, c, h * w, chunks, sn, sc, sp,
        HAS_A=a is not None, SPLIT=split, IS_FP64=acc == torch.float64, BLOCK_P=BLOCK_P,
        TILES_PER_PROGRAM=TILES_PER_PROGRAM)
    return partial.sum(dim=2)


# the autotuned kernel of each pass of this module (tests pin each config the autotuner may choose)
AUTOTUNED = {"pool_hw": _pool_hw_tiles, "pool_c_grad_a": _pool_c_grad_a_tiles}
