"""The spatial gate's convolution (two [N, H*W] planes, a [1, 2, K, K] kernel, 'same' zero padding, one
output plane) and its gradients, on every implementation: the C++ CPU kernels and the CUDA kernels
(through the ops ``cbam_fused::spatial_conv`` / ``spatial_conv_backward``), the CUDA kernels on the
emulator, and the pure-torch spec (``TorchPasses``). The oracle is ``F.conv2d`` with autograd in
float64 on the same (rounded) inputs.

Run the emulator cases in each thread order as its own process:
``CUDACPU_ORDER=fwd|rev|rand pytest -m emulator tests/test_spatial_conv.py``.
"""
import pytest
import torch
import torch.nn.functional as F

from cbam_fused.passes import TorchPasses

from .conftest import require_backend

IMPLS = [
    pytest.param("cpu", id="cpu"),
    pytest.param("spec", id="spec"),
    pytest.param("cudaemu", id="cudaemu", marks=pytest.mark.emulator),
    pytest.param("cuda", id="cuda", marks=pytest.mark.gpu),
]
DTYPES = [torch.float32, torch.float64]
# (N, H, W): odd sizes, H or W smaller than K = 7, a single pixel, a single row, an empty batch, rows
# long enough for the CPU kernels' vector blocks and for several partial sums per row (> 256 pixels)
SHAPES = [(2, 5, 7), (1, 3, 2), (3, 13, 11), (1, 1, 1), (2, 1, 9), (0, 4, 5), (2, 9, 41), (1, 3, 300)]
EPS = {torch.float32: 2.0 ** -24, torch.float64: 2.0 ** -53}


class Ops:
    """The two ops through the dispatcher, on one device."""

    def __init__(self, device):
        self.device = device
        self.nonfinite_exact = True

    def spatial_conv(self, *args):
        return torch.ops.cbam_fused.spatial_conv(*args)

    def spatial_conv_backward(self, *args):
        return torch.ops.cbam_fused.spatial_conv_backward(*args)


@pytest.fixture(params=IMPLS)
def impl(request):
    name = request.param
    if name in ("cpu", "cuda"):
        require_backend(name)
        return Ops(name)
    if name == "cudaemu":
        require_backend("cudaemu")
        from tests import cudaemu

        passes = cudaemu.EmuPasses()
    else:
        passes = TorchPasses()
    passes.device = "cpu"
    # the spec's banded weight gradient (small_steps.conv_weight_grad) turns every tap non-finite, as
    # NaN, when grad_out holds a NaN or Inf: the same taps as conv2d are non-finite, not always alike
    passes.nonfinite_exact = name != "spec"
    return passes


def operands(n, h, w, k, dtype, seed=0, positive=False):
    g = torch.Generator().manual_seed(seed)
    draw = (lambda *s: torch.rand(*s, generator=g, dtype=torch.float64)) if positive else (
        lambda *s: torch.randn(*s, generator=g, dtype=torch.float64))
    in0, in1, go = (draw(n, h * w).to(dtype) for _ in range(3))
    weight, bias = (draw(1, 2, k, k) * 0.3).to(dtype), draw(1).to(dtype)
    return in0, in1, weight, bias, go


