"""Shared helpers of the pass-level tests: inputs, the pass set of a backend, and each pass's outputs
checked against the spec (``cbam_fused.passes.TorchPasses``, run on CPU copies of the same inputs).

What must match exactly and what within a tolerance follows from the contract (docs/design.md §4):

* max, argmax and count of a pool are comparisons of identical products: exact;
* ``apply_gates`` is two products in ``acc`` and one rounding: exact (see ``apply_gates_ulps``);
* sums (means, ``gate_grads``, ``pool_c_grad_a``) depend on the reduction order: within
  ``SUM_EPS`` units of ``acc`` rounding times the sum of the magnitudes of their terms, per element;
* ``input_grad`` is a few operations in ``acc`` (a GPU may contract them into FMAs) and one rounding
  to gy's dtype: ``ELEMENTWISE_EPS`` units of ``acc`` rounding, plus one of the output dtype, times
  the magnitude of its terms.

A tie operand is given as the orchestration gives it: the argmax for index-style ties, the maximum
for split-style ones, with the other slot holding what a pass must not read (NaN for the maximum,
the count for the argmax), so a pass that reads the wrong one fails.
"""
from __future__ import annotations

import os

import torch

from cbam_fused.passes import TorchPasses, acc_dtype

from .conftest import device_of, require_backend

SPEC = TorchPasses()
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
LAYOUTS = ["nchw", "channels_last"]
PASSES = ["pool_hw", "pool_c", "apply_gates", "gate_grads", "pool_c_grad_a", "input_grad"]
FORWARD = PASSES[:3]

SUM_EPS = 16
ELEMENTWISE_EPS = 8

SHAPES = {
    # awkward for any blocking
    "odd": (2, 37, 5, 7),  # no size a multiple of a vector width; rows of 35 or 37 elements
    "primes": (1, 17, 13, 11),
    "c1": (3, 1, 4, 5),  # one channel
    "c3": (2, 3, 5, 6),  # fewer channels than a vector or a warp
    "hw1": (3, 24, 1, 1),  # one pixel
    "h1": (2, 9, 1, 13),  # one row
    "7x7": (2, 64, 7, 7),  # the last stage of a ResNet
    "14x14": (2, 96, 14, 14),  # short rows: 196 pixels (NCHW rows of 392 bytes), 96 channels (channels_last)
    # shaped for one backend's blocking
    "aligned": (2, 32, 4, 8),  # CPU: whole vectors only
    "wide_c": (2, 300, 3, 5),  # CPU: more channels than one NHWC channel block
    "threads": (3, 40, 37, 41),  # CPU: many NHWC pixel chunks per sample
    # CPU: two NCHW pixel blocks (> 4096 pixels) and two channel groups (csrc/cpu/dispatch.h, reduce_tiles)
    "cpu_tiles": (2, 130, 65, 65),
    # CPU: the pools whose lanes are outputs (NCHW pool_c, channels_last pool_hw) take two samples
    # per item without ties at up to 4 vectors, given 2 samples per thread (csrc/cpu/kernels.h,
    # pool_lanes); an odd N leaves one alone
    "cpu_pairs": (5, 24, 7, 7),
    "multi_block": (1, 300, 17, 19),  # CUDA: > 256 pixels and > 256 channels, every reduction spans tiles
    "tiles": (2, 40, 7, 9),  # Triton (interpreter): 3 channel blocks x 4 pixel tiles (2 chunks of 2)
    "long": (1, 3, 17, 19),  # Triton: 21 pixel tiles, more partials than one fold block holds
}


def dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# ---------------------------------------------------------------------------------------------------
# inputs

