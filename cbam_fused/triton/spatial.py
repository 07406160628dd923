"""Reductions over channels, which feed the spatial gate: ``pool_c`` and ``gate_grads``.

One program owns a tile of ``BLOCK_P`` pixels of one sample and walks over the channels in blocks of
``BLOCK_C``, so the reductions over channels finish inside the program. ``gate_grads`` also reduces
over pixels (``ga``) in the same read of gy and x: each program writes that part per pixel tile into
a small ``[N, C, T]`` buffer, summed afterwards.
"""
import torch
import triton
import triton.language as tl
from .._compat import wrap_triton

from .common import AUTOTUNE_KEY, BLOCK_P, block_c_configs, flat_strides, merge_max, num_pixel_tiles, \
    reduce_max, tile_offsets


@triton.autotune(configs=block_c_configs(), key=AUTOTUNE_KEY)
@triton.jit
def _pool_c_kernel(x_ptr, a_ptr, mean_ptr, max_ptr, idx_ptr, count_ptr, C, P,
                   stride_xn, stride_xc, stride_xp,
                   HAS_A: tl.constexpr, IS_FP64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    tile, n = tl.program_id(0), tl.program_id(1)
    acc = tl.float64 if IS_FP64 else tl.float32
    p = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    col = p < P
    run_sum = tl.zeros([BLOCK_P], dtype=acc)
    run_max = tl.full([BLOCK_P], float("-inf"), dtype=acc)
    run_idx = tl.zeros([BLOCK_P], dtype=tl.int32)
    run_count = tl.zeros([BLOCK_P], dtype=tl.int32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        row = c < C
        valid = row[:, None] & col[None, :]
        v = tl.load(x_ptr + tile_offsets(n, c, p, stride_xn, stride_xc, stride_xp), mask=valid, other=0).to(acc)
        if HAS_A:
            v = v * tl.load(a_ptr + n.to(tl.int64) * C + c, mask=row, other=0)[:, None]
        run_sum += tl.sum(v, axis=0)
        mx, idx, count = reduce_max(v, valid, c[:, None], 1, 0)
        run_max, run_idx, run_count = merge_max(run_max, run_idx, run_count, mx, idx, count)
    out = n.to(tl.int64) * P + p
    tl.store(mean_ptr + out, run_sum / C, mask=col)
    tl.store(max_ptr + out, run_max, mask=col)
    tl.store(idx_ptr + out, run_idx, mask=col)
    tl.store(count_ptr + out, run_count, mask=col)


def pool_c(x: torch.Tensor, a, acc: torch.dtype):
    x, sn, sc, sp = flat_strides(x)
    n, c, h, w = x.shape
    p = h * w
    out = [x.new_empty((n, p), dtype=dt) for dt in (acc, acc, torch.int32, torch.int32)]
    wrap_triton(_pool_c_kernel)[(num_pixel_tiles(p), n)](
        x, a if a is not None else x, *out, c, p, sn, sc, sp,
        HAS_A=a is not None, IS_FP64=acc == torch.float64, BLOCK_P=BLOCK_P)
    return tuple(out)


@triton.autotune(configs=block_c_configs(), key=AUTOTUNE_KEY)
@triton.jit
def _gate_grads_kernel(gy_ptr, x_ptr, a_ptr, s_ptr, ga_part_ptr, gs_ptr, C, P, T,
                       stride_gn, stride_gc, stride_gp, stride_xn, stride_xc, stride_xp,
                       WANT_A: tl.constexpr, WANT_S: tl.constexpr, HAS_A: tl.constexpr, HAS_S: tl.constexpr,
                       IS_FP64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    tile, n = tl.program_id(0), tl.program_id(1)
    acc = tl.float64 if IS_FP64 else tl.float32
    p = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    col = p < P
    pix = n.to(tl.int64) * P + p
    s = tl.full([BLOCK_P], 1, dtype=acc)
    if HAS_S:
        s = tl.load(s_ptr + pix, mask=col, other=0)
    gs = tl.zeros([BLOCK_P], dtype=acc)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        row = c < C
        valid = row[:, None] & col[None, :]
        gyx = (tl.load(gy_ptr + tile_offsets(n, c, p, stride_gn, stride_gc, stride_gp), mask=valid, other=0)
               .to(acc)
               * tl.load(x_ptr + tile_offsets(n, c, p, stride_xn, stride_xc, stride_xp), mask=valid, other=0)
               .to(acc))
        if WANT_S:
            if HAS_A:
                gs += tl.sum(gyx * tl.load(a_ptr + n.to(tl.int64) * C + c, mask=row, other=0)[:, None], axis=0)
            else:
                gs += tl.sum(gyx, axis=0)
        if WANT_A:
            if HAS_S:
                ga = tl.sum(gyx * s[None, :], axis=1)
            else:
                ga = tl.sum(gyx, axis=1)
            tl.store(ga_part_ptr + (n.to(tl.int64) * C + c) * T + tile, ga, mask=row)
    if WANT_S:
        tl.store(gs_ptr + pix, gs, mask=col)


def gate_grads(gy, x, a, s, want_a: bool, want_s: bool, acc: torch.dtype):
    x, sn, sc, sp = flat_strides(x)
    gy, gn, gc, gp = flat_strides(gy)
    n, c, h, w = x.shape
    p, tiles = h * w, num_pixel_tiles(h * w)
    ga_part = x.new_empty((n, c, tiles) if want_a else (0,), dtype=acc)
    gs = x.new_empty((n, p) if want_s else (0,), dtype=acc)
    if want_a or want_s:
        wrap_triton(_gate_grads_kernel)[(tiles, n)](
            gy, x, a if a is not None else x, s if s is not None else x, ga_part, gs, c, p, tiles,
            gn, gc, gp, sn, sc, sp, WANT_A=want_a, WANT_S=want_s, HAS_A=a is not None, HAS_S=s is not None,
            IS_FP64=acc == torch.float64, BLOCK_P=BLOCK_P)
    ga = ga_part.sum(dim=2) if want_a else x.new_empty(0, dtype=acc)
    return ga, gs
