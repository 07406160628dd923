"""Public API: custom-op registration (opcheck), state_dict portability, saved memory, backend choice."""
import copy

import pytest
import torch

import cbam_fused as cf
from cbam_fused import attention_op, ops
from cbam_fused import reference as R

from .conftest import device_of, require_backend
from .test_correctness import make_inputs


def _op_args(inp, *, channel=True, spatial=True, ties="index", gate="sigmoid", backend="cpu"):
    x = inp["x"]
    return (
        x, inp["w1"] if channel else None, inp["b1"] if channel else None, inp["w2"] if channel else None,
        inp["b2"] if channel else None, inp["k"] if spatial else None, inp["kb"] if spatial else None,
        None, None, None, None, "mlp", "avg+max", gate, "mean_max", gate, "none", 1e-5, ties, backend,
    )


@pytest.mark.parametrize("unit", ["channel", "spatial", "cbam"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_opcheck_forward(backend, unit, layout):
    if backend in ("triton", "cudaemu"):
        pytest.skip("opcheck's fake-tensor and aot checks run on the compiled CPU/CUDA ops and the spec")
    inp = make_inputs((2, 8, 5, 6), torch.float32, layout, device_of(backend), reduction=4)
    for k in ("x", "w1", "w2", "b1", "b2", "k", "kb"):
        inp[k] = inp[k].requires_grad_()
    args = _op_args(inp, channel=unit != "spatial", spatial=unit != "channel", backend=backend)
    torch.library.opcheck(attention_op.forward_op(backend), args)


def test_opcheck_backward(backend):
    if backend in ("triton", "cudaemu"):
        pytest.skip("opcheck runs on the compiled CPU/CUDA ops and the spec")
    inp = make_inputs((2, 8, 5, 6), torch.float32, "nchw", device_of(backend), reduction=4)
    args = _op_args(inp, backend=backend)
    out = attention_op.forward_op(backend)(*args)
    gy = torch.randn_like(out[0])
    bwd_args = (gy, *args[:11], *out[1:], *args[11:], True)
    torch.library.opcheck(attention_op.backward_op(backend), bwd_args)


def test_state_dict_round_trip():
    torch.manual_seed(0)
    for ref, fused, c in [
        (R.CBAM(64, 16, 7), cf.CBAM(64, 16, 7), 64),
        (R.ChannelAttention(40, 8), cf.ChannelAttention(40, 8), 40),
        (R.SpatialAttention(3), cf.SpatialAttention(3), 5),
        (R.CBAM(8, 16, 7), cf.CBAM(8, 16, 7), 8),  # C < reduction: hidden width 1
    ]:
        assert list(ref.state_dict()) == list(fused.state_dict())
        fused.load_state_dict(ref.state_dict(), strict=True)
        back = copy.deepcopy(ref)
        for p in back.parameters():
            torch.nn.init.zeros_(p)
        back.load_state_dict(fused.state_dict(), strict=True)
        for (k, a), (_, b) in zip(ref.state_dict().items(), back.state_dict().items()):
            assert torch.equal(a, b), k
        x = torch.randn(2, c, 9, 10)
        torch.testing.assert_close(fused(x), ref(x), atol=2e-6, rtol=2e-5)


def test_reference_key_names():
    keys = set(R.CBAM(64).state_dict())
    assert keys == {"channel_attention.shared_MLP.0.weight", "channel_attention.shared_MLP.2.weight",
                    "spatial_attention.conv2d.weight"}
    assert R.CBAM(64).state_dict()["channel_attention.shared_MLP.0.weight"].shape == (4, 64, 1, 1)


def _saved_bytes(fn, x):
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fn(x)
    return y, total


@pytest.mark.parametrize("backend_name", ["cpu", "spec"])
def test_saved_for_backward_is_about_x(backend_name):
    from .conftest import require_backend

    require_backend(backend_name)
    torch.manual_seed(0)
    x = torch.randn(4, 64, 28, 28, requires_grad=True)
    fused = cf.CBAM(64, backend=backend_name)
    ref = R.CBAM(64)
    x_bytes = x.numel() * x.element_size()
    _, fused_saved = _saved_bytes(fused, x)
    _, ref_saved = _saved_bytes(ref, x)
    assert fused_saved <= 1.1 * x_bytes, f"fused block saves {fused_saved / x_bytes:.2f}|x|"
    assert ref_saved >= 1.9 * x_bytes  # the eager block keeps x and x1 (sanity check of the counter)
    with torch.no_grad():
        _, saved = _saved_bytes(fused, x)
    assert saved == 0


def test_backend_choice_errors():
    x = torch.randn(1, 4, 3, 3)
    w1, w2 = torch.randn(1, 4), torch.randn(4, 1)
    with pytest.raises(ValueError, match="unknown backend"):
        cf.channel_attention(x, w1, w2, backend="fpga")
    if "cuda" not in cf.available_backends():
        with pytest.raises(RuntimeError, match="backend 'cuda' is not available"):
            cf.channel_attention(x, w1, w2, backend="cuda")
    assert "torch" in cf.available_backends()
    assert ops.resolve_backend(None, x) == ("cpu" if "cpu" in cf.available_backends() else "torch")
    assert ops.resolve_backend("auto", x) == ops.resolve_backend(None, x)


def test_torch_backend_matches_reference():
    inp = make_inputs((2, 32, 6, 7), torch.float64, "nchw", "cpu")
    y = cf.cbam(inp["x"], inp["w1"], inp["w2"], inp["k"], inp["b1"], inp["b2"], inp["kb"], backend="torch")
    y_ref = R.cbam(inp["x"], inp["w1"], inp["w2"], inp["k"], inp["b1"], inp["b2"], inp["kb"])
    torch.testing.assert_close(y, y_ref)


def test_run_takes_the_forward_ops_arguments():
    """ops.run passes its arguments to the op positionally: its parameter list is the schema's."""
    import inspect

    from cbam_fused.attention_op import FORWARD_ARGS

    assert tuple(inspect.signature(cf.ops.run).parameters) == FORWARD_ARGS


@pytest.mark.parametrize("backend", ["cpu", "spec", "torch"])
@pytest.mark.parametrize("kind", ["mlp", "linear"])
def test_conv_1x1_weights_are_the_matrices(backend, kind):
    """The channel map's weights as a 1x1 conv holds them ([rows, cols, 1, 1]) give the results of the
    [rows, cols] matrices, and gradients in the 1x1 shape."""
    if backend != "torch":
        require_backend(backend)
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64)
    rows = 2 if kind == "mlp" else 8
    mats = dict(w1=torch.randn(rows, 8, dtype=torch.float64), b1=torch.randn(rows, dtype=torch.float64))
    if kind == "mlp":
        mats.update(w2=torch.randn(8, rows, dtype=torch.float64), b2=torch.randn(8, dtype=torch.float64))
    results = []
    for as_conv in (False, True):
        ws = {k: (v[:, :, None, None] if as_conv and v.dim() == 2 else v).clone().requires_grad_()
              for k, v in mats.items()}
        xs = x.clone().requires_grad_()
        y, _ = cf.attention(xs, **ws, channel_kind=kind, conv_weight=torch.randn(1, 2, 3, 3, dtype=torch.float64,
                            generator=torch.Generator().manual_seed(1)), backend=backend)
        y.backward(torch.ones_like(y))
        for k, w in ws.items():
            assert w.grad.shape == w.shape, k
        results.append((y.detach(), xs.grad, {k: w.grad.reshape(mats[k].shape) for k, w in ws.items()}))
    (y0, gx0, g0), (y1, gx1, g1) = results
    torch.testing.assert_close(y1, y0, rtol=0, atol=0)
    torch.testing.assert_close(gx1, gx0, rtol=0, atol=0)
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=0, atol=0)
