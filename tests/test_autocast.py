"""Autocast policy: the fused ops compute in x's dtype with fp32 accumulation and return x's dtype.

Under autocast, the floating-point weights are cast to x's dtype (the modules always do this; the
functional API does it when autocast is on), and autocast does not reach the small steps inside the
op (MLP, conv), which stay in fp32. So under autocast the result is bitwise the result of the same
call outside autocast with the weights cast to x's dtype.
"""
import pytest
import torch
from torch import nn

import cbam_fused as cf
from cbam_fused import reference as R

from .conftest import device_of
from .oracle import assert_close
from .test_correctness import make_inputs

# autocast dtype per device type
AUTOCAST = {"cpu": torch.bfloat16, "cuda": torch.float16}


def _autocast(device):
    return torch.autocast(device, dtype=AUTOCAST[device])


def _fused_and_ref(backend, seed=0):
    torch.manual_seed(seed)
    fused = cf.CBAM(32, reduction=4, kernel_size=7, backend=backend).to(device_of(backend))
    ref = R.CBAM(32, reduction=4, kernel_size=7).to(device_of(backend))
    ref.load_state_dict(fused.state_dict())
    return fused, ref


def test_module_after_autocast_conv(backend):
    """A conv under autocast hands a low-precision x to a fused CBAM with fp32 parameters."""
    device = device_of(backend)
    lowp = AUTOCAST[device]
    fused, ref = _fused_and_ref(backend)
    conv = nn.Conv2d(8, 32, 3, padding=1).to(device)
    x = torch.randn(2, 8, 9, 11, device=device)
    with _autocast(device):
        h = conv(x)
        y = fused(h)
    assert h.dtype == lowp and y.dtype == lowp, (h.dtype, y.dtype)

    # outside autocast, with the weights rounded to the low precision: bitwise the same
    h_plain = h.detach()
    w = fused.channel_attention.shared_MLP
    y_plain = cf.cbam(h_plain, w[0].weight.flatten(1).to(lowp), w[2].weight.flatten(1).to(lowp),
                      fused.spatial_attention.conv2d.weight.to(lowp), backend=backend)
    assert torch.equal(y.detach(), y_plain)

    # and close to the fp64 reference on the same (rounded) values
    ref64 = ref.double()
    for p_ref, p in zip(ref64.parameters(), fused.parameters()):
        p_ref.data.copy_(p.data.to(lowp).double())
    assert_close(y, ref64(h_plain.double()), lowp, "autocast y")

    # gradients come back to the fp32 parameters in fp32 (autocast's contract for leaves)
    y.float().square().mean().backward()
    for name, p in list(fused.named_parameters()) + list(conv.named_parameters()):
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_input_dtype_is_kept(backend, dtype):
    """Whatever x's dtype, autocast changes nothing: same dtype out, bitwise the same values."""
    device = device_of(backend)
    fused, _ = _fused_and_ref(backend, seed=1)
    fused = fused.to(dtype)
    x = torch.randn(2, 32, 6, 7, device=device).to(dtype)
    plain = fused(x)
    with _autocast(device):
        auto = fused(x)
    assert auto.dtype == dtype
    assert torch.equal(auto, plain), "autocast leaked into the fused op's small steps"


def test_functional_casts_weights_under_autocast(backend):
    device = device_of(backend)
    lowp = AUTOCAST[device]
    inp = make_inputs((2, 16, 5, 6), torch.float32, "nchw", device, reduction=4)
    x = inp["x"].to(lowp)
    args = (inp["w1"], inp["w2"], inp["k"], inp["b1"], inp["b2"], inp["kb"])
    with pytest.raises(TypeError, match="dtype"):  # outside autocast, mixed dtypes are an error
        cf.cbam(x, *args, backend=backend)
    with _autocast(device):
        y = cf.cbam(x, *args, backend=backend)
    expected = cf.cbam(x, *(t.to(lowp) for t in args), backend=backend)
    assert y.dtype == lowp and torch.equal(y, expected)


def test_backward_inside_autocast(backend):
    """Calling backward inside the autocast region (discouraged, but common) gives the same gradients."""
    device = device_of(backend)
    fused, _ = _fused_and_ref(backend, seed=2)
    x = torch.randn(2, 32, 6, 7, device=device).to(AUTOCAST[device])
    grads = []
    for inside in (False, True):
        fused.zero_grad(set_to_none=True)
        with _autocast(device):
            y = fused(x)
            if inside:
                y.float().sum().backward()
        if not inside:
            y.float().sum().backward()
        grads.append([p.grad.clone() for p in fused.parameters()])
    for a, b in zip(*grads):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_eager_composite_follows_the_policy(dtype):
    """backend="torch" (stock ops, also the export path) keeps the same policy."""
    test_input_dtype_is_kept("torch", dtype)
    test_functional_casts_weights_under_autocast("torch")
