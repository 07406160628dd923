"""``cbam_fused.convert`` on real timm models and on fixtures of the official and ultralytics classes.

Each converted model is compared with its original run in float32, against the original run in
float64 as the oracle (tests/matching.py): output, the input gradient and every parameter gradient in
train and eval mode, every buffer (BN running statistics) after the step. Random data and planted
ties (an all-zero channel at the attention input). Checkpoints stay portable both ways and the
original Parameter objects stay in use.
"""
import copy
import io

import pytest
import torch
from torch import nn

import cbam_fused as cf
from cbam_fused import reference as R
from cbam_fused.convert import FusedBlock

from .conftest import device_of
from .matching import assert_matches, skip_random_on_slow
from .wild import (MapOnlyUser, OfficialCBAM, OfficialChannelGate, SiluSE, UltraCBAM, UltraChannelAttention,
                   UltraSpatialAttention)

timm = pytest.importorskip("timm")
from timm.layers.cbam import CbamModule, LightCbamModule  # noqa: E402
from timm.layers.eca import CecaModule, EcaModule  # noqa: E402
from timm.layers.squeeze_excite import EffectiveSEModule, SEModule  # noqa: E402
from timm.models.resnet import BasicBlock, ResNet  # noqa: E402


def randomize_state(model: nn.Module, seed: int) -> None:
    """Non-trivial biases and BatchNorm state everywhere (defaults hide terms: zero bias, unit BN)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(1.0 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
            for name, p in m.named_parameters(recurse=False):
                if name == "bias" and not isinstance(m, nn.modules.batchnorm._BatchNorm):
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))


def compare(original: nn.Module, converted: nn.Module, x: torch.Tensor, gy_of, training: bool, device, what: str):
    """Run the fp64 oracle, the fp32 original and the converted model; compare everything."""
    oracle = copy.deepcopy(original).double()
    runs = {}
    for name, model, dtype, dev in (("oracle", oracle, torch.float64, "cpu"), ("original", original, torch.float32, "cpu"),
                                    ("fused", converted.to(device), torch.float32, device)):
        model.train(training)
        xi = x.detach().to(dtype).to(dev).clone().requires_grad_()
        y = model(xi)
        gy = gy_of(y.shape).to(dtype).to(dev)
        params = dict(model.named_parameters())
        grads = torch.autograd.grad(y, [xi, *params.values()], gy, allow_unused=True)
        runs[name] = (y, dict(zip(["input", *params], grads)), dict(model.named_buffers()))
    (y_ref, g_ref, b_ref), (y_org, g_org, b_org), (y, g, b) = runs["oracle"], runs["original"], runs["fused"]
    assert_matches(f"{what} y", y, y_org, y_ref)
    assert g.keys() == g_ref.keys()
    for k in g_ref:
        if g_ref[k] is None:
            assert g[k] is None or not g[k].any(), f"{what}: grad of {k} should be absent"
            continue
        assert_matches(f"{what} grad {k}", g[k], g_org[k], g_ref[k])
    assert b.keys() == b_ref.keys()
    for k in b_ref:
        if b_ref[k].is_floating_point():
            assert_matches(f"{what} buffer {k}", b[k], b_org[k], b_ref[k])
        else:
            assert torch.equal(b[k].cpu(), b_ref[k]), f"{what} buffer {k}"


def gy_source(seed):
    return lambda shape: torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ----------------------------------------------------------------------------------- timm ResNets
def timm_resnet(attn: str, seed: int, ties: bool) -> nn.Module:
    torch.manual_seed(seed)
    model = ResNet(BasicBlock, [1, 1, 1, 1], channels=(16, 24, 32, 48), stem_width=16, num_classes=5, zero_init_last=False,
                   block_args=dict(attn_layer=attn))
    randomize_state(model, seed)
    if ties:  # a dead channel at the attention input: bn2 maps channel 3 to exactly zero
        with torch.no_grad():
            for block in (model.layer1[0], model.layer2[0], model.layer3[0], model.layer4[0]):
                block.bn2.weight[3] = 0.0
                block.bn2.bias[3] = 0.0
    return model


TIMM_ATTN = {"cbam": "CbamModule", "lcbam": "LightCbamModule", "se": "SEModule", "ese": "EffectiveSEModule",
             "eca": "EcaModule"}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("data", ["random", "ties"])
@pytest.mark.parametrize("attn", list(TIMM_ATTN))
def test_timm_resnet(backend, attn, data, training):
    skip_random_on_slow(backend, data)
    original = timm_resnet(attn, seed=5, ties=data == "ties")
    converted = copy.deepcopy(original)
    report = cf.convert(converted, backend=backend)
    blocks = [f"layer{i}.0.se" for i in range(1, 5)]
    assert [(p, c) for p, c, _ in report.replaced] == [(b, TIMM_ATTN[attn]) for b in blocks], str(report)
    assert not report.skipped, str(report)
    assert all(isinstance(converted.get_submodule(b), FusedBlock) and converted.get_submodule(b).backend == backend
               for b in blocks)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    compare(original, converted, x, gy_source(7), training, device_of(backend), f"timm {attn}")


def test_timm_conventions_detected():
    """The converter keeps each source's semantics: timm uses amax (split ties) and rounds C/16."""
    model = nn.Sequential(CbamModule(48), EffectiveSEModule(16), SEModule(32, add_maxpool=True),
                          LightCbamModule(40))
    report = cf.convert(model)
    assert len(report.replaced) == 4, str(report)
    cbam, ese, se_max, light = (m.recipe.flavor for m in model)
    assert model[0].channel.fc1.out_channels == 3  # round(48 / 16)
    assert (cbam.channel_pools, cbam.ties, model[0].recipe.bn) == ("avg+max", "split", "spatial.conv.bn")
    assert (ese.channel_kind, ese.channel_pools, ese.channel_gate) == ("linear", "avg", "hard_sigmoid")
    assert (se_max.channel_pools, se_max.ties) == ("light", "split")
    assert (light.channel_pools, model[3].recipe.light_conv) == ("light", True)


