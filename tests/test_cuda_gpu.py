"""Tests of the CUDA kernels on a real GPU (marked ``gpu``; skipped without a CUDA device).

The correctness matrix itself runs on the ``cuda`` backend through tests/test_correctness.py and the
pass-level checks through the ``cuda`` pass set of tests/test_passes.py; these add an fp16 overflow
case, bitwise determinism, the MLP kernels' independence of the TF32 setting,
``torch.compile(fullgraph=True)`` and an int64-indexing case (>= 2^31 elements).
"""
import pytest
import torch

import cbam_fused as cf
from cbam_fused.pass_ops import CppPasses
from cbam_fused import reference as R
from cbam_fused.passes import TorchPasses

from .conftest import require_backend
from .oracle import assert_close

pytestmark = pytest.mark.gpu


@pytest.fixture
def cuda_passes():
    require_backend("cuda")
    return CppPasses("cuda")


def _block_inputs(shape, dtype, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    cr = R.hidden_width(c, 16)
    rnd = lambda *s, sc=1.0: (torch.randn(*s, generator=g, dtype=torch.float64) * sc)  # noqa: E731
    return dict(x=rnd(n, c, h, w, sc=scale), w1=rnd(cr, c, sc=c ** -0.5 / scale), w2=rnd(c, cr, sc=cr ** -0.5),
                k=rnd(1, 2, 7, 7, sc=0.2 / scale))


def test_fp16_large_magnitudes_do_not_saturate(cuda_passes):
    # 56*56 = 3136 pixels of magnitude ~3e4: an fp16 running sum would overflow at 65504
    inp = _block_inputs((2, 32, 56, 56), torch.float16, scale=1.0)
    inp["x"] = inp["x"].abs().clamp(max=3) * 1e4 + 2e4  # 2e4..5e4, finite in fp16
    x16 = inp["x"].half().cuda()
    avg, mx, _, _ = cuda_passes.pool_hw(x16)
    assert torch.isfinite(avg).all()
    assert_close(avg, inp["x"].half().double().mean(dim=(2, 3)), torch.float16, "fp16 pool_hw mean")
    ws = {k: v.half().cuda() for k, v in inp.items() if k != "x"}
    y = cf.cbam(x16, ws["w1"], ws["w2"], ws["k"], backend="cuda")
    y_ref = R.cbam(x16.double().cpu(), *(ws[k].double().cpu() for k in ("w1", "w2", "k")))
    assert torch.isfinite(y).all()
    assert_close(y, y_ref, torch.float16, "fp16 cbam y")


def test_deterministic_mode_is_bitwise_reproducible(cuda_passes):
    inp = _block_inputs((4, 256, 56, 56), torch.float32, seed=1)
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        results = []
        for _ in range(2):
            t = {k: v.float().cuda().requires_grad_() for k, v in inp.items()}
            y = cf.cbam(t["x"], t["w1"], t["w2"], t["k"], backend="cuda")
            grads = torch.autograd.grad(y, list(t.values()), torch.ones_like(y))
            results.append((y.detach(), *grads))
    finally:
        torch.use_deterministic_algorithms(prev)
    for a, b in zip(*results):
        assert torch.equal(a, b), "two runs differ bitwise"


def test_torch_compile_fullgraph_matches_eager(cuda_passes):
    torch._dynamo.reset()
    model = cf.CBAM(64, backend="cuda").cuda()
    x = torch.randn(2, 64, 14, 14, device="cuda", requires_grad=True)
    compiled = torch.compile(model, fullgraph=True)
    y_c = compiled(x)
    g_c = torch.autograd.grad(y_c.square().sum(), [x, *model.parameters()])
    y_e = model(x)
    g_e = torch.autograd.grad(y_e.square().sum(), [x, *model.parameters()])
    torch.testing.assert_close(y_c, y_e)
    for a, b in zip(g_c, g_e):
        torch.testing.assert_close(a, b)


def test_small_mlp_ignores_tf32_flags(cuda_passes):
    """The channel MLP kernels (csrc/cuda/channel_mlp.cuh) do plain fp32 arithmetic, so a CBAM whose
    MLP they run gives bitwise the same output and gradients whatever the TF32 setting."""
    from bench.launches import FORWARD_OP, KERNEL_PREFIX, launches_in

    torch.manual_seed(0)
    model = cf.CBAM(64, backend="cuda").cuda()
    x = torch.randn(2, 64, 8, 8, device="cuda", requires_grad=True)
    prev = torch.get_float32_matmul_precision()
    results = []
    try:
        for precision in ("highest", "high"):  # "high" lets matrix products use TF32
            torch.set_float32_matmul_precision(precision)
            fwd, y = launches_in(lambda: model(x), FORWARD_OP)
            assert KERNEL_PREFIX + "channel_mlp" in fwd, f"the MLP kernel did not run: {fwd}"
            results.append((y.detach(), *torch.autograd.grad(y.square().sum(), [x, *model.parameters()])))
    finally:
        torch.set_float32_matmul_precision(prev)
    for a, b in zip(*results):
        assert torch.equal(a, b), "the TF32 setting changed a result"


@pytest.mark.slow
def test_int64_indexing_beyond_2_pow_31(cuda_passes):
    n, c, h, w = 1, 2048, 1024, 1025  # 2^31 + 2^21 elements, 4.3 GB in bf16
    need = 3 * n * c * h * w * 2
    free, _ = torch.cuda.mem_get_info()
    if free < need:
        pytest.skip(f"needs {need / 2**30:.1f} GiB of free device memory, {free / 2**30:.1f} available")
    x = torch.zeros(n, c, h, w, dtype=torch.bfloat16, device="cuda")
    x[0, -1, -1, -1] = 3.0  # the very last element, past 2^31
    x[0, 0, 0, 0] = -2.0
    avg, mx, arg, cnt = cuda_passes.pool_hw(x)
    assert mx[0, -1].item() == 3.0 and arg[0, -1].item() == h * w - 1
    assert cnt[0, 0].item() == h * w - 1 and mx[0, 0].item() == 0.0
    y = cuda_passes.apply_gates(x, torch.full((n, c), 2.0, device="cuda"), None)
    assert y[0, -1, -1, -1].item() == 6.0 and y[0, 0, 0, 0].item() == -4.0
    spec_avg = TorchPasses().pool_hw(x[:, -2:])[0]
    torch.testing.assert_close(avg[:, -2:], spec_avg)
