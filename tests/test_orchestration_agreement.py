"""The C++ orchestration (backend "cpu") and the Python one over the pure-torch pass spec (backend
"spec", cbam_fused/attention_op.py) agree on every flavor and tie mode, channel->spatial and
spatial->channel (the parallel arrangement has its own Python path). fp64, with planted ties, in
training and eval mode: outputs, the input gradient, every parameter gradient and the BatchNorm
buffers after a step, within a few fp64 ulps (the two sum in different orders)."""
import copy

import pytest
import torch

import cbam_fused as cf
from bench.launches import FORWARD_OP, KERNEL_PREFIX, launches_in

from .conftest import require_backend
from .test_flavors import FLAVORS, make_input, randomize

CASES = [name for name, kw in FLAVORS.items() if kw.get("arrangement") != "parallel"]


def _on(base, backend):
    m = copy.deepcopy(base)
    for mod in m.modules():
        if hasattr(mod, "backend"):
            mod.backend = backend
    return m


def _step(m, x, gy):
    x = x.detach().requires_grad_()
    y = m(x)
    y.backward(gy)
    grads = [x.grad] + [p.grad for p in m.parameters()]
    return y.detach(), grads, [b.clone() for b in m.buffers()]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("flavor", CASES)
def test_cpp_orchestration_matches_spec(flavor, train):
    require_backend("cpu")
    kw = dict(FLAVORS[flavor])
    c = 16
    base = cf.CBAM(c, **kw).double()
    randomize(base, seed=3)
    results = []
    for backend in ("cpu", "spec"):
        m = _on(base, backend)
        m.train(train)
        x = make_input(5, "ties")
        gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
        results.append(_step(m, x, gy))
    (y0, g0, b0), (y1, g1, b1) = results
    torch.testing.assert_close(y0, y1, atol=1e-12, rtol=1e-10)
    for i, (a, b) in enumerate(zip(g0, g1)):
        assert (a is None) == (b is None), f"gradient {i}: present on one side only"
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10, msg=lambda msg: f"gradient {i}: {msg}")
    for a, b in zip(b0, b1):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("ties", ["index", "split"])
def test_large_mlp_takes_aten_products_and_matches_spec(ties):
    """An MLP past the table kernel's size limit runs as ATen matrix products: the same results."""
    require_backend("cpu")
    base = cf.CBAM(512, reduction=1, kernel_size=3, mlp_bias=True, ties=ties).double()
    randomize(base, seed=4)
    x = torch.randn(2, 512, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    results = []
    for backend in ("cpu", "spec"):
        results.append(_step(_on(base, backend), x, gy))
    (y0, g0, _), (y1, g1, _) = results
    torch.testing.assert_close(y0, y1, atol=1e-12, rtol=1e-10)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("backend", ["cpu", pytest.param("cudaemu", marks=pytest.mark.emulator)])
def test_split_ties_through_the_mlp_kernel_match_spec(backend):
    """Split-style ties find each pixel's maxima over channels by comparing acc(x) * a with the max the
    forward saved, so the backward needs the forward's channel gate to the last bit. With the MLP
    kernel's gate in the forward and ATen's sigmoid in the backward, the two differed by an ulp in
    some channels, and these samples (seeds 0, 3, 4) got O(1) wrong gradients."""
    require_backend(backend)
    require_backend("spec")
    for seed in (0, 3, 4):
        base = cf.CBAM(64, ties="split", spatial_bn=True).double()
        randomize(base, seed=seed)
        g = torch.Generator().manual_seed(100 + seed)
        x = torch.randn(2, 64, 16, 16, generator=g, dtype=torch.float64)
        gy = torch.randn(x.shape, generator=g, dtype=torch.float64)
        fwd, (y0, g0, _) = launches_in(lambda: _step(_on(base, backend), x, gy), FORWARD_OP)
        assert KERNEL_PREFIX + "channel_mlp" in fwd, f"the MLP kernel did not run: {fwd}"
        y1, g1, _ = _step(_on(base, "spec"), x, gy)
        torch.testing.assert_close(y0, y1, atol=1e-12, rtol=1e-10)
        for i, (a, b) in enumerate(zip(g0, g1)):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10, msg=lambda msg: f"seed {seed} gradient {i}: {msg}")
