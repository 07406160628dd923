"""Pass-level tests of the CUDA kernels run on the CPU emulator, against the pure-torch spec.

Every pass of ``cbam_fused.passes`` is compared with ``TorchPasses`` for every dtype and both layouts
on odd shapes, on shapes (and tile heights) that force several blocks per reduction, with misaligned
pointers (16-byte loads fall back to the scalar tail) and with planted ties, NaN and -inf. Run it in
each thread order as its own process: ``CUDACPU_ORDER=fwd|rev|rand pytest -m emulator``.
"""
import os
import subprocess

import pytest
import torch

from cbam_fused.passes import TorchPasses, acc_dtype

from .conftest import require_backend

pytestmark = pytest.mark.emulator

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
LAYOUTS = ["nchw", "channels_last"]
SHAPES = {
    "c_lt_32": (2, 3, 5, 6),
    "primes": (1, 17, 13, 11),
    "hw1": (3, 24, 1, 1),
    "c_not_vec": (2, 37, 3, 5),
    "h1": (2, 9, 1, 13),
    # default tiles: > 256 pixels and > 256 channels, so every reduction spans several blocks
    "multi_block": (1, 300, 17, 19),
}
SPEC = TorchPasses()


@pytest.fixture(scope="module")
def emu():
    require_backend("cudaemu")
    from tests import cudaemu

    return cudaemu


def make_x(shape, dtype, layout, seed=0, misaligned=False):
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    v = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    if layout == "channels_last":
        v = v.contiguous(memory_format=torch.channels_last)
    if not misaligned:
        return v.to(dtype)
    # same values and strides, data pointer one element past a 16-byte boundary
    buf = torch.empty(v.numel() + 1, dtype=dtype)
    x = buf[1:].as_strided(v.shape, v.stride())
    x.copy_(v)
    assert x.data_ptr() % 16 != 0
    return x


def small(shape, dtype, seed, positive=True):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(shape, generator=g, dtype=torch.float64) + 0.5 if positive else torch.randn(
        shape, generator=g, dtype=torch.float64)
    return t.to(acc_dtype(dtype))


def tol(dtype):
    return (1e-12, 1e-10) if dtype == torch.float64 else (1e-5, 1e-5)


def close(actual, expected, dtype, what):
    atol, rtol = tol(dtype)
    scale = max(1.0, expected.abs().max().item() if expected.numel() else 0.0)
    torch.testing.assert_close(actual, expected, atol=atol * scale, rtol=rtol, equal_nan=True, msg=lambda m: f"{what}: {m}")


def exact(actual, expected, what):
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    torch.testing.assert_close(actual, expected, atol=0, rtol=0, equal_nan=True, msg=lambda m: f"{what}: {m}")


def same_layout(u, v):
    return all(u.is_contiguous(memory_format=f) == v.is_contiguous(memory_format=f)
               for f in (torch.contiguous_format, torch.channels_last))


def check_pools(got, want, dtype, what):
    mean, mx, arg, cnt = got
    close(mean, want[0], dtype, f"{what} mean")
    exact(mx, want[1], f"{what} max")
    exact(arg, want[2], f"{what} argmax")
    exact(cnt, want[3], f"{what} count")


