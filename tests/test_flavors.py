"""Every flavor of the fused modules against an eager oracle (tests/wild.py), on every CI backend.

For each flavor: outputs, the input gradient and every parameter gradient, in train and eval mode,
and the BatchNorm running statistics after a training step; on random data and with planted ties.
The criterion is tests/matching.py (fp64 oracle; fused error <= 2 x eager fp32 error + atol).
"""
import copy
import math

import pytest
import torch
from torch import nn

import cbam_fused as cf
from cbam_fused import reference as R

from .conftest import device_of
from .matching import assert_matches, skip_random_on_slow
from .wild import eager_cbam

SHAPE = (2, 16, 5, 6)

FLAVORS = {
    "default": {},
    "biases": dict(mlp_bias=True, conv_bias=True),
    "hidden3": dict(hidden=3),
    "pools_avg": dict(channel_pools="avg"),
    "pools_max": dict(channel_pools="max"),
    "light": dict(channel_pools="light", ties="split"),
    "linear": dict(channel_kind="linear", channel_pools="avg"),
    "max_mean": dict(spatial_order="max_mean"),
    "bn": dict(spatial_bn=True),
    "bn_cumulative": dict(spatial_bn=True, bn_momentum=None),
    "gates": dict(channel_gate="hard_sigmoid", spatial_gate="keras_hard_sigmoid"),
    "split": dict(ties="split"),
    "k3": dict(kernel_size=3),
    "k11": dict(kernel_size=11),
    "official": dict(mlp_bias=True, spatial_order="max_mean", spatial_bn=True, bn_momentum=0.01),
    "keras": dict(mlp_bias=True, gate="keras_hard_sigmoid", reduction=8),
    "timm": dict(hidden=1, ties="split", spatial_bn=True),
    "spatial_channel": dict(arrangement="spatial_channel", spatial_bn=True, ties="split"),
    "spatial_channel_index": dict(arrangement="spatial_channel", mlp_bias=True),
    "parallel": dict(arrangement="parallel", spatial_bn=True),
    "parallel_hard_split": dict(arrangement="parallel", gate="hard_sigmoid", ties="split", mlp_bias=True,
                                conv_bias=True),
}