def oracle(in0, in1, weight, bias, go, h, w):
    """out, grad_in0, grad_in1, grad_weight, grad_bias by F.conv2d and autograd in float64."""
    n, k = in0.shape[0], weight.shape[-1]
    q = torch.stack((in0, in1), dim=1).reshape(n, 2, h, w).double().requires_grad_()
    wt = weight.double().requires_grad_()
    b = bias.double().requires_grad_() if bias is not None else None
    out = F.conv2d(q, wt, b, padding=k // 2)
    grads = torch.autograd.grad(out, [q, wt] + ([b] if b is not None else []), go.double().reshape(n, 1, h, w))
    gb = grads[2] if b is not None else torch.zeros(0, dtype=torch.float64)
    return out.detach().reshape(n, h * w), grads[0][:, 0].reshape(n, h * w), grads[0][:, 1].reshape(n, h * w), \
        grads[1], gb


def check(got, want, bound, what):
    """|got - want| <= bound elementwise (bound from the magnitude of the summed terms)."""
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = (got.double().cpu() - want).abs()
    bad = err > bound
    assert not bad.any(), f"{what}: max error {err.max().item():.3g}, bound there {bound[bad].min().item():.3g}"


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("k", [1, 3, 7])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_matches_conv2d(impl, dtype, shape, k, with_bias):
    n, h, w = shape
    in0, in1, weight, bias, go = operands(n, h, w, k, dtype, seed=k + 10 * n)
    bias = bias if with_bias else None
    dev = lambda t: None if t is None else t.to(impl.device)  # noqa: E731
    out = impl.spatial_conv(dev(in0), dev(in1), dev(weight), dev(bias), h, w)
    g0, g1, gw, gb = impl.spatial_conv_backward(dev(go), dev(in0), dev(in1), dev(weight), with_bias, h, w)
    want = oracle(in0, in1, weight, bias, go, h, w)
    # error bounds: the same sums on absolute values, times the terms per sum, times the unit roundoff
    # (the pixel sums of the weight gradient are folded in double; 4096 covers an fp32 partial)
    mag = oracle(in0.abs(), in1.abs(), weight.abs(), None if bias is None else bias.abs(), go.abs(), h, w)
    u = EPS[dtype]
    terms = 2 * k * k + 2
    for name, got, ref, m, count in zip(("out", "grad_in0", "grad_in1", "grad_weight", "grad_bias"),
                                        (out, g0, g1, gw, gb), want, mag, (terms,) * 3 + (4096,) * 2):
        assert got.dtype == dtype, f"{name}: dtype {got.dtype}"
        check(got, ref, 2 * count * u * m + 1e-300, name)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_empty_batch_gives_zero_weight_grads(impl, dtype):
    in0, in1, weight, bias, go = operands(0, 3, 4, 3, dtype)
    dev = lambda t: t.to(impl.device)  # noqa: E731
    out = impl.spatial_conv(dev(in0), dev(in1), dev(weight), dev(bias), 3, 4)
    g0, g1, gw, gb = impl.spatial_conv_backward(dev(go), dev(in0), dev(in1), dev(weight), True, 3, 4)
    assert out.shape == g0.shape == g1.shape == (0, 12)
    assert torch.equal(gw.cpu(), torch.zeros(1, 2, 3, 3, dtype=dtype))
    assert torch.equal(gb.cpu(), torch.zeros(1, dtype=dtype))


def same_nonfinite(got, want, what, exact=True):
    got = got.double().cpu()
    if not exact:
        assert torch.equal(torch.isfinite(got), torch.isfinite(want)), f"{what}: non-finite entries differ"
        return
    assert torch.equal(torch.isnan(got), torch.isnan(want)), f"{what}: NaN positions differ from conv2d's"
    assert torch.equal(torch.isinf(got), torch.isinf(want)), f"{what}: Inf positions differ from conv2d's"
    assert torch.equal(torch.signbit(got[torch.isinf(got)]), torch.signbit(want[torch.isinf(want)])), what


@pytest.mark.parametrize("case", ["inf_weight", "inf_input", "nan_input", "inf_grad", "nan_grad"])
def test_nonfinite_values_propagate_as_in_conv2d(impl, case):
    """conv2d multiplies its padding zeros in the forward and the weight gradient (so an infinite weight,
    or grad_out value, next to a border gives NaN there) but not in the input gradient."""
    n, h, w, k = 2, 5, 6, 3
    in0, in1, weight, bias, go = operands(n, h, w, k, torch.float64, seed=3)
    if case == "inf_weight":
        weight[0, 0, 0, 2] = float("inf")
    elif case == "inf_input":
        in0[1, 0] = float("inf")  # a corner pixel
        in1[0, 14] = float("-inf")
    elif case == "nan_input":
        in1[0, 5] = float("nan")
    elif case == "inf_grad":
        go[0, 0] = float("inf")   # a corner
        go[1, 15] = float("-inf")  # an interior pixel
    else:
        go[1, 29] = float("nan")
    dev = lambda t: t.to(impl.device)  # noqa: E731
    out = impl.spatial_conv(dev(in0), dev(in1), dev(weight), dev(bias), h, w)
    grads = impl.spatial_conv_backward(dev(go), dev(in0), dev(in1), dev(weight), True, h, w)
    want = oracle(in0, in1, weight, bias, go, h, w)
    for name, got, ref in zip(("out", "grad_in0", "grad_in1", "grad_weight", "grad_bias"), (out, *grads), want):
        same_nonfinite(got, ref, f"{case}: {name}", impl.nonfinite_exact or name != "grad_weight")


def test_thread_count_independent_cpu():
    require_backend("cpu")
    n, h, w, k = 3, 67, 61, 7  # 201 rows of 61 pixels: several fixed chunks of the weight gradient
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for dtype in DTYPES:
                in0, in1, weight, bias, go = operands(n, h, w, k, dtype, seed=5)
                results.append((torch.ops.cbam_fused.spatial_conv(in0, in1, weight, bias, h, w),
                                *torch.ops.cbam_fused.spatial_conv_backward(go, in0, in1, weight, True, h, w)))
    finally:
        torch.set_num_threads(before)
    half = len(results) // 2
    for one, two in zip(results[:half], results[half:]):
        for a, b in zip(one, two):
            assert torch.equal(a, b)


def test_opcheck_cpu():
    require_backend("cpu")
    in0, in1, weight, bias, go = operands(2, 5, 6, 3, torch.float32)
    torch.library.opcheck(torch.ops.cbam_fused.spatial_conv.default, (in0, in1, weight, bias, 5, 6))
    torch.library.opcheck(torch.ops.cbam_fused.spatial_conv.default, (in0, in1, weight, None, 5, 6))
    torch.library.opcheck(torch.ops.cbam_fused.spatial_conv_backward.default, (go, in0, in1, weight, True, 5, 6))
    torch.library.opcheck(torch.ops.cbam_fused.spatial_conv_backward.default, (go, in0, in1, weight, False, 5, 6))


def test_bad_input_cpu():
    require_backend("cpu")
    in0, in1, weight, bias, go = operands(2, 5, 6, 3, torch.float32)
    op = torch.ops.cbam_fused.spatial_conv
    with pytest.raises(RuntimeError, match="K odd"):
        op(in0, in1, torch.zeros(1, 2, 4, 4), None, 5, 6)
    with pytest.raises(RuntimeError, match=r"shape \[N, 25\]"):
        op(in0, in1, weight, None, 5, 5)
    with pytest.raises(RuntimeError, match="in1 must match in0"):
        op(in0, in1.double(), weight, None, 5, 6)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        op(in0.half(), in1.half(), weight.half(), None, 5, 6)
    with pytest.raises(RuntimeError, match="bias must be"):
        op(in0, in1, weight, torch.zeros(2), 5, 6)
    with pytest.raises(RuntimeError, match="must be positive"):
        op(in0[:, :0], in1[:, :0], weight, None, 0, 6)


def _exact12(g, *shape):
    """Values with 12-bit mantissas in [0.5, 1): products of two are exact in float32."""
    return torch.randint(2048, 4096, shape, generator=g, dtype=torch.int64).double() / 4096


def test_weight_grad_accurate_on_a_4097_image_cpu():
    """16.8M same-sign products per weight (one fp32 sum over them lost 3%). Inputs and grad_out are
    outer products of vectors (exact in fp32), so the float64 oracle is a product of two 1-D sums; the
    kernels do not know it."""
    require_backend("cpu")
    h = w = 4097
    k, r = 7, 3
    g = torch.Generator().manual_seed(7)
    p, q, u, v = (_exact12(g, 2, h if i % 2 == 0 else w) for i in range(4))  # rows / columns factors
    ins = [(p[c, :, None] * q[c, None, :]).float().reshape(1, h * w) for c in range(2)]
    go = (u[0, :, None] * v[0, None, :]).float().reshape(1, h * w)
    weight = torch.zeros(1, 2, k, k)
    _, _, gw, gb = torch.ops.cbam_fused.spatial_conv_backward(go, ins[0], ins[1], weight, True, h, w)

    def shifted(a, b, d, n):  # sum_t a[t + d] * b[t] over valid t
        lo, hi = max(0, -d), min(n, n - d)
        return (a[lo + d:hi + d] * b[lo:hi]).sum()

    want = torch.empty(2, k, k, dtype=torch.float64)
    for c in range(2):
        for i in range(k):
            for j in range(k):
                want[c, i, j] = shifted(p[c], u[0], i - r, h) * shifted(q[c], v[0], j - r, w)
    want_b = u[0].sum() * v[0].sum()
    rel = ((gw[0].double() - want).abs() / want).max().item()
    rel_b = abs(gb.item() - want_b.item()) / want_b.item()
    # fp32 row partials of at most 4097 / 16 products each, then double: a few fp32 ulps at most
    assert rel < 2e-6 and rel_b < 2e-6, f"relative error {rel:.3g} (weight), {rel_b:.3g} (bias)"