def _plant_ties(x: torch.Tensor) -> None:
    n, c, h, w = x.shape
    first, last = 0, n - 1
    if h * w > 1:
        x[last, :, -1, -1] = x[last, :, -1, -1].abs() + 100  # the last pixel holds every channel's max
        x[last, c // 2, 0, :] = 200.0  # ties in the middle of a row (argmax at the row's start)
    if c > 1:
        x[first, 1] = 0.0  # dead channel: every pixel ties for the max over pixels
        x[last, :, h // 2, w // 2] = 0.5  # a pixel whose channels all tie
    if h * w > 1:
        ch = min(2, c - 1)
        x[first, ch, 0, 0] = x[first, ch].max()  # an exact duplicate of a channel's max, at pixel 0


def _plant_nan_inf(x: torch.Tensor) -> None:
    """NaN wins a max and the first NaN is the argmax; +-inf are ordinary values (needs N >= 2,
    C >= 40, H >= 6, W >= 7: the positions below cross the tile and block boundaries of every backend)."""
    n, c, h, w = x.shape
    assert n >= 2 and c >= 40 and h >= 6 and w >= 7, x.shape
    x[0, 3, 5, 6] = float("nan")  # two NaN in channel 3: the first (pixel w + 1) is the argmax
    x[0, 3, 1, 1] = float("nan")
    x[1, 30, 2, 2] = float("nan")  # two NaN in one pixel, in different channel blocks
    x[1, 2, 2, 2] = float("nan")
    x[0, 7, 2, 2] = float("inf")  # two channels tie at +inf for pixel (2, 2)
    x[0, 8, 2, 2] = float("inf")
    x[1, 4] = float("-inf")  # a channel that is -inf everywhere: argmax 0, count P
    x[1, :, 0, 3] = float("-inf")  # a pixel that is -inf in every channel


def make_x(shape, dtype, layout="nchw", seed=0, kind="randn", misaligned=False) -> torch.Tensor:
    """A full-size CPU tensor. ``kind``: "randn"; "ties" (randn with planted ties: a dead channel, an
    all-tied pixel, a duplicated maximum, ties along a row, maxima at the last pixel); "ints" (small
    integers, exact in every dtype: ties everywhere); "nan_inf" ("ties" plus planted NaN and +-inf).
    ``misaligned``: the data pointer one element past a 16-byte boundary, same strides."""
    g = torch.Generator().manual_seed(seed)
    if kind == "ints":
        v = torch.randint(-2, 3, shape, generator=g).to(torch.float64)
    else:
        v = torch.randn(shape, generator=g, dtype=torch.float64)
    if kind in ("ties", "nan_inf"):
        _plant_ties(v)
    if kind == "nan_inf":
        _plant_nan_inf(v)
    v = v.to(dtype)
    if layout == "channels_last":
        v = v.contiguous(memory_format=torch.channels_last)
    if not misaligned:
        return v
    buf = torch.empty(v.numel() + 1, dtype=dtype)
    x = buf[1:].as_strided(v.shape, v.stride())
    x.copy_(v)
    assert x.data_ptr() % 16 != 0
    return x


def small(n, m, dtype, seed, kind="randn") -> torch.Tensor:
    """A small ``[n, m]`` operand in ``acc_dtype(dtype)``. ``kind``: "randn"; "gate" (in [0.5, 1.5]);
    "coarse_gate" (multiples of 1/8 in [0.5, 1.5], so that products with equal x tie)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "coarse_gate":
        t = 0.5 + torch.randint(0, 9, (n, m), generator=g).to(torch.float64) / 8
    elif kind == "gate":
        t = torch.rand(n, m, generator=g, dtype=torch.float64) + 0.5
    else:
        t = torch.randn(n, m, generator=g, dtype=torch.float64)
    return t.to(acc_dtype(dtype))


class Inputs:
    """Every operand of the six passes for one x: gy, gates a (coarse, so products tie) and s, and the
    u/v vectors of the two pool gradients."""

    def __init__(self, shape, dtype, layout="nchw", kind="ties", misaligned=False, seed=0):
        self.x = make_x(shape, dtype, layout, seed, kind, misaligned)
        self.gy = make_x(shape, dtype, layout, seed + 1, "randn", misaligned)
        n, c, h, w = shape
        p = h * w
        self.a = small(n, c, dtype, seed + 2, "coarse_gate")
        self.s = small(n, p, dtype, seed + 3, "gate")
        self.u_c, self.v_c = small(n, p, dtype, seed + 4), small(n, p, dtype, seed + 5)
        self.u_hw, self.v_hw = small(n, c, dtype, seed + 6), small(n, c, dtype, seed + 7)


def tie(pool, split):
    """(argmax slot, max slot) of a pool's tie operand, as the orchestration passes it; the slot a
    pass must not read holds the count (split-style) or NaN (index-style)."""
    _, mx, argmax, count = pool
    return (count, mx) if split else (argmax, torch.full_like(mx, float("nan")))


# ---------------------------------------------------------------------------------------------------
# pass sets

class OnDevice:
    """A pass set on a GPU, fed and read back through CPU tensors (strides and the data pointer's
    offset from a 16-byte boundary kept), so that the checks and the spec stay on the CPU."""

    def __init__(self, passes, device):
        self.passes, self.device, self.name = passes, device, passes.name

    def _to(self, t):
        if not isinstance(t, torch.Tensor):
            return t
        extent = 1 + sum((k - 1) * st for k, st in zip(t.shape, t.stride())) if t.numel() else 0
        skew = t.data_ptr() % 16 // t.element_size()
        buf = torch.empty(extent + skew, dtype=t.dtype, device=self.device)
        return buf[skew:].as_strided(t.shape, t.stride()).copy_(t)

    def __getattr__(self, name):
        fn = getattr(self.passes, name)

        def call(*args):
            out = fn(*(self._to(a) for a in args))
            return tuple(o if o is None else o.cpu() for o in out) if isinstance(out, tuple) else out.cpu()

        return call


def pass_set(name: str, rows: int = 0):
    """The pass set of backend ``name`` (cpu, spec, cudaemu, triton, cuda) taking and returning CPU
    tensors; skips (fails under CI=true) where it cannot run. ``rows``: the emulator's reduction tile
    height (0: the launchers' choice)."""
    if name == "spec":
        return SPEC
    require_backend(name)
    if name in ("cpu", "cuda"):
        from cbam_fused.pass_ops import CppPasses

        passes = CppPasses(name)
    elif name == "cudaemu":
        from tests import cudaemu

        passes = cudaemu.EmuPasses(rows=rows)
    elif name == "triton":
        from cbam_fused.triton import TritonPasses

        passes = TritonPasses()
    else:
        raise ValueError(f"unknown pass set {name!r}")
    device = device_of(name)
    return passes if device == "cpu" else OnDevice(passes, device)


def interpreted(name: str) -> bool:
    return name == "triton" and os.environ.get("TRITON_INTERPRET") == "1"


def apply_gates_ulps(name: str, dtype: torch.dtype) -> int:
    """Units in the last place allowed in apply_gates: none, but the Triton interpreter converts
    fp32 to bf16 by truncation where GPUs round to nearest (measured with triton 3.8.0)."""
    return 1 if interpreted(name) and dtype == torch.bfloat16 else 0


# ---------------------------------------------------------------------------------------------------
# comparisons

def _eps(dtype):
    return torch.finfo(dtype).eps


def assert_within(got, want, atol, what, nonfinite_alike=False):
    """``|got - want| <= atol`` per element (``atol`` a tensor or a number), NaN where want has NaN,
    infinities equal; with ``nonfinite_alike``, any non-finite value where want has one."""
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    if not got.is_floating_point():
        bad = got != want
    else:  # 16-bit values are compared in fp32, where their difference is exact
        work = torch.promote_types(got.dtype, torch.float32)
        g, w = got.to(work), want.to(work)
        # a finite atol: a non-finite value (NaN or infinite difference) leaves the fast path
        atol = torch.as_tensor(atol, dtype=work).clamp(max=torch.finfo(work).max)
        if ((g - w).abs() <= atol).all():
            return
        bad = ~((g - w).abs() <= atol)
        both = ~torch.isfinite(g) & ~torch.isfinite(w)
        bad &= ~(both if nonfinite_alike else both & ((g == w) | (torch.isnan(g) & torch.isnan(w))))
    if bad.any():
        i = tuple(int(k) for k in bad.nonzero()[0])
        allowed = torch.as_tensor(atol).expand(got.shape)[i].item()
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.numel()} elements off; first at {i}: "
                             f"got {got[i].item()!r}, want {want[i].item()!r}, allowed {allowed:.3g}")


def assert_exact(got, want, what):
    assert_within(got, want, 0.0, what)


def assert_sums_close(got, want, magnitude, what, nonfinite_alike=False):
    """Sums in acc: ``SUM_EPS`` roundings of acc times the sum of their terms' magnitudes."""
    assert_within(got, want, SUM_EPS * _eps(want.dtype) * magnitude, what, nonfinite_alike)


def assert_layout_kept(out, like, what):
    strides = [(o, w) for o, w, size in zip(out.stride(), like.stride(), out.shape) if size > 1]
    assert all(o == w for o, w in strides), f"{what}: strides {out.stride()} != {like.stride()} (layout lost)"


def _flat_abs(t):
    n, c, h, w = t.shape
    return t.to(acc_dtype(t.dtype)).abs().reshape(n, c, h * w)


def check_pools(got, want, magnitude, what):
    """A pool's (mean, max, argmax, count): the last three exact, the mean a sum."""
    mean, mx, idx, count = got
    assert idx.dtype == torch.int32 and count.dtype == torch.int32, f"{what}: argmax/count not int32"
    assert_exact(mx, want[1], f"{what} max")
    assert_exact(idx, want[2], f"{what} argmax")
    assert_exact(count, want[3], f"{what} count")
    assert_sums_close(mean, want[0], magnitude, f"{what} mean")


def mean_abs(x, a=None, over_channels=False):
    """The magnitude of a pool's mean: the mean of ``|acc(x) * a|``."""
    v = _flat_abs(x) * (a[:, :, None] if a is not None else 1)
    return v.mean(dim=1 if over_channels else 2)


def check_pool_hw(passes, inp: Inputs, every_pattern=True):
    x = inp.x
    check_pools(passes.pool_hw(x), SPEC.pool_hw(x), mean_abs(x), "pool_hw")


def check_pool_c(passes, inp: Inputs, every_pattern=True):
    x = inp.x
    for a in (inp.a, None):
        check_pools(passes.pool_c(x, a), SPEC.pool_c(x, a), mean_abs(x, a, over_channels=True),
                    f"pool_c a={a is not None}")


# Operand patterns: those the orchestrations use come first (cbam_fused/attention_op.py, parallel.py);
# the rest are allowed by the contract and run where a launch is cheap (``every_pattern``).

# (a, s): both gates, a channel gate, a spatial gate; then neither
APPLY_GATES_PATTERNS = [(True, True), (True, False), (False, True)], [(False, False)]


def _patterns(patterns, every_pattern):
    used, others = patterns
    return used + others if every_pattern else used


def check_apply_gates(passes, inp: Inputs, every_pattern=True):
    x = inp.x
    ulps = apply_gates_ulps(passes.name, x.dtype)
    for has_a, has_s in _patterns(APPLY_GATES_PATTERNS, every_pattern):
        a, s = inp.a if has_a else None, inp.s if has_s else None
        got, want = passes.apply_gates(x, a, s), SPEC.apply_gates(x, a, s)
        what = f"apply_gates a={has_a} s={has_s}"
        assert_layout_kept(got, x, what)
        assert_within(got, want, ulps * _eps(x.dtype) * want.abs().float() if ulps else 0.0, what)


# (a, s, want_a, want_s): the whole block, a channel gate, a spatial gate, and no gates at all; then
# each output alone with and without its gate (ga reads s only, gs reads a only), the other present
GATE_GRADS_PATTERNS = [(True, True, True, True), (True, False, True, False), (False, True, False, True),
                       (False, False, True, True)], \
    [(True, True, True, False), (True, True, False, True), (False, False, True, False), (False, False, False, True)]


def check_gate_grads(passes, inp: Inputs, every_pattern=True):
    gy, x = inp.gy, inp.x
    for has_a, has_s, want_a, want_s in _patterns(GATE_GRADS_PATTERNS, every_pattern):
        a, s = inp.a if has_a else None, inp.s if has_s else None
        got = passes.gate_grads(gy, x, a, s, want_a, want_s)
        want = SPEC.gate_grads(gy, x, a, s, want_a, want_s)
        magnitude = SPEC.gate_grads(gy.abs(), x.abs(), a, s, want_a, want_s)
        for g_, w_, m_, out in zip(got, want, magnitude, ("ga", "gs")):
            assert_sums_close(g_, w_, m_, f"gate_grads {out} a={has_a} s={has_s} want={want_a, want_s}")


def check_pool_c_grad_a(passes, inp: Inputs, every_pattern=True):
    x, a, u, v = inp.x, inp.a, inp.u_c, inp.v_c
    magnitude = (_flat_abs(x) * (u.abs() + v.abs())[:, None, :]).sum(dim=2)  # each tie T <= 1
    pool = SPEC.pool_c(x, a)
    for split in (False, True):
        argmax, mx = tie(pool, split)
        # x * (u + T v) may be summed as x u + x T v: with x infinite, -inf against NaN
        assert_sums_close(passes.pool_c_grad_a(x, a, u, v, argmax, mx, split),
                          SPEC.pool_c_grad_a(x, a, u, v, argmax, mx, split), magnitude, f"pool_c_grad_a split={split}",
                          nonfinite_alike=True)


# (a, s, the pool over channels' group, the pool over pixels' group): the whole block, a channel gate,
# a spatial gate, the parallel arrangement (both pools, no gates); then a channel gate with a spatial
# gate's s, and a spatial gate with a channel gate's a
INPUT_GRAD_PATTERNS = {
    "cbam": (True, True, True, True),
    "channel_gate": (True, False, False, True),
    "spatial_gate": (False, True, True, False),
    "parallel": (False, False, True, True),
}, {
    "channel_gate_with_s": (True, True, False, True),
    "spatial_gate_with_a": (True, True, True, False),
}


def assert_input_grad_close(got, want, args, what):
    """An input_grad result for the operands ``args`` (input_grad's, in order): ``ELEMENTWISE_EPS``
    roundings of acc, and one of gy's dtype, at the magnitude of its terms."""
    gy, _, a, s, u_c, v_c, _, _, u_hw, v_hw, _, _, _ = args
    n, c, h, w = gy.shape
    acc = acc_dtype(gy.dtype)
    m = gy.to(acc).abs()  # in gy's layout, as got and want; each tie T <= 1
    if s is not None:
        m.mul_(s.view(n, 1, h, w))
    if u_c is not None:
        m.add_((u_c.abs() + v_c.abs()).view(n, 1, h, w))
    if a is not None:
        m.mul_(a.abs().view(n, c, 1, 1))
    if u_hw is not None:
        m.add_((u_hw.abs() + v_hw.abs()).view(n, c, 1, 1))
    # the two sides may round to either neighbour in gy's dtype
    rounding = _eps(gy.dtype) if gy.dtype != acc else 0.0
    assert_within(got, want, m.mul_(ELEMENTWISE_EPS * _eps(acc) + rounding), what)


def check_input_grad(passes, inp: Inputs, every_pattern=True):
    gy, x = inp.gy, inp.x
    pool_hw, pool_c = SPEC.pool_hw(x), {True: SPEC.pool_c(x, inp.a), False: SPEC.pool_c(x, None)}
    used, others = INPUT_GRAD_PATTERNS
    patterns = {**used, **others} if every_pattern else used
    for split in (False, True):
        for group, (has_a, has_s, c_on, hw_on) in patterns.items():
            a, s = inp.a if has_a else None, inp.s if has_s else None
            c_args = (inp.u_c, inp.v_c, *tie(pool_c[has_a], split)) if c_on else (None,) * 4
            hw_args = (inp.u_hw, inp.v_hw, *tie(pool_hw, split)) if hw_on else (None,) * 4
            args = (gy, x if split else None, a, s, *c_args, *hw_args, split)
            got, want = passes.input_grad(*args), SPEC.input_grad(*args)
            what = f"input_grad split={split} {group}"
            assert_layout_kept(got, gy, what)
            assert_input_grad_close(got, want, args, what)


CHECKS = {
    "pool_hw": check_pool_hw,
    "pool_c": check_pool_c,
    "apply_gates": check_apply_gates,
    "gate_grads": check_gate_grads,
    "pool_c_grad_a": check_pool_c_grad_a,
    "input_grad": check_input_grad,
}


def check_pass(passes, name: str, inp: Inputs, every_pattern=True) -> None:
    """Pass ``name`` of ``passes`` against the spec, with both tie styles and the patterns of optional
    operands that the orchestrations use (``every_pattern``: every pattern the contract allows)."""
    CHECKS[name](passes, inp, every_pattern)