def run_all_passes(emu_passes, x, gy, dtype, what):
    """Every pass, with every combination of optional operands, vs the spec."""
    n, c, h, w = x.shape
    p = h * w
    a, s = small((n, c), dtype, 1), small((n, p), dtype, 2)
    check_pools(emu_passes.pool_hw(x), SPEC.pool_hw(x), dtype, f"{what} pool_hw")
    for aa in (a, None):
        check_pools(emu_passes.pool_c(x, aa), SPEC.pool_c(x, aa), dtype, f"{what} pool_c a={aa is not None}")
    for aa, ss in ((a, s), (a, None), (None, s), (None, None)):
        y = emu_passes.apply_gates(x, aa, ss)
        want = SPEC.apply_gates(x, aa, ss)
        assert same_layout(y, want), f"{what} apply_gates: layout not kept"
        exact(y, want, f"{what} apply_gates a={aa is not None} s={ss is not None}")
    for aa, ss, want_a, want_s in ((a, s, True, True), (a, s, True, False), (a, s, False, True),
                                   (None, None, True, True)):
        got, ref = emu_passes.gate_grads(gy, x, aa, ss, want_a, want_s), SPEC.gate_grads(gy, x, aa, ss, want_a, want_s)
        close(got[0], ref[0], dtype, f"{what} gate_grads ga")
        close(got[1], ref[1], dtype, f"{what} gate_grads gs")
    u, v = small((n, p), dtype, 3, positive=False), small((n, p), dtype, 4, positive=False)
    mean_c, max_c, arg_c, cnt_c = SPEC.pool_c(x, a)
    for split in (False, True):
        close(emu_passes.pool_c_grad_a(x, a, u, v, arg_c, max_c, split),
              SPEC.pool_c_grad_a(x, a, u, v, arg_c, max_c, split), dtype, f"{what} pool_c_grad_a split={split}")
    u_hw, v_hw = small((n, c), dtype, 5, positive=False), small((n, c), dtype, 6, positive=False)
    _, max_hw, arg_hw, _ = SPEC.pool_hw(x)
    for split in (False, True):
        for aa, ss, grp_c, grp_hw in ((a, s, True, True), (a, None, False, True), (None, s, True, False),
                                      (a, s, True, False)):
            args = (gy, x if split else None, aa, ss,
                    *((u, v, arg_c, max_c) if grp_c else (None,) * 4),
                    *((u_hw, v_hw, arg_hw, max_hw) if grp_hw else (None,) * 4), split)
            got, want = emu_passes.input_grad(*args), SPEC.input_grad(*args)
            assert same_layout(got, want), f"{what} input_grad: layout not kept"
            # the kernel rounds the same fp32 value to gy's dtype; allow one ulp of that dtype
            ulp = {torch.float16: 1e-3, torch.bfloat16: 8e-3}.get(dtype, tol(dtype)[1])
            torch.testing.assert_close(got.double(), want.double(), atol=ulp * 4, rtol=ulp,
                                       msg=lambda m: f"{what} input_grad split={split}: {m}")