# ----------------------------------------------------------------------------------- blocks
def block_cases():
    return {
        "reference": lambda: R.CBAM(16, 4, 7),
        "reference_units": lambda: nn.Sequential(R.ChannelAttention(16, 4), R.SpatialAttention(3)),
        "official": lambda: OfficialCBAM(16, 4),
        "official_channel_only_max": lambda: OfficialCBAM(16, 4, pool_types=("max",), no_spatial=True),
        "ultralytics": lambda: UltraCBAM(16, 7),
        "ultralytics_k3": lambda: UltraCBAM(16, 3),
        "timm_cbam_hard": lambda: CbamModule(16, rd_ratio=0.25, gate_layer="hard_sigmoid", mlp_bias=True),
        "timm_lcbam": lambda: LightCbamModule(16, rd_ratio=0.25, spatial_kernel_size=3),
        "timm_se": lambda: SEModule(16, rd_ratio=0.25, rd_divisor=1),
        "timm_se_maxpool": lambda: SEModule(16, rd_ratio=0.25, rd_divisor=1, add_maxpool=True),
        "timm_ese_maxpool": lambda: EffectiveSEModule(16, add_maxpool=True),
        "timm_eca": lambda: EcaModule(16, kernel_size=5),
    }


EXPECTED_TIES = {"reference": "index", "reference_units": "index", "official": "index",
                 "official_channel_only_max": "index", "ultralytics": "index", "ultralytics_k3": "index",
                 "timm_cbam_hard": "split", "timm_lcbam": "split", "timm_se_maxpool": "split",
                 "timm_ese_maxpool": "split"}


