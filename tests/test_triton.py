"""The Triton passes vs the pass spec (TorchPasses), and the torch.compile path of the Triton backend.

Without a GPU the passes run under TRITON_INTERPRET=1 on CPU tensors (tests/conftest.py sets it),
where one small config is used (BLOCK_C = BLOCK_P = 16), so these shapes spread each reduction over
several programs. Two checks run in subprocesses with the interpreter off: every kernel variant
compiles to a cubin for sm_80, and torch.compile(fullgraph=True) of a CBAM module traces into the
Triton kernels (forward and backward graphs) without launching anything.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cbam_fused as cf
from cbam_fused import ops
from cbam_fused import reference as R
from cbam_fused.passes import TorchPasses, acc_dtype

from .conftest import require_backend

pytestmark = pytest.mark.triton

ROOT = Path(__file__).resolve().parents[1]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
LAYOUTS = ["nchw", "channels_last"]
SHAPES = {
    "tiles": (2, 40, 7, 9),  # 3 channel blocks x 4 pixel tiles (2 chunks of 2) per sample
    "primes": (1, 17, 13, 11),
    "long": (1, 3, 17, 19),  # 21 pixel tiles, 11 chunks: more partials than one fold block holds
    "hw1": (3, 5, 1, 1),
    "h1": (2, 3, 1, 13),
    "c1": (2, 1, 5, 4),
}
SPEC = TorchPasses()


@pytest.fixture(scope="module")
def tp():
    require_backend("triton")
    from cbam_fused.triton import TritonPasses

    return TritonPasses()


def test_small_test_shapes_use_several_programs_per_reduction():
    if not torch.cuda.is_available():
        from cbam_fused.triton import common

        assert common.INTERPRET and common.BLOCK_P == 16 and common.TILES_PER_PROGRAM == 2
        assert [c.kwargs["BLOCK_C"] for c in common.block_c_configs()] == [16]
    from cbam_fused.triton.common import BLOCK_P, FOLD_BLOCK, num_pixel_chunks, num_pixel_tiles

    n, c, h, w = SHAPES["tiles"]
    assert num_pixel_tiles(h * w) >= 3 and num_pixel_chunks(h * w) >= 2 and h * w > BLOCK_P
    n, c, h, w = SHAPES["long"]
    assert num_pixel_chunks(h * w) > 2 * FOLD_BLOCK  # the fold kernel loops over several blocks of partials


def make_x(shape, dtype, layout, kind="randn", seed=0):
    """randn, or small integers (exact in every dtype, so ties everywhere), with planted NaN/inf if asked."""
    g = torch.Generator().manual_seed(seed)
    if kind == "ints":
        x = torch.randint(-2, 3, shape, generator=g).to(torch.float64)
    else:
        x = torch.randn(shape, generator=g, dtype=torch.float64)
    x = x.to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x.to(DEVICE)


def small(x, per_channel, seed=1, kind="rand"):
    n, c, h, w = x.shape
    g = torch.Generator().manual_seed(seed)
    size = (n, c) if per_channel else (n, h * w)
    t = torch.rand(size, generator=g, dtype=torch.float64) + 0.5 if kind == "rand" else \
        torch.randn(size, generator=g, dtype=torch.float64)
    return t.to(acc_dtype(x.dtype)).to(DEVICE)


def close(actual, expected, what, exact=False):
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if exact or not actual.is_floating_point():
        assert torch.equal(torch.nan_to_num(actual.cpu(), 7.0), torch.nan_to_num(expected.cpu(), 7.0)), \
            f"{what}: not equal\n{actual}\n{expected}"
        assert torch.equal(torch.isnan(actual.cpu()), torch.isnan(expected.cpu())), f"{what}: NaN mismatch"
        return
    if actual.numel() == 0:
        return
    tol = 1e-12 if actual.dtype == torch.float64 else 2e-6
    scale = max(1.0, float(expected.abs().nan_to_num(0.0).max()))
    torch.testing.assert_close(actual.cpu(), expected.cpu(), rtol=tol, atol=tol * scale, equal_nan=True,
                               msg=lambda m: f"{what}: {m}")


def close_full(actual, expected, what):
    """A full-size output in x's dtype. In bf16/fp16, one unit in the last place is allowed: the two sides
    may round an fp32 value that differs in its last bits (FMA on GPUs), and the Triton interpreter
    truncates fp32 -> bf16 where GPUs round to nearest (measured with triton 3.8.0)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    if actual.dtype in (torch.float32, torch.float64):
        return close(actual, expected, what)
    eps = torch.finfo(actual.dtype).eps
    scale = max(1.0, float(expected.float().abs().nan_to_num(0.0).max()))
    torch.testing.assert_close(actual.cpu().double(), expected.cpu().double(), rtol=eps, atol=1e-6 * scale,
                               equal_nan=True, msg=lambda m: f"{what}: {m}")


