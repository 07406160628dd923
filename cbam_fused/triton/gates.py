"""Elementwise passes that read and write full-size tensors: ``apply_gates`` and ``input_grad``."""
import torch
import triton
import triton.language as tl
from .._compat import wrap_triton

from .common import AUTOTUNE_KEY, BLOCK_P, autotune_configs, flat_strides, memory_format, num_pixel_tiles, \
    tile_offsets


def _tile_grid(n, c, p):
    tiles = num_pixel_tiles(p)
    return lambda meta: (tiles, triton.cdiv(c, meta["BLOCK_C"]), n)


@triton.autotune(configs=autotune_configs(), key=AUTOTUNE_KEY)
@triton.jit
def _apply_gates_kernel(x_ptr, a_ptr, s_ptr, y_ptr, C, P,
                        stride_xn, stride_xc, stride_xp, stride_yn, stride_yc, stride_yp,
                        HAS_A: tl.constexpr, HAS_S: tl.constexpr, IS_FP64: tl.constexpr,
                        BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    tile, cb, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    acc = tl.float64 if IS_FP64 else tl.float32
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    p = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    row, col = c < C, p < P
    valid = row[:, None] & col[None, :]
    v = tl.load(x_ptr + tile_offsets(n, c, p, stride_xn, stride_xc, stride_xp), mask=valid, other=0).to(acc)
    if HAS_A:
        v = v * tl.load(a_ptr + n.to(tl.int64) * C + c, mask=row, other=0)[:, None]
    if HAS_S:
        v = v * tl.load(s_ptr + n.to(tl.int64) * P + p, mask=col, other=0)[None, :]
    tl.store(y_ptr + tile_offsets(n, c, p, stride_yn, stride_yc, stride_yp),
             v.to(y_ptr.dtype.element_ty), mask=valid)


def apply_gates(x, a, s, acc: torch.dtype):
    x, sn, sc, sp = flat_strides(x)
    n, c, h, w = x.shape
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=memory_format(x))
    _, yn, yc, yp = flat_strides(y)
    wrap_triton(_apply_gates_kernel)[_tile_grid(n, c, h * w)](
        x, a if a is not None else x, s if s is not None else x, y, c, h * w, sn, sc, sp, yn, yc, yp,
        HAS_A=a is not None, HAS_S=s is not None, IS_FP64=acc == torch.float64, BLOCK_P=BLOCK_P)
    return y


@triton.autotune(configs=autotune_configs(), key=["C", "P", "stride_gc", "stride_oc"])
@triton.jit
def _input_grad_kernel(gy_ptr, x_ptr, a_ptr, s_ptr,
                       u_c_ptr, v_c_ptr, argmax_c_ptr, max_c_ptr,
                       u_hw_ptr, v_hw_ptr, argmax_hw_ptr, max_hw_ptr,
                       gx_ptr, C, P,
                       stride_gn, stride_gc, stride_gp, stride_xn, stride_xc, stride_xp,
                       stride_on, stride_oc, stride_op,
                       HAS_A: tl.constexpr, HAS_S: tl.constexpr, POOL_C: tl.constexpr, POOL_HW: tl.constexpr,
                       SPLIT: tl.constexpr, IS_FP64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """gx = A*(gy*S + u_c[p] + Tc*v_c[p]) + u_hw[c] + Thw*v_hw[c]; POOL_C / POOL_HW switch the two groups."""
    tile, cb, n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    acc = tl.float64 if IS_FP64 else tl.float32
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    p = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    row, col = c < C, p < P
    valid = row[:, None] & col[None, :]
    chan = n.to(tl.int64) * C + c
    pix = n.to(tl.int64) * P + p
    g = tl.load(gy_ptr + tile_offsets(n, c, p, stride_gn, stride_gc, stride_gp), mask=valid, other=0).to(acc)
    xv = g  # x is read only for split-style ties
    if SPLIT:
        xv = tl.load(x_ptr + tile_offsets(n, c, p, stride_xn, stride_xc, stride_xp), mask=valid, other=0).to(acc)
    a = tl.full([BLOCK_C], 1, dtype=acc)
    if HAS_A:
        a = tl.load(a_ptr + chan, mask=row, other=0)
    if HAS_S:
        g = g * tl.load(s_ptr + pix, mask=col, other=0)[None, :]
    if POOL_C:
        if SPLIT:
            pooled = xv
            if HAS_A:
                pooled = xv * a[:, None]
            tie_c = pooled == tl.load(max_c_ptr + pix, mask=col, other=0)[None, :]
        else:
            tie_c = c[:, None] == tl.load(argmax_c_ptr + pix, mask=col, other=-1)[None, :]
        g = g + tl.load(u_c_ptr + pix, mask=col, other=0)[None, :] \
            + tie_c.to(acc) * tl.load(v_c_ptr + pix, mask=col, other=0)[None, :]
    if HAS_A:
        g = g * a[:, None]
    if POOL_HW:
        if SPLIT:
            tie_hw = xv == tl.load(max_hw_ptr + chan, mask=row, other=0)[:, None]
        else:
            tie_hw = p[None, :] == tl.load(argmax_hw_ptr + chan, mask=row, other=-1)[:, None]
        g = g + tl.load(u_hw_ptr + chan, mask=row, other=0)[:, None] \
            + tie_hw.to(acc) * tl.load(v_hw_ptr + chan, mask=row, other=0)[:, None]
    tl.store(gx_ptr + tile_offsets(n, c, p, stride_on, stride_oc, stride_op),
             g.to(gx_ptr.dtype.element_ty), mask=valid)


def input_grad(gy, x, a, s, u_c, v_c, argmax_c, max_c, u_hw, v_hw, argmax_hw, max_hw, split: bool,
               acc: torch.dtype):
    gy, gn, gc, gp = flat_strides(gy)
    n, c, h, w = gy.shape
    sn = sc = sp = 0
    if split:
        x, sn, sc, sp = flat_strides(x)
    gx = torch.empty(gy.shape, dtype=gy.dtype, device=gy.device, memory_format=memory_format(gy))
    _, on, oc, op = flat_strides(gx)

    def ptr(t):  # absent tensors are never read (constexpr flags); gy stands in for their pointer
        return t if t is not None else gy

    wrap_triton(_input_grad_kernel)[_tile_grid(n, c, h * w)](
        gy, ptr(x if split else None), ptr(a), ptr(s), ptr(u_c), ptr(v_c), ptr(argmax_c), ptr(max_c),
        ptr(u_hw), ptr(v_hw), ptr(argmax_hw), ptr(max_hw), gx, c, h * w,
        gn, gc, gp, sn, sc, sp, on, oc, op,
        HAS_A=a is not None, HAS_S=s is not None, POOL_C=u_c is not None, POOL_HW=u_hw is not None,
        SPLIT=split, IS_FP64=acc == torch.float64, BLOCK_P=BLOCK_P)
    return gx


# the autotuned kernel of each pass of this module (tests pin each config the autotuner may choose)
AUTOTUNED = {"apply_gates": _apply_gates_kernel, "input_grad": _input_grad_kernel}
