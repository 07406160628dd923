"""Forward and every gradient of the fused ops vs the reference, on every backend CI can run.

The oracle is ``cbam_fused.reference`` evaluated in float64 on the same (upcast) inputs.
"""
import itertools

import pytest
import torch

import cbam_fused as cf
from cbam_fused import reference as R

from .conftest import device_of
from .oracle import assert_close

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
LAYOUTS = ["nchw", "channels_last"]
UNITS = ["channel", "spatial", "cbam"]

# name -> (N, C, H, W); odd shapes: C < reduction, H or W = 1, H*W = 1, primes, N = 1
SHAPES = {
    "basic": (2, 32, 7, 9),
    "c_lt_r": (2, 3, 5, 6),
    "h1": (2, 16, 1, 13),
    "w1": (1, 18, 11, 1),
    "hw1": (3, 24, 1, 1),
    "primes": (1, 17, 13, 11),
    "wide": (2, 72, 23, 29),  # C*P large enough for several blocks per reduction
}
SMALL_SHAPES = ("basic", "c_lt_r", "hw1", "primes")  # for slow backends (interpreter, emulator)


def make_inputs(shape, dtype, layout, device, *, reduction=16, kernel_size=7, biases=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    cr = R.hidden_width(c, reduction)

    def rand(*s, scale=1.0):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)

    x = rand(n, c, h, w)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return dict(
        x=x,
        w1=rand(cr, c, scale=c ** -0.5),
        w2=rand(c, cr, scale=cr ** -0.5),
        b1=rand(cr, scale=0.1) if biases else None,
        b2=rand(c, scale=0.1) if biases else None,
        k=rand(1, 2, kernel_size, kernel_size, scale=0.2),
        kb=rand(1, scale=0.1) if biases else None,
    )


def run(unit, inp, impl, gate, ties, backend=None):
    """Call the fused functional (``impl=cf``) or the reference (``impl=R``) for ``unit``."""
    kw = dict(gate=gate, ties=ties)
    if impl is cf:
        kw["backend"] = backend
    if unit == "channel":
        return impl.channel_attention(inp["x"], inp["w1"], inp["w2"], inp["b1"], inp["b2"], **kw)
    if unit == "spatial":
        return impl.spatial_attention(inp["x"], inp["k"], inp["kb"], **kw)
    return impl.cbam(inp["x"], inp["w1"], inp["w2"], inp["k"], inp["b1"], inp["b2"], inp["kb"], **kw)


def used_params(unit):
    return {"channel": ["x", "w1", "w2", "b1", "b2"], "spatial": ["x", "k", "kb"]}.get(
        unit, ["x", "w1", "w2", "b1", "b2", "k", "kb"])


def check_against_reference(backend, unit, shape, dtype, layout, gate="sigmoid", ties="index", seed=0,
                            inputs=None):
    device = device_of(backend)
    inp = inputs or make_inputs(shape, dtype, layout, device, seed=seed)
    names = [k for k in used_params(unit) if inp[k] is not None]
    fused_in = {k: (v.detach().requires_grad_() if k in names else v) for k, v in inp.items()}
    ref_in = {k: (v.detach().to("cpu", torch.float64).requires_grad_() if v is not None else None)
              for k, v in inp.items()}
    if layout == "channels_last":
        ref_in["x"] = ref_in["x"].detach().contiguous(memory_format=torch.channels_last).requires_grad_()

    y = run(unit, fused_in, cf, gate, ties, backend)
    y_ref = run(unit, ref_in, R, gate, ties)
    assert y.dtype == dtype and y.shape == inp["x"].shape
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last), "output lost the channels_last layout"
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    grads = torch.autograd.grad(y, [fused_in[k] for k in names], gy.to(dtype).to(device))
    grads_ref = torch.autograd.grad(y_ref, [ref_in[k] for k in names], gy.to(dtype).to(torch.float64))

    low = dtype in (torch.bfloat16, torch.float16)
    assert_close(y, y_ref, dtype, f"{unit} y")
    for k, g, gr in zip(names, grads, grads_ref):
        assert g.dtype == dtype, f"grad of {k} has dtype {g.dtype}"
        assert_close(g, gr, dtype, f"{unit} grad {k}", outlier_fraction=0.002 if low else 0.0)


def matrix(backend_is_slow):
    shapes = SMALL_SHAPES if backend_is_slow else tuple(SHAPES)
    return list(itertools.product(UNITS, shapes, DTYPES, LAYOUTS))


@pytest.mark.parametrize("unit,shape_name,dtype,layout", matrix(False),
                         ids=lambda v: str(v).replace("torch.", ""))
def test_matches_reference(backend, unit, shape_name, dtype, layout):
    if backend in ("triton", "cudaemu") and shape_name not in SMALL_SHAPES:
        pytest.skip("large shapes are covered on fast backends; this backend runs the small set")
    check_against_reference(backend, unit, SHAPES[shape_name], dtype, layout)


@pytest.mark.parametrize("gate", ["sigmoid", "hard_sigmoid"])
@pytest.mark.parametrize("ties", ["index", "split"])
@pytest.mark.parametrize("unit", UNITS)
def test_gates_and_ties(backend, unit, gate, ties):
    dtype = torch.float32
    inp = make_inputs(SHAPES["basic"], dtype, "nchw", device_of(backend), seed=3)
    # plant ties: a dead channel (all zeros) and a pixel whose channels are all equal
    inp["x"][0, 5] = 0
    inp["x"][1, :, 2, 3] = 0.5
    check_against_reference(backend, unit, SHAPES["basic"], dtype, "nchw", gate, ties, inputs=inp)


def test_strided_input_is_made_dense(backend):
    device = device_of(backend)
    inp = make_inputs((2, 16, 9, 20), torch.float32, "nchw", device)
    inp["x"] = inp["x"][:, :, :, ::2]  # non-contiguous, neither NCHW nor channels_last
    check_against_reference(backend, "cbam", tuple(inp["x"].shape), torch.float32, "nchw", inputs=inp)


def test_gradcheck_fp64(backend):
    device = device_of(backend)
    inp = make_inputs((2, 6, 4, 5), torch.float64, "nchw", device, reduction=2, kernel_size=3)
    names = used_params("cbam")
    args = [inp[k].detach().requires_grad_() for k in names]

    def f(*t):
        d = dict(zip(names, t))
        return cf.cbam(d["x"], d["w1"], d["w2"], d["k"], d["b1"], d["b2"], d["kb"], backend=backend)

    # the Triton interpreter costs ~2 ms per program: full gradcheck took minutes, fast mode (random
    # projections of the Jacobian) seconds
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-6, fast_mode=backend == "triton")
