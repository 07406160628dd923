"""Two paths of the orchestrations, on every backend they serve.

* Inference: under ``no_grad``, or when nothing requires a gradient, the modules run the op with
  ``ties="none"``; the pools keep no argmax or count, the op returns empty tie operands, and ``y``
  is bitwise the ``y`` of a forward that tracks them. A backward through such a forward refuses.
* Broadcast upstream gradients: ``y.sum().backward()`` and a sum over pixels deliver a ``gy`` with
  stride 0 over H and W (the C++ orchestration reads it as ``[N, C]`` values, without a full-size
  copy). The gradients match the reference, and on the CPU kernels they are bitwise those of the
  same ``gy`` made contiguous.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import cbam_fused as cf
from cbam_fused import reference as R

from .conftest import device_of
from .oracle import assert_close

SHAPE = (2, 24, 9, 11)


class _ForwardTies(TorchDispatchMode):
    """Records the ``ties`` argument and the returned tie operands of each fused forward op."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.name()
        if name.startswith("cbam_fused::attention_forward"):
            names = [a.name for a in func._schema.arguments]
            saved = [r.name for r in func._schema.returns]
            self.calls.append((args[names.index("ties")], {k: out[saved.index(k)] for k in ("tie_hw", "tie_c")}))
        return out


def _module(backend, ties, layout="nchw", dtype=torch.float32):
    torch.manual_seed(0)
    m = cf.CBAM(SHAPE[1], reduction=4, kernel_size=3, ties=ties, backend=backend).to(dtype).to(device_of(backend))
    x = torch.randn(SHAPE, dtype=torch.float64).to(dtype).to(device_of(backend))
    x[0, 3] = 0.0  # ties: a dead channel, and a pixel whose channels are all equal
    x[1, :, 4, 5] = 0.5
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return m, x


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("ties", ["index", "split"])
def test_inference_tracks_no_ties_and_gives_the_same_y(backend, ties, layout):
    m, x = _module(backend, ties, layout)
    with _ForwardTies() as rec:
        y_train = m(x.detach().requires_grad_())
        with torch.no_grad():
            y_no_grad = m(x)
        y_params = m(x)  # x needs no gradient, the weights do: ties tracked
        for p in m.parameters():
            p.requires_grad_(False)
        y_frozen = m(x)  # grad mode on, but nothing requires a gradient
    assert [c[0] for c in rec.calls] == [ties, "none", ties, "none"]
    for _, tie_ops in rec.calls[0::2]:
        assert all(t.numel() > 0 for t in tie_ops.values()), "training forward lost its tie operands"
    for _, tie_ops in rec.calls[1::2]:
        assert all(t.numel() == 0 for t in tie_ops.values()), "inference forward returned tie operands"
    assert y_params.requires_grad
    for y in (y_no_grad, y_params, y_frozen):
        assert torch.equal(y, y_train), "inference y differs from the training y"
    assert not y_no_grad.requires_grad and not y_frozen.requires_grad


def test_inference_mode_and_bf16(backend):
    m, x = _module(backend, "index", dtype=torch.bfloat16)
    y_train = m(x.detach().requires_grad_()).detach()
    with torch.inference_mode():
        y = m(x)
    assert torch.equal(y, y_train)


def _weights(dtype, device):
    g = torch.Generator().manual_seed(1)
    c = SHAPE[1]
    cr = c // 4

    def rand(*size, scale):
        return (torch.randn(*size, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)

    return rand(cr, c, scale=c ** -0.5), rand(c, cr, scale=cr ** -0.5), rand(1, 2, 3, 3, scale=0.2)


def test_backward_through_an_inference_forward_refuses(backend):
    _, x = _module(backend, "index")
    w1, w2, k = _weights(torch.float32, x.device)
    x = x.detach().requires_grad_()
    y = cf.attention_op.forward_op(backend)(x, w1, None, w2, None, k, None, None, None, None, None, "mlp", "avg+max",
                                            "sigmoid", "mean_max", "sigmoid", "none", 1e-5, "none", backend)[0]
    with pytest.raises(ValueError, match="ties='none'"):
        y.sum().backward()


# the upstream gradient as a caller's head makes it from y
HEADS = {
    "sum": lambda y: y.sum(),  # gy: stride 0 everywhere
    # gy: stride 0 over pixels, a value per channel (a mean's backward would divide into a dense gy)
    "sum_over_pixels": lambda y: (y.sum((2, 3)) * torch.arange(1.0, y.shape[1] + 1, device=y.device)).sum(),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("ties", ["index", "split"])
@pytest.mark.parametrize("head", list(HEADS))
def test_broadcast_gy(backend, head, ties, layout, dtype):
    _, x = _module(backend, ties, layout, dtype)
    weights = _weights(dtype, x.device)

    def fused(x, w1, w2, k):
        return cf.cbam(x, w1, w2, k, ties=ties, backend=backend)

    inputs = [t.detach().requires_grad_() for t in (x, *weights)]
    HEADS[head](fused(*inputs)).backward()
    got = [t.grad for t in inputs]
    # the same gy, made contiguous in x's layout before it reaches the op
    dense_in = [t.detach().requires_grad_() for t in (x, *weights)]
    y = fused(*dense_in)
    probe = y.detach().requires_grad_()
    (gy,) = torch.autograd.grad(HEADS[head](probe), probe)  # as autograd hands it to the op
    assert gy.stride(2) == 0 and gy.stride(3) == 0, "the head did not broadcast over pixels"
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    dense = torch.autograd.grad(y, dense_in, gy.contiguous(memory_format=fmt))
    ref_in = [t.detach().cpu().double().requires_grad_() for t in (x, *weights)]
    HEADS[head](R.cbam(*ref_in, ties=ties)).backward()
    low = dtype != torch.float32
    for i, (g, gd, r) in enumerate(zip(got, dense, ref_in)):
        assert_close(g.cpu(), r.grad, dtype, f"{head} grad {i}", outlier_fraction=0.002 if low else 0.0)
        if backend == "cpu":
            assert torch.equal(g, gd), f"{head} grad {i}: not bitwise the gradient of the contiguous gy"


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("head", list(HEADS))
def test_cpu_backward_copies_no_broadcast_gy(head, layout):
    """The C++ orchestration over the CPU kernels reads a gy broadcast over pixels as it is: no
    full-size copy of it in the backward (its [N, C] values are copied, a small tensor)."""
    from torch.profiler import ProfilerActivity, profile

    m, x = _module("cpu", "index", layout)
    y = m(x.detach().requires_grad_())
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        HEADS[head](y).backward()
    copies = [(e.name, e.input_shapes) for e in prof.events()
              if e.name in ("aten::clone", "aten::copy_", "aten::contiguous", "aten::_to_copy")
              and any(list(s) == list(SHAPE) for s in e.input_shapes)]
    assert copies == [], f"full-size copies in the backward: {copies}"
    assert any(e.name == "cbam_fused::attention_backward" for e in prof.events()), "the fused backward did not run"