def assert_pools(got, want, what):
    avg, mx, idx, count = got
    close(avg, want[0], what + " mean")
    close(mx, want[1], what + " max", exact=True)  # a max is exact whatever the order
    close(idx, want[2], what + " argmax")
    close(count, want[3], what + " count")


def assert_layout_of(y, x, what):
    if not x.is_contiguous():
        assert y.is_contiguous(memory_format=torch.channels_last), f"{what} lost the channels_last layout"
    else:
        assert y.is_contiguous(), f"{what} is not NCHW-contiguous"


# small integers (ties everywhere) over the whole matrix, plus randn on the multi-tile shape
FORWARD_CASES = [(shape, dtype, layout, "ints") for shape in SHAPES for dtype in DTYPES for layout in LAYOUTS] + \
    [("tiles", dtype, layout, "randn") for dtype in DTYPES for layout in LAYOUTS]


@pytest.mark.parametrize("shape,dtype,layout,kind", FORWARD_CASES, ids=str)
def test_forward_passes(tp, shape, dtype, layout, kind):
    x = make_x(SHAPES[shape], dtype, layout, kind)
    a = small(x, True)
    s = small(x, False)
    assert_pools(tp.pool_hw(x), SPEC.pool_hw(x), "pool_hw")
    assert_pools(tp.pool_c(x, a), SPEC.pool_c(x, a), "pool_c")
    assert_pools(tp.pool_c(x, None), SPEC.pool_c(x, None), "pool_c without a")
    for ga, gs in ((a, s), (a, None), (None, s)):
        y = tp.apply_gates(x, ga, gs)
        assert y.dtype == dtype
        assert_layout_of(y, x, "apply_gates")
        close_full(y, SPEC.apply_gates(x, ga, gs), "apply_gates")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", ["tiles", "long", "hw1", "c1"])
def test_backward_passes(tp, shape, dtype, layout):
    x = make_x(SHAPES[shape], dtype, layout, "ints")  # ties everywhere, so the tie routing matters
    gy = make_x(SHAPES[shape], dtype, layout, "randn", seed=5)
    a, s = small(x, True), small(x, False)
    u_c, v_c, u_hw, v_hw = small(x, False, 2, "n"), small(x, False, 3, "n"), small(x, True, 4, "n"), \
        small(x, True, 6, "n")
    for want_a, want_s, ga_, gs_ in ((True, True, a, s), (True, False, a, None), (False, True, None, s),
                                     (True, True, None, None)):
        got, want = tp.gate_grads(gy, x, ga_, gs_, want_a, want_s), SPEC.gate_grads(gy, x, ga_, gs_, want_a, want_s)
        close(got[0], want[0], f"gate_grads ga ({want_a}, {want_s})")
        close(got[1], want[1], f"gate_grads gs ({want_a}, {want_s})")
    _, max_c, argmax_c, _ = SPEC.pool_c(x, a)
    _, max_hw, argmax_hw, _ = SPEC.pool_hw(x)
    for split in (False, True):
        close(tp.pool_c_grad_a(x, a, u_c, v_c, argmax_c, max_c, split),
              SPEC.pool_c_grad_a(x, a, u_c, v_c, argmax_c, max_c, split), f"pool_c_grad_a split={split}")
        groups = {  # channel gate only, spatial gate only (no a), the whole block
            "channel": (a, None, None, None, None, None, u_hw, v_hw, argmax_hw, max_hw),
            "spatial": (None, s, u_c, v_c, argmax_c, SPEC.pool_c(x, None)[1], None, None, None, None),
            "cbam": (a, s, u_c, v_c, argmax_c, max_c, u_hw, v_hw, argmax_hw, max_hw),
        }
        for unit, args in groups.items():
            gx = tp.input_grad(gy, x if split else None, *args, split)
            assert gx.dtype == dtype
            assert_layout_of(gx, gy, "input_grad")
            want = SPEC.input_grad(gy, x, *args, split)
            close_full(gx, want, f"input_grad {unit} split={split}")