def make_input(seed, data, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    if data == "ties":
        x[0, 1] = 0.0  # a dead channel: all its pixels tie for the max
        x[1, :, 2, 3] = 0.0  # a pixel where every channel ties
    return x.to(dtype)


def randomize(module: nn.Module, seed: int) -> None:
    """Random weights, biases and BatchNorm state (the defaults would hide terms: zero biases, unit BN)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) * (0.1 if p.dim() == 1 else fan_in ** -0.5))
            if name.endswith("bn.weight"):
                p.add_(1.0)
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.2)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)


def roles(m: cf.CBAM) -> dict:
    """Fused module parameter per oracle weight name."""
    ca, sa = m.channel_attention, m.spatial_attention
    out = {}
    if hasattr(ca, "fc"):
        out.update(w1=ca.fc.weight, b1=ca.fc.bias)
    else:
        out.update(w1=ca.shared_MLP[0].weight, b1=ca.shared_MLP[0].bias, w2=ca.shared_MLP[2].weight,
                   b2=ca.shared_MLP[2].bias)
    out.update(conv_w=sa.conv2d.weight, conv_b=sa.conv2d.bias)
    if hasattr(sa, "bn"):
        out.update(bn_w=sa.bn.weight, bn_b=sa.bn.bias)
    return {k: v for k, v in out.items() if v is not None}


def run_eager(m: cf.CBAM, opts: dict, x: torch.Tensor, gy: torch.Tensor, training: bool, dtype):
    """The oracle (dtype float64) or the original-in-the-same-dtype run: (y, grads by name, bn)."""
    params = {k: v.detach().to(dtype) for k, v in roles(m).items()}
    for k in ("w1", "w2"):
        if k in params:
            params[k] = params[k].flatten(1)
    bn = None
    if hasattr(m.spatial_attention, "bn"):
        bn = copy.deepcopy(m.spatial_attention.bn).to(dtype).train(training)
        params["bn_w"], params["bn_b"] = bn.weight, bn.bias
    for t in params.values():
        t.requires_grad_()
    xi = x.detach().to(dtype).clone().requires_grad_()
    y = eager_cbam(xi, params, opts, bn)
    names = list(params)
    grads = torch.autograd.grad(y, [xi] + [params[k] for k in names], gy.to(dtype))
    return y, dict(zip(["x"] + names, grads)), bn


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("data", ["random", "ties"])
@pytest.mark.parametrize("flavor", list(FLAVORS))
def test_cbam_flavor(backend, flavor, data, training):
    skip_random_on_slow(backend, data)
    device = device_of(backend)
    opts = dict(FLAVORS[flavor])
    reduction = opts.pop("reduction", 4)
    kernel_size = opts.pop("kernel_size", 7)
    m = cf.CBAM(SHAPE[1], reduction, kernel_size, **opts, backend=backend)
    randomize(m, seed=len(flavor))
    m.train(training)
    x = make_input(7, data)
    gy = torch.randn(SHAPE, generator=torch.Generator().manual_seed(8), dtype=torch.float64)

    y_ref, g_ref, bn_ref = run_eager(m, opts, x, gy, training, torch.float64)
    y_org, g_org, bn_org = run_eager(m, opts, x, gy, training, torch.float32)

    m = m.to(device)
    xf = x.detach().to(torch.float32).to(device).clone().requires_grad_()
    y = m(xf)
    assert y.dtype == torch.float32 and y.shape == SHAPE
    y.backward(gy.to(torch.float32).to(device))
    assert_matches(f"{flavor} y", y, y_org, y_ref)
    assert_matches(f"{flavor} grad x", xf.grad, g_org["x"], g_ref["x"])
    for name, p in roles(m).items():
        assert_matches(f"{flavor} grad {name}", p.grad.reshape(g_ref[name].shape), g_org[name], g_ref[name])
    if bn_ref is not None:
        bn = m.spatial_attention.bn
        for buf in ("running_mean", "running_var"):
            assert_matches(f"{flavor} bn {buf}", getattr(bn, buf), getattr(bn_org, buf), getattr(bn_ref, buf))
        assert int(bn.num_batches_tracked) == int(bn_ref.num_batches_tracked) == int(training)


def test_bn_cumulative_average_over_steps(backend):
    """momentum=None: the running estimate is the plain average of the batch estimates so far."""
    device = device_of(backend)
    m = cf.CBAM(16, 4, 3, spatial_bn=True, bn_momentum=None, backend=backend).to(device).train()
    seen_means, seen_vars = [], []
    for step in range(3):
        x = make_input(step, "random", torch.float32).to(device) * (step + 1)
        m(x)
        with torch.no_grad():  # the conv output the BN saw, from the fused module's own pieces
            ca, sa = m.channel_attention, m.spatial_attention
            x1 = R.channel_attention(x, ca.shared_MLP[0].weight.flatten(1), ca.shared_MLP[2].weight.flatten(1))
            q = torch.cat([x1.mean(1, keepdim=True), x1.amax(1, keepdim=True)], 1)
            c = torch.nn.functional.conv2d(q, sa.conv2d.weight, padding=1)
        seen_means.append(c.mean().item())
        seen_vars.append(c.var(correction=1).item())
    bn = m.spatial_attention.bn
    assert int(bn.num_batches_tracked) == 3
    # the cumulative average starts from the initial running mean 0 / var 1 and weighs each batch 1/k
    expected_mean, expected_var = 0.0, 1.0
    for k, (mu, var) in enumerate(zip(seen_means, seen_vars), start=1):
        expected_mean += (mu - expected_mean) / k
        expected_var += (var - expected_var) / k
    assert math.isclose(bn.running_mean.item(), expected_mean, rel_tol=1e-4, abs_tol=1e-5)
    assert math.isclose(bn.running_var.item(), expected_var, rel_tol=1e-4, abs_tol=1e-5)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_se_and_eca(backend, training):
    device = device_of(backend)
    x = make_input(3, "ties")
    gy = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    se = cf.SE(16, 4, backend=backend)
    eca = cf.ECA(16, backend=backend)
    randomize(se, 1)
    randomize(eca, 2)

    def se_eager(x, p):
        h = torch.relu(torch.nn.functional.linear(x.mean((2, 3)), p["fc1.weight"].flatten(1), p["fc1.bias"]))
        return x * torch.sigmoid(torch.nn.functional.linear(h, p["fc2.weight"].flatten(1), p["fc2.bias"]))[..., None, None]

    def eca_eager(x, p):
        w = p["conv.weight"]
        v = torch.nn.functional.conv1d(x.mean((2, 3))[:, None, :], w, padding=(w.shape[-1] - 1) // 2)[:, 0]
        return x * torch.sigmoid(v)[..., None, None]

    for module, eager in ((se, se_eager), (eca, eca_eager)):
        module.train(training)
        results = {}
        for dtype in (torch.float64, torch.float32):
            p = {k: v.detach().to(dtype).requires_grad_() for k, v in module.named_parameters()}
            xi = x.detach().to(dtype).clone().requires_grad_()
            y = eager(xi, p)
            results[dtype] = (y, torch.autograd.grad(y, [xi, *p.values()], gy.to(dtype)))
        module = module.to(device)
        xf = x.detach().to(torch.float32).to(device).clone().requires_grad_()
        y = module(xf)
        y.backward(gy.to(torch.float32).to(device))
        name = type(module).__name__
        assert_matches(f"{name} y", y, results[torch.float32][0], results[torch.float64][0])
        fused_grads = [xf.grad] + [p.grad for p in module.parameters()]
        for i, g in enumerate(fused_grads):
            assert_matches(f"{name} grad {i}", g, results[torch.float32][1][i], results[torch.float64][1][i])


@pytest.mark.parametrize("channels,k", [(1, 1), (4, 1), (16, 3), (64, 3), (256, 5), (512, 5), (2048, 7)])
def test_eca_kernel_size(channels, k):
    # worked by hand from k = |log2(C)/2 + 1/2| made odd: e.g. C=256 -> 4.5 -> 4 -> 5; C=2048 -> 6 -> 7
    assert cf.modules.eca_kernel_size(channels) == k
    assert cf.ECA(channels).conv.kernel_size == (k,)


def test_default_state_dict_is_the_reference():
    ref, fused = R.CBAM(32, 16, 7), cf.CBAM(32, 16, 7)
    assert {k: v.shape for k, v in ref.state_dict().items()} == {k: v.shape for k, v in fused.state_dict().items()}
    fused.load_state_dict(ref.state_dict(), strict=True)
    ref.load_state_dict(fused.state_dict(), strict=True)


@pytest.mark.parametrize("kwargs,message", [
    (dict(gate="tanh"), "gate"),
    (dict(channel_pools="lse"), "channel_pools"),
    (dict(spatial_order="mean_min"), "spatial_order"),
    (dict(ties="random"), "ties"),
    (dict(arrangement="diagonal"), "arrangement"),
    (dict(arrangement="parallel", channel_gate="hard_sigmoid"), "one gate"),
    (dict(channel_kind="conv1d"), "ECA"),
    (dict(hidden=0), "hidden"),
])
def test_bad_options_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        cf.CBAM(16, 4, **kwargs)


def test_bad_kernel_sizes_raise():
    for k in (0, 4, -3):
        with pytest.raises(ValueError, match="kernel_size"):
            cf.CBAM(16, 4, k)
    with pytest.raises(ValueError, match="kernel_size"):
        cf.ECA(16, kernel_size=2)
    with pytest.raises(ValueError, match="channels"):
        cf.ECA()


def test_bn_training_needs_more_than_one_value():
    m = cf.CBAM(8, 4, 3, spatial_bn=True, backend="torch").train()
    with pytest.raises(ValueError, match="more than 1 value"):
        m(torch.randn(1, 8, 1, 1))


@pytest.mark.parametrize("arrangement", ["channel_spatial", "spatial_channel", "parallel"])
def test_arrangements_channels_last(backend, arrangement):
    device = device_of(backend)
    opts = dict(arrangement=arrangement, spatial_bn=True, ties="split")
    m = cf.CBAM(SHAPE[1], 4, 3, **opts, backend=backend)
    randomize(m, 5)
    m.train()
    x = make_input(9, "ties")
    gy = torch.randn(SHAPE, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    y_ref, g_ref, _ = run_eager(m, opts, x, gy, True, torch.float64)
    y_org, g_org, _ = run_eager(m, opts, x, gy, True, torch.float32)
    m = m.to(device)
    xf = x.to(torch.float32).to(device).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = m(xf)
    assert y.is_contiguous(memory_format=torch.channels_last), "the output lost the channels_last layout"
    y.backward(gy.to(torch.float32).to(device).contiguous(memory_format=torch.channels_last))
    assert_matches(f"{arrangement} y", y, y_org, y_ref)
    assert_matches(f"{arrangement} grad x", xf.grad, g_org["x"], g_ref["x"])
    for name, p in roles(m).items():
        assert_matches(f"{arrangement} grad {name}", p.grad.reshape(g_ref[name].shape), g_org[name], g_ref[name])


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_bn_without_running_stats(backend, training):
    """track_running_stats=False: batch statistics in eval mode too, and no buffers to update."""
    device = device_of(backend)
    m = cf.CBAM(SHAPE[1], 4, 3, spatial_bn=True, backend=backend)
    m.spatial_attention.bn = nn.BatchNorm2d(1, track_running_stats=False)
    randomize(m, 6)
    m.train(training)
    x = make_input(11, "random")
    gy = torch.randn(SHAPE, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    y_ref, g_ref, _ = run_eager(m, {}, x, gy, training, torch.float64)
    y_org, g_org, _ = run_eager(m, {}, x, gy, training, torch.float32)
    m = m.to(device)
    xf = x.to(torch.float32).to(device).requires_grad_()
    y = m(xf)
    y.backward(gy.to(torch.float32).to(device))
    assert_matches("y", y, y_org, y_ref)
    assert_matches("grad x", xf.grad, g_org["x"], g_ref["x"])
    assert_matches("grad bn_w", m.spatial_attention.bn.weight.grad, g_org["bn_w"], g_ref["bn_w"])