@pytest.mark.parametrize("rows", [0, 8], ids=["default_tiles", "rows8"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_passes_match_spec(emu, shape_name, dtype, layout, rows):
    if rows and shape_name == "multi_block":
        pytest.skip("multi_block already spans several default tiles")
    shape = SHAPES[shape_name]
    x = make_x(shape, dtype, layout, seed=10)
    gy = make_x(shape, dtype, layout, seed=11)
    run_all_passes(emu.EmuPasses(rows=rows), x, gy, dtype, f"{shape_name}/{dtype}/{layout}")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_misaligned_pointers(emu, dtype, layout):
    shape = (2, 37, 5, 7)  # rows of 35 or 37 elements: most 16-byte chunks are misaligned too
    x = make_x(shape, dtype, layout, seed=20, misaligned=True)
    gy = make_x(shape, dtype, layout, seed=21, misaligned=True)
    run_all_passes(emu.EmuPasses(rows=8), x, gy, dtype, f"misaligned/{dtype}/{layout}")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_ties_nan_inf(emu, dtype, layout):
    shape = (2, 40, 6, 7)
    x = make_x(shape, dtype, layout, seed=30)
    x[0, 5] = 0                    # dead channel: every pixel ties
    x[1, :, 2, 3] = 0.5            # a pixel whose channels all tie
    x[0, 7, 1, 1] = float("nan")   # NaN wins the max, counted once
    x[0, 7, 4, 2] = float("nan")   # ... and the first NaN is the argmax
    x[1, 9] = float("-inf")        # a channel that is all -inf: every pixel is a maximum
    x[0, :, 5, 6] = x[0, :, 5, 6].abs() + 100  # a pixel that holds the max of every channel
    x[0, 30, 0, :] = 7             # ties in the middle of a row
    gy = make_x(shape, dtype, layout, seed=31)
    emu_passes = emu.EmuPasses(rows=8)
    for aa in (None, small((2, 40), dtype, 1)):
        check_pools(emu_passes.pool_c(x, aa), SPEC.pool_c(x, aa), dtype, "ties pool_c")
    check_pools(emu_passes.pool_hw(x), SPEC.pool_hw(x), dtype, "ties pool_hw")
    # the gradient passes on finite planted ties (NaN/inf make every gradient NaN)
    xf = x.clone()
    xf[0, 7, 1, 1] = xf[0, 7, 4, 2] = 0
    xf[1, 9] = -3
    run_all_passes(emu_passes, xf, gy, dtype, f"ties/{dtype}/{layout}")


def test_deterministic_across_runs(emu):
    x = make_x((2, 300, 17, 19), torch.float32, "channels_last", seed=40)
    gy = make_x((2, 300, 17, 19), torch.float32, "channels_last", seed=41)
    a, s = small((2, 300), torch.float32, 1), small((2, 323), torch.float32, 2)
    e = emu.EmuPasses()
    first = e.gate_grads(gy, x, a, s, True, True) + e.pool_hw(x) + e.pool_c(x, a)
    second = e.gate_grads(gy, x, a, s, True, True) + e.pool_hw(x) + e.pool_c(x, a)
    for u, v in zip(first, second):
        assert torch.equal(u, v)


def test_fp16_sum_does_not_saturate(emu):
    # 3136 pixels of 60000: an fp16 accumulator would overflow at 65504
    x = torch.full((1, 2, 56, 56), 60000.0, dtype=torch.float16)
    mean, mx, arg, cnt = emu.EmuPasses().pool_hw(x)
    assert torch.equal(mean, torch.full((1, 2), 60000.0))
    assert torch.equal(cnt, torch.full((1, 2), 3136, dtype=torch.int32))
    ga, gs = emu.EmuPasses().gate_grads(x, torch.ones_like(x), None, None, True, True)
    assert torch.equal(ga, torch.full((1, 2), 60000.0 * 3136))


def test_bad_input_is_rejected(emu):
    e = emu.EmuPasses()
    x = torch.randn(2, 4, 3, 5)
    with pytest.raises(ValueError, match="NCHW-contiguous or channels_last"):
        e.pool_hw(x[:, :, :, ::2])
    with pytest.raises(ValueError, match="a must be"):
        e.pool_c(x, torch.ones(2, 5))
    with pytest.raises(ValueError, match="split-style ties need x"):
        e.input_grad(x, None, None, None, None, None, None, None, None, None, None, None, True)


def test_asan_driver(emu, tmp_path):
    """Every launcher on odd and misaligned shapes under AddressSanitizer, checked by host loops."""
    driver = emu.ROOT / "tests" / "cudaemu" / "asan_driver.cu"
    try:
        exe = emu.build(("-fsanitize=address", "-g", "-O1", "-fno-strict-aliasing"), source=driver, shared=False,
                        tag="asan_driver")
    except RuntimeError as e:
        pytest.fail(f"the ASan driver did not build: {e}")
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0")
    proc = subprocess.run([str(exe)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"ASan driver failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    assert "asan_driver: all checks passed" in proc.stdout


# (n, c, hidden): C past the block's 256 threads, N and hidden past the kernels' chunk of 64, a 1x1x1
# MLP, no samples
MLP_SHAPES = {"small": (2, 16, 4), "c300": (3, 300, 5), "n70": (70, 8, 3), "h130": (2, 5, 130), "one": (1, 1, 1),
              "n0": (0, 6, 2)}
# (ATen's hardsigmoid backward scales fp64 by a float 1/6: clamp / 6 is the exact definition)
MLP_GATES = {"sigmoid": torch.sigmoid, "hard_sigmoid": lambda z: torch.clamp(z + 3.0, 0.0, 6.0) / 6.0,
             "keras_hard_sigmoid": lambda z: torch.clamp(z * 0.2 + 0.5, 0.0, 1.0)}


def mlp_reference(pooled, w1, b1, w2, b2, pools, gate):
    """m and a by plain autograd-able torch ops (the definition in csrc/pass_args.h)."""
    avg, mx = pooled[0], pooled[1]
    inputs = {"avg+max": [avg, mx], "avg": [avg], "max": [mx], "light": [(avg + mx) / 2]}[pools]
    m = sum(torch.nn.functional.linear(torch.relu(torch.nn.functional.linear(v, w1, b1)), w2, b2) for v in inputs)
    return m, MLP_GATES[gate](m)


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("gate", list(MLP_GATES))
@pytest.mark.parametrize("pools", ["avg+max", "avg", "max", "light"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("shape_name", list(MLP_SHAPES))
def test_channel_mlp_matches_torch(emu, shape_name, dtype, pools, gate, bias):
    """The CUDA MLP kernels vs autograd: m, a, and from ga the pools' gradient operands u = g_avg / P and
    v = g_max (/ count with split ties) and the weight gradients; bitwise the same on a second run."""
    n, c, r = MLP_SHAPES[shape_name]
    pixels = 7
    g = torch.Generator().manual_seed(n * 1000 + c * 10 + r)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    pooled, w1, w2 = rnd(2, n, c), rnd(r, c) * c ** -0.5 * 3, rnd(c, r) * r ** -0.5 * 3
    b1, b2 = (rnd(r), rnd(c)) if bias else (None, None)
    ga = rnd(n, c)
    count = torch.randint(1, 4, (n, c), generator=g, dtype=torch.int32)
    m, a = emu.channel_mlp(pooled, w1, b1, w2, b2, pools, gate)
    leaves = [t.detach().clone().requires_grad_() for t in (pooled, w1, w2)]
    bleaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (b1, b2)]
    m_ref, a_ref = mlp_reference(leaves[0], leaves[1], bleaves[0], leaves[2], bleaves[1], pools, gate)
    close(m, m_ref.detach(), dtype, "m")
    close(a, a_ref.detach(), dtype, "a")
    wanted = [t for t in leaves + bleaves if t is not None]
    grads = torch.autograd.grad(a_ref, wanted, ga, allow_unused=True, materialize_grads=True) if n else \
        [torch.zeros_like(t) for t in wanted]
    g_pooled, gw1_ref, gw2_ref = grads[:3]
    for cnt in (None, count):
        u, v, gw1, gb1, gw2, gb2 = emu.channel_mlp_grad(pooled, w1, b1, w2, b2, m, a, ga, cnt, pixels, pools, gate)
        close(u, g_pooled[0] / pixels, dtype, "u")
        close(v, g_pooled[1] / (1 if cnt is None else cnt), dtype, f"v count={cnt is not None}")
        close(gw1, gw1_ref, dtype, "gw1")
        close(gw2, gw2_ref, dtype, "gw2")
        if bias:
            close(gb1, grads[3], dtype, "gb1")
            close(gb2, grads[4], dtype, "gb2")
        again = emu.channel_mlp_grad(pooled, w1, b1, w2, b2, m, a, ga, cnt, pixels, pools, gate)
        for first, second in zip((u, v, gw1, gb1, gw2, gb2), again):
            assert first is None or torch.equal(first, second), "not bitwise the same on a second run"
    assert all(torch.equal(t, t2) for t, t2 in zip((m, a), emu.channel_mlp(pooled, w1, b1, w2, b2, pools, gate)))


def test_channel_mlp_rejects_bad_arguments(emu):
    lib = emu._load()
    # no pooled vector for N * C > 0, and a pools value out of range
    assert lib.cbam_emu_channel_mlp(2, 3, 1, 0, 0, 0, None, None, None, None, None, None, None) != 0
    x = torch.zeros(2, 2, 3)
    w1, w2, m = torch.zeros(1, 3), torch.zeros(3, 1), torch.zeros(2, 3)
    assert lib.cbam_emu_channel_mlp(2, 3, 1, 0, 9, 0, x.data_ptr(), w1.data_ptr(), None, w2.data_ptr(), None,
                                    m.data_ptr(), m.data_ptr()) != 0