def test_mixed_layouts(tp):
    """gy and x may come in different layouts; each is read through its own strides."""
    x = make_x(SHAPES["tiles"], torch.float32, "channels_last", "ints")
    gy = make_x(SHAPES["tiles"], torch.float32, "nchw", "randn", seed=2)
    a, s = small(x, True), small(x, False)
    for got, want in zip(tp.gate_grads(gy, x, a, s, True, True), SPEC.gate_grads(gy, x, a, s, True, True)):
        close(got, want, "gate_grads mixed layouts")
    args = (a, s, small(x, False, 2, "n"), small(x, False, 3, "n"), SPEC.pool_c(x, a)[2], SPEC.pool_c(x, a)[1],
            small(x, True, 4, "n"), small(x, True, 5, "n"), SPEC.pool_hw(x)[2], SPEC.pool_hw(x)[1])
    close(tp.input_grad(gy, x, *args, True), SPEC.input_grad(gy, x, *args, True), "input_grad mixed layouts")


def test_strided_view_is_read_correctly(tp):
    x = make_x((2, 20, 9, 20), torch.float32, "nchw")[:, :, :, ::2]  # pixels do not flatten
    assert_pools(tp.pool_hw(x), SPEC.pool_hw(x), "pool_hw strided")
    assert_pools(tp.pool_c(x, None), SPEC.pool_c(x, None), "pool_c strided")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_and_inf(tp, dtype):
    """NaN wins the max, the first NaN is the argmax and the count is 1, across tile boundaries."""
    x = make_x(SHAPES["tiles"], dtype, "nchw", "ints")
    x[0, 3, 5, 8] = float("nan")  # pixel 53, the last pixel tile
    x[0, 3, 0, 4] = float("nan")  # pixel 4: the first NaN of channel 3
    x[1, 30, 2, 2] = float("nan")  # channel 30 (third channel block) of pixel 20
    x[1, 2, 2, 2] = float("nan")  # channel 2 of pixel 20: the first NaN there
    x[0, 7] = float("-inf")  # a whole channel of -inf: max -inf, argmax 0, count P
    for layout in LAYOUTS:
        xl = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
        hw, c = tp.pool_hw(xl), tp.pool_c(xl, None)
        assert_pools(hw, SPEC.pool_hw(xl), "pool_hw with NaN")
        assert_pools(c, SPEC.pool_c(xl, None), "pool_c with NaN")
        # independent of the spec: the contract's NaN rules written out
        assert torch.isnan(hw[1][0, 3]) and hw[2][0, 3] == 4 and hw[3][0, 3] == 1
        assert torch.isnan(c[1][1, 20]) and c[2][1, 20] == 2 and c[3][1, 20] == 1
        assert hw[1][0, 7] == float("-inf") and hw[2][0, 7] == 0 and hw[3][0, 7] == 63


def test_ties_take_the_first_index_and_count_all(tp):
    """Written-out expectations: equal maxima in different tiles."""
    x = torch.zeros(1, 40, 7, 9, dtype=torch.float32)
    x[0, 5].view(-1)[[10, 40, 62]] = 2.0  # three maxima of channel 5 in pixel tiles 0, 2 and 3
    x[0, [9, 25, 39], 3, 3] = 4.0  # three maxima of pixel 30 in channel blocks 0, 1 and 2
    x = x.to(DEVICE)
    _, mx, idx, count = tp.pool_hw(x)
    assert (mx[0, 5], idx[0, 5], count[0, 5]) == (2.0, 10, 3)
    assert (mx[0, 6], idx[0, 6], count[0, 6]) == (0.0, 0, 63)  # an all-zero channel
    _, mx, idx, count = tp.pool_c(x, None)
    assert (mx[0, 30], idx[0, 30], count[0, 30]) == (4.0, 9, 3)


