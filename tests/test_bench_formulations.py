"""The benchmark's torch.compile contestants compute what the reference modules compute.

Every formulation in ``bench.formulations.FORMULATIONS``, for every reference unit, in float64: the
output and the gradients of x and of every weight, on random input and with ties planted in the max
pools. With ties, "index" formulations must match the reference module (one maximum gets the
gradient); "split" ones (amax) must match the reference with ``ties="split"``, which differs there.
"""
import pytest
import torch

from bench.formulations import FORMULATIONS, MATMUL_UNITS, build
from cbam_fused import reference

SHAPE = (2, 32, 5, 6)


def _unit(kind):
    torch.manual_seed(0)
    ref = {"CBAM": lambda: reference.CBAM(SHAPE[1], 16, 7),
           "ChannelAttention": lambda: reference.ChannelAttention(SHAPE[1], 16),
           "SpatialAttention": lambda: reference.SpatialAttention(7)}[kind]()
    ref = ref.double()
    for p in ref.parameters():  # sizeable weights, so that every gate value is distinct
        p.data.normal_(0.0, 0.5)
    return ref


def _split_oracle(ref):
    """The same unit through the functional reference with ties="split"."""
    def weights(ch):
        return ch.shared_MLP[0].weight.flatten(1), ch.shared_MLP[2].weight.flatten(1)

    if isinstance(ref, reference.CBAM):
        return lambda x: reference.cbam(x, *weights(ref.channel_attention), ref.spatial_attention.conv2d.weight,
                                        ties="split")
    if isinstance(ref, reference.ChannelAttention):
        return lambda x: reference.channel_attention(x, *weights(ref), ties="split")
    return lambda x: reference.spatial_attention(x, ref.conv2d.weight, ties="split")


def _input(ties: bool):
    torch.manual_seed(1)
    x = torch.randn(SHAPE, dtype=torch.float64)
    if ties:
        x[0, :, 2, 3] = 0.0  # every channel equal at one pixel (stays so after the channel gate): max over C ties
        x[1, 1] = 0.5  # a constant channel: max over H, W ties
        x[1, 4, 0, 0] = x[1, 4, 4, 5] = x[1, 4].max() + 1.0  # two maxima in one channel
    return x


def _grads(fn, params, x, gy):
    x = x.clone().requires_grad_(True)
    y = fn(x)
    return (y.detach(), *torch.autograd.grad(y, [x, *params], gy))


def _check(got, want):
    for g, w in zip(got, want):
        torch.testing.assert_close(g.reshape(w.shape), w, rtol=1e-10, atol=1e-12)


UNITS = [cls.__name__ for cls in MATMUL_UNITS]


def test_every_unit_has_a_matmul_formulation():
    assert set(UNITS) == {"CBAM", "ChannelAttention", "SpatialAttention"}


@pytest.mark.parametrize("ties", [False, True], ids=["random", "ties"])
@pytest.mark.parametrize("unit", UNITS)
@pytest.mark.parametrize("name", list(FORMULATIONS))
def test_formulation_matches_reference(name, unit, ties):
    ref = _unit(unit)
    mod = build(name, ref)
    x = _input(ties)
    gy = torch.randn(SHAPE, dtype=torch.float64)
    got = _grads(mod, list(mod.parameters()), x, gy)
    ref_params = list(ref.parameters())
    assert [p.numel() for p in mod.parameters()] == [p.numel() for p in ref_params]  # same weights, same order
    want = _grads(ref, ref_params, x, gy)
    if FORMULATIONS[name].ties == "index" or not ties:
        _check(got, want)
    else:  # amax shares the gradient among equal maxima: the reference's ties="split", not the module
        _check(got, _grads(_split_oracle(ref), ref_params, x, gy))
        assert not torch.allclose(got[1], want[1])


@pytest.mark.parametrize("unit", UNITS)
def test_planted_ties_matter(unit):
    """The control: the planted ties do change the gradient between the two tie rules."""
    ref = _unit(unit)
    x, gy = _input(True), torch.randn(SHAPE, dtype=torch.float64)
    params = list(ref.parameters())
    index, split = _grads(ref, params, x, gy), _grads(_split_oracle(ref), params, x, gy)
    torch.testing.assert_close(index[0], split[0], rtol=1e-12, atol=1e-12)  # same output
    assert not torch.allclose(index[1], split[1])