def planted(seed):
    x = torch.randn(2, 16, 6, 7, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x[0, 2] = 0.0  # dead channel
    x[1, :, 3, 4] = 0.0  # every channel ties at one pixel
    return x


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("data", ["random", "ties"])
@pytest.mark.parametrize("case", list(block_cases()))
def test_block(backend, case, data, training):
    skip_random_on_slow(backend, data)
    torch.manual_seed(11)
    original = nn.Sequential(block_cases()[case]())
    randomize_state(original, 12)
    converted = copy.deepcopy(original)
    report = cf.convert(converted, backend=backend)
    assert report.replaced and not report.skipped, str(report)
    fused = [m for m in converted.modules() if isinstance(m, FusedBlock)]
    if case in EXPECTED_TIES:
        assert {m.recipe.flavor.ties for m in fused} == {EXPECTED_TIES[case]}, str(report)
    x = planted(13) if data == "ties" else torch.randn(2, 16, 6, 7, generator=torch.Generator().manual_seed(13),
                                                        dtype=torch.float64)
    compare(original, converted, x, gy_source(14), training, device_of(backend), case)


# ----------------------------------------------------------------------------------- portability
@pytest.mark.parametrize("case", ["official", "timm_lcbam", "timm_eca", "ultralytics"])
def test_state_dict_and_parameters_are_kept(case):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), block_cases()[case]())
    randomize_state(model, 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params_before = list(model.parameters())
    buffers_before = list(model.buffers())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    report = cf.convert(model)
    assert len(report.replaced) == 1 and isinstance(model[1], FusedBlock), str(report)

    after = model.state_dict()
    assert list(after) == list(before)
    for k in before:
        assert after[k].shape == before[k].shape and torch.equal(after[k], before[k]), k
    # the very same tensor objects: an optimizer built before convert trains the converted model
    assert [id(p) for p in model.parameters()] == [id(p) for p in params_before]
    assert [id(b) for b in model.buffers()] == [id(b) for b in buffers_before]
    x = torch.randn(2, 16, 6, 5)
    y0 = model(x)
    model(x).square().sum().backward()
    opt.step()
    assert not torch.equal(model(x), y0), "the optimizer step did not reach the converted block's weights"
    assert all(p.grad is not None for p in params_before if p.requires_grad)

    # checkpoints load strict=True both ways
    unconverted = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), block_cases()[case]())
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    unconverted.load_state_dict(torch.load(buf), strict=True)
    unconverted.eval(), model.eval()
    assert torch.allclose(unconverted(x), model(x), rtol=1e-5, atol=1e-6)
    randomize_state(unconverted, 9)
    model.load_state_dict(unconverted.state_dict(), strict=True)
    assert torch.allclose(unconverted(x), model(x), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------- left alone
def test_what_cannot_be_reproduced_is_left_alone():
    model = nn.Sequential(
        MapOnlyUser(16),
        SiluSE(16, 4),
        OfficialCBAM(16, 4, pool_types=("avg", "max", "lp")),
        CecaModule(16),
        EcaModule(16, use_mlp=True),
    )
    randomize_state(model, 2)
    x = torch.randn(2, 16, 5, 6)
    model.eval()
    y = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    report = cf.convert(model)
    reasons = {path: why for path, _, why in report.skipped}
    assert "attention map" in reasons["0.ca"]
    assert "SiLU" in reasons["1"]
    assert "lp" in reasons["2"] or "lp" in reasons.get("2.ChannelGate", "")
    assert "padding" in reasons["3"]
    assert "named like" in reasons["4"]  # ECA with an MLP: not a supported channel map, but reported
    # the official block with an lp pool still gets its spatial gate fused; nothing else is touched
    assert [p for p, _, _ in report.replaced] == ["2.SpatialGate"], str(report)
    assert not any(isinstance(m, FusedBlock) for i in (0, 1, 3, 4) for m in model[i].modules())
    assert torch.allclose(model(x), y, rtol=1e-5, atol=1e-6)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_root_is_not_replaced():
    block = UltraCBAM(16)
    report = cf.convert(block)
    # the root cannot be swapped in place; its units are converted on their own
    assert {p for p, _, _ in report.replaced} == {"channel_attention", "spatial_attention"}, str(report)
    assert isinstance(block, UltraCBAM)


def test_fused_modules_are_left_as_they_are():
    model = nn.Sequential(cf.CBAM(16, 4), cf.SE(16), cf.ECA(16))
    report = cf.convert(model)
    assert not report.replaced and not report.skipped
    assert [type(m) for m in model] == [cf.CBAM, cf.SE, cf.ECA]


def test_report_is_printable():
    model = nn.Sequential(UltraCBAM(16), SiluSE(16, 4))
    text = str(cf.convert(model))
    assert "replaced 1 block(s), skipped 1" in text and "UltraCBAM" in text and "SiluSE" in text


def test_units_alone_are_converted():
    model = nn.Sequential(OfficialChannelGate(16, 4), UltraChannelAttention(16), UltraSpatialAttention(7))
    randomize_state(model, 1)
    reference = copy.deepcopy(model)
    report = cf.convert(model)
    assert len(report.replaced) == 3 and not report.skipped, str(report)
    x = planted(2).float()
    assert torch.allclose(model(x), reference(x), rtol=1e-5, atol=1e-6)


def test_plain_layers_are_not_taken_for_attention():
    """A 1x1 conv C->C with a ReLU, or two 1x1 convs, look like a channel map but gate nothing."""
    model = nn.Sequential(nn.Sequential(nn.Conv2d(16, 16, 1), nn.ReLU()),
                          nn.Sequential(nn.Conv2d(16, 4, 1), nn.ReLU(), nn.Conv2d(4, 16, 1)))
    report = cf.convert(model)
    assert not report.replaced and not report.skipped, str(report)


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown backend"):
        cf.convert(nn.Sequential(UltraCBAM(16)), backend="gpu")