def test_bad_inputs_raise_clear_errors(tp):
    x = make_x((2, 4, 3, 3), torch.float32, "nchw")
    with pytest.raises(TypeError, match="float16, bfloat16, float32 or float64"):
        tp.pool_hw(x.to(torch.int32))
    with pytest.raises(ValueError, match="4-D"):
        tp.pool_hw(x[0])
    with pytest.raises(ValueError, match="empty"):
        tp.pool_hw(x[:0])
    with pytest.raises(ValueError, match="batch size 65536"):
        tp.pool_hw(x[:1, :1, :1, :1].expand(65536, 1, 1, 1))
    with pytest.raises(ValueError, match="a must be a torch.float32 tensor of 8 elements"):
        tp.pool_c(x, torch.ones(2, 5, device=DEVICE))
    with pytest.raises(ValueError, match="a must be a torch.float32"):
        tp.pool_c(x, torch.ones(2, 4, dtype=torch.float64, device=DEVICE))
    with pytest.raises(ValueError, match="needs x"):
        tp.input_grad(x, None, None, None, None, None, None, None, torch.zeros(2, 4), torch.zeros(2, 4),
                      None, torch.zeros(2, 4), True)


def test_auto_backend_never_picks_triton_for_cpu_tensors():
    x = torch.randn(1, 4, 3, 3)
    assert ops.resolve_backend(None, x) in ("cpu", "torch")
    assert ops.resolve_backend("auto", x) in ("cpu", "torch")


def _run_script(name):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, str(ROOT / "tests" / name)], env=env, capture_output=True, text=True,
                          timeout=900)


def test_every_kernel_compiles_for_a_gpu_target():
    """The interpreter runs kernel bodies as Python; the real compiler is stricter (docs/design.md §7)."""
    require_backend("triton")
    proc = _run_script("triton_gpu_compile.py")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "compiled" in proc.stdout.splitlines()[-1]


def test_torch_compile_traces_into_the_triton_kernels():
    """torch.compile(fullgraph=True) of a CBAM module with backend="triton" yields forward and backward
    graphs holding the Triton kernel calls, traced with the interpreter off and nothing launched."""
    require_backend("triton")
    proc = _run_script("triton_trace_check.py")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # the kernel analysis (which arguments a kernel writes) must have worked, not fallen back
    assert "identify_accessed_tensors" not in proc.stderr, proc.stderr[-3000:]
    graphs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert graphs["forward"] == ["_pool_hw_tiles", "_fold_pool_partials", "_pool_c_kernel", "_apply_gates_kernel"]
    assert graphs["backward"] == ["_gate_grads_kernel", "_pool_c_grad_a_tiles", "_input_grad_kernel"]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_torch_compile_fullgraph_on_gpu(dtype):
    require_backend("triton")
    torch._dynamo.reset()
    torch.manual_seed(0)
    ref = R.CBAM(64).cuda()
    fused = cf.CBAM(64, backend="triton").cuda()
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(4, 64, 28, 28, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
    gy = torch.randn_like(x)
    explanation = torch._dynamo.explain(fused.to(dtype))(x)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    compiled = torch.compile(fused.to(dtype), fullgraph=True)
    xc = x.detach().requires_grad_()
    y = compiled(xc)
    (gx,) = torch.autograd.grad(y, xc, gy)
    xr = x.detach().double().requires_grad_()
    ref64 = ref.double()
    yr = ref64(xr)
    (gxr,) = torch.autograd.grad(yr, xr, gy.double())
    from .oracle import assert_close

    assert_close(y, yr, dtype, "compiled y")
    assert_close(gx, gxr, dtype, "compiled gx", outlier_fraction=0.002 if dtype != torch.float32 else 0.0)
