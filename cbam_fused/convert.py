"""``convert(model)``: replace, in place, every CBAM-like block the fused ops reproduce exactly.

Blocks are recognised by structure, not by class: users keep their own copies of these classes.

1. **Structure.** The parameterised layers of a module must be exactly a channel map and/or a spatial
   conv: two 1x1 convs or Linear layers C->Cr->C (shared MLP), one 1x1 conv or Linear C->C (single
   layer, ultralytics / timm EffectiveSE) or a Conv1d(1, 1, k) (ECA); a Conv2d(2 or 1, 1, K, padding
   K//2), optionally followed by a BatchNorm with one feature. The parameter-free modules inside
   are probed elementwise: ReLU, sigmoid-like gates and identities are fine, anything else
   (SiLU, GELU, ...) is reported as unsupported. Official-style ``pool_types`` with ``lp``/``lse`` and
   BatchNorm subclasses with an activation are reported too.
2. **Numbers.** Structure cannot tell everything: LightCBAM and CBAM have the same layers, ``amax``
   and ``torch.max`` differ only on ties, a copy may return the attention map only and leave the
   multiply to its caller. So each candidate flavor is run, in float64 on copies, against the
   original on a probe with planted ties (a dead channel, a pixel where all channels are equal), in
   train and eval mode: output, gradients of the input and of every parameter, and the BatchNorm
   buffers after the step must agree. The first candidate that agrees is used; if none does the
   module is left alone and the report says why.

The replacement, ``FusedBlock``, adopts the original's child modules (the same ``Parameter`` and
buffer objects, so an optimizer built before ``convert`` keeps training them and ``state_dict`` keys,
shapes and values are unchanged) and never calls their ``forward``: it reads their weights on every
call and runs the fused op.
"""
from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import modules as _fused_modules
from . import backends, ops
from .modules import Flavor, run_attention

__all__ = ["convert", "ConvertReport", "FusedBlock"]

# class names of channel/spatial attention blocks: an unrecognised one is reported, not passed over silently
_ATTENTION_LIKE = re.compile(r"Cbam|CBAM|Ceca|Eca[A-Z]|^Eca$|ECA|Squeeze|Excit|EffectiveSE|^E?SE(Module|Block|Layer)?$|"
                             r"(Channel|Spatial)_?(Gate|Attn|Attention)")
_GATE_KINDS = ("sigmoid", "hard_sigmoid", "keras_hard_sigmoid")
_PROBE_TOL = 1e-6  # relative to the largest magnitude; fp64 runs differ by ~1e-15, hard-sigmoid by ~3e-8


# --------------------------------------------------------------------------------- the replacement
@dataclass(frozen=True)
class Recipe:
    """Where a block keeps its weights (paths inside the block) and how the fused op reads them."""

    flavor: Flavor
    w1: Optional[str] = None
    b1: Optional[str] = None
    w2: Optional[str] = None
    b2: Optional[str] = None
    conv_weight: Optional[str] = None
    conv_bias: Optional[str] = None
    bn: Optional[str] = None
    light_conv: bool = False  # Conv2d(1, 1, K) on 0.5*mean + 0.5*max: read as [0.5 W, 0.5 W] over [mean, max]


def _get(module: nn.Module, path: Optional[str]):
    if path is None:
        return None
    owner, _, name = path.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, name)


class FusedBlock(nn.Module):
    """A converted block: the original's children and tensors, run by the fused op."""

    def __init__(self, original: nn.Module, recipe: Recipe, source: str, backend: Optional[str] = None):
        super().__init__()
        for name, child in original.named_children():
            self.add_module(name, child)
        for name, p in original.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in original.named_buffers(recurse=False):
            self.register_buffer(name, b, persistent=name not in original._non_persistent_buffers_set)
        self.recipe = recipe
        self.source = source
        self.backend = backend

    def _weights(self) -> dict:
        r = self.recipe
        w = {k: _get(self, getattr(r, k)) for k in ("w1", "b1", "w2", "b2", "conv_weight", "conv_bias")}
        # 1x1 conv weights go to the op as they are: it reads [rows, cols, 1, 1] as the matrix
        if r.light_conv:  # applied on every call, differentiably; nothing is folded into the stored weight
            w["conv_weight"] = torch.cat([w["conv_weight"], w["conv_weight"]], dim=1) * 0.5
        w["bn"] = None if r.bn is None else self.get_submodule(r.bn)
        return w

    def forward(self, x: Tensor) -> Tensor:
        return run_attention(x, self.recipe.flavor, **self._weights(), backend=self.backend)

    def extra_repr(self) -> str:
        f = self.recipe.flavor
        return (f"source={self.source}, channel={f.channel_kind}/{f.channel_pools}/{f.channel_gate}, "
                f"spatial={f.spatial_order}/{f.spatial_gate}{'/bn' if self.recipe.bn else ''}, ties={f.ties}, "
                f"arrangement={f.arrangement}, backend={self.backend}")


# ------------------------------------------------------------------------------------- the report
@dataclass
class ConvertReport:
    replaced: list = field(default_factory=list)  # (path, original class name, FusedBlock.extra_repr())
    skipped: list = field(default_factory=list)  # (path, class name, reason)

    def __str__(self) -> str:
        lines = [f"replaced {len(self.replaced)} block(s), skipped {len(self.skipped)}"]
        lines += [f"  + {p or '<root>'} ({c}): {d}" for p, c, d in self.replaced]
        lines += [f"  - {p or '<root>'} ({c}): {r}" for p, c, r in self.skipped]
        return "\n".join(lines)


class _Skip(Exception):
    """The module looks like an attention block but cannot be reproduced exactly; the message says why."""


# ------------------------------------------------------------------------------------- structure
def _elementwise_kind(module: nn.Module) -> Optional[str]:
    """Probe a parameter-free module elementwise: relu, a gate name, identity, another function
    (returned as "other"), or None when it is not elementwise (pools, flatten, concatenation)."""
    z = torch.linspace(-7.0, 7.0, 141, dtype=torch.float64).reshape(1, 141, 1, 1)
    try:
        probe = copy.deepcopy(module).to(torch.float64).eval()
        out = probe(z.clone())
    except Exception:  # a module that cannot take a plain tensor is not elementwise
        return None
    if not isinstance(out, Tensor) or out.shape != z.shape:
        return None
    known = {
        "identity": z,
        "relu": F.relu(z),
        "sigmoid": torch.sigmoid(z),
        "hard_sigmoid": F.hardsigmoid(z),
        "keras_hard_sigmoid": (0.2 * z + 0.5).clamp(0.0, 1.0),
    }
    for name, ref in known.items():
        if torch.allclose(out, ref, rtol=1e-9, atol=1e-12):
            return name
    return "other"


def _is_1x1(m: nn.Module) -> bool:
    return (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride == (1, 1)
            and m.dilation == (1, 1) and m.groups == 1 and tuple(m.padding) == (0, 0))


def _dense_io(m: nn.Module) -> Optional[tuple[int, int]]:
    """(in, out) of a layer that acts as a matrix on pooled vectors: a plain 1x1 conv or a Linear."""
    if _is_1x1(m):
        return m.in_channels, m.out_channels
    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features
    return None


def _spatial_conv_ok(m: nn.Module) -> Optional[str]:
    """None if ``m`` is a Conv2d(2 or 1, 1, K) with K odd, stride 1, zero padding K//2; else a reason."""
    k = m.kernel_size
    if m.out_channels != 1 or m.in_channels not in (1, 2):
        return f"Conv2d({m.in_channels}, {m.out_channels}) is not a spatial-attention conv"
    if k[0] != k[1] or k[0] % 2 != 1:
        return f"spatial conv kernel {k} is not square and odd"
    if m.stride != (1, 1) or m.dilation != (1, 1) or m.groups != 1 or m.padding_mode != "zeros":
        return "spatial conv has a stride, dilation, groups or non-zero padding mode"
    if tuple(m.padding) != (k[0] // 2, k[1] // 2):
        return f"spatial conv padding {m.padding} is not K//2 = {k[0] // 2}"
    return None


def _structure(block: nn.Module) -> dict:
    """Find the channel map and the spatial conv among the block's parameterised layers.

    Returns the recipe fields plus ``channels`` and the elementwise modules found; raises ``_Skip``
    with a reason when the layers look like an attention block that cannot be reproduced, and
    returns an empty dict when they do not look like one at all.
    """
    layers = [(p, m) for p, m in block.named_modules() if p and any(True for _ in m.parameters(recurse=False))]
    if not layers or any(True for _ in block.parameters(recurse=False)):
        return {}
    out: dict = {}
    rest = list(layers)
    # the spatial conv (and its BatchNorm) are the trailing layers in registration order
    bn_path = None
    if rest and isinstance(rest[-1][1], nn.modules.batchnorm._BatchNorm) and rest[-1][1].num_features == 1:
        bn_path, bn = rest.pop()
        if isinstance(bn, nn.SyncBatchNorm):
            raise _Skip("SyncBatchNorm after the spatial conv: its statistics span processes")
        for attr in ("act", "drop"):
            sub = getattr(bn, attr, None)
            if isinstance(sub, nn.Module) and _elementwise_kind(sub) != "identity":
                raise _Skip(f"the BatchNorm's {attr} ({type(sub).__name__}) is not an identity")
    if rest and type(rest[-1][1]) is nn.Conv2d and rest[-1][1].out_channels == 1 and rest[-1][1].in_channels in (1, 2):
        path, conv = rest.pop()
        reason = _spatial_conv_ok(conv)
        if reason:
            raise _Skip(reason)
        out.update(conv_weight=f"{path}.weight", conv_bias=f"{path}.bias" if conv.bias is not None else None,
                   light_conv=conv.in_channels == 1, bn=bn_path)
    elif bn_path is not None:
        return {}
    # the channel map
    if len(rest) == 2 and type(rest[0][1]) is type(rest[1][1]):
        (p1, l1), (p2, l2) = rest
        io1, io2 = _dense_io(l1), _dense_io(l2)
        if io1 is None or io2 is None or io1[1] != io2[0] or io2[1] != io1[0]:
            return {}
        out.update(kind="mlp", channels=io1[0], w1=f"{p1}.weight", b1=f"{p1}.bias" if l1.bias is not None else None,
                   w2=f"{p2}.weight", b2=f"{p2}.bias" if l2.bias is not None else None)
    elif len(rest) == 1:
        p1, l1 = rest[0]
        io = _dense_io(l1)
        if io is not None and io[0] == io[1]:
            out.update(kind="linear", channels=io[0], w1=f"{p1}.weight",
                       b1=f"{p1}.bias" if l1.bias is not None else None)
        elif type(l1) is nn.Conv1d and l1.in_channels == 1 and l1.out_channels == 1:
            k = l1.kernel_size[0]
            if k % 2 != 1 or l1.stride != (1,) or l1.dilation != (1,) or l1.padding_mode != "zeros":
                raise _Skip("Conv1d across channels is not odd-sized, unit-stride, zero-padded")
            if tuple(l1.padding) != ((k - 1) // 2,):
                raise _Skip(f"Conv1d padding {l1.padding} is not (k-1)//2 = {(k - 1) // 2} "
                            "(a circular or manual padding is not reproduced)")
            out.update(kind="conv1d", w1=f"{p1}.weight", b1=f"{p1}.bias" if l1.bias is not None else None)
        else:
            return {}
    elif rest:
        return {}
    if "kind" not in out and "conv_weight" not in out:
        return {}
    # parameter-free modules: pools, flatten, ReLU, gates; anything else elementwise is unsupported
    kinds = {}
    for p, m in block.named_modules():
        if p and next(m.children(), None) is None and next(m.parameters(), None) is None:
            kind = _elementwise_kind(m)
            if kind is not None:
                kinds[p] = kind
    hints = {}
    for m in block.modules():
        if isinstance(getattr(m, "pool_types", None), (list, tuple)):
            hints["pool_types"] = list(m.pool_types)
        if isinstance(getattr(m, "add_maxpool", None), bool):
            hints["add_maxpool"] = m.add_maxpool
    # a plain layer stack (say a 1x1 conv and a ReLU) is no attention block: ask for a gate module,
    # an attention-like class name or the official code's pool list before probing
    gated = any(k in _GATE_KINDS for k in kinds.values()) or _ATTENTION_LIKE.search(type(block).__name__)
    if not (gated or hints):
        return {}
    for p, kind in kinds.items():
        if kind == "other":
            raise _Skip(f"{p} ({type(block.get_submodule(p)).__name__}) is an elementwise function the fused ops "
                        "do not have (only ReLU inside the MLP and sigmoid / hard-sigmoid gates are)")
    bad = [t for t in hints.get("pool_types", []) if t not in ("avg", "max")]
    if bad:
        raise _Skip(f"pool types {bad} (only avg and max pools are fused)")
    out.update(hints)
    out["elementwise"] = kinds
    return out


def _candidates(s: dict):
    """Flavors to try, most likely first."""
    kind = s.get("kind")
    spatial = "conv_weight" in s
    if kind is None:
        pools = ["avg+max"]
    elif "pool_types" in s:
        pt = set(s["pool_types"])
        pools = ["avg+max" if pt == {"avg", "max"} else pt.pop()] if pt else []
    elif "add_maxpool" in s:
        pools = ["light" if s["add_maxpool"] else "avg"]
    elif kind == "mlp":
        pools = ["avg+max", "light", "avg", "max"]
    else:
        pools = ["avg", "light", "avg+max", "max"]
    gates = [k for k in dict.fromkeys(s["elementwise"].values()) if k not in ("relu", "identity")] or ["sigmoid"]
    if "sigmoid" not in gates:
        gates.append("sigmoid")  # a gate applied in forward as a function leaves no module behind
    orders = ["mean_max", "max_mean"] if spatial and not s.get("light_conv") else ["mean_max"]
    arrangements = ["channel_spatial", "spatial_channel"] if kind and spatial else ["channel_spatial"]
    seen = set()
    for arr, pool, order, cg, sg, ties in itertools.product(arrangements, pools, orders, gates, gates,
                                                            ("index", "split")):
        uses_max = spatial or pool != "avg"
        f = Flavor(channel_kind=kind or "mlp", channel_pools=pool, channel_gate=cg if kind else "sigmoid",
                   spatial_order=order, spatial_gate=sg if spatial else "sigmoid",
                   ties=ties if uses_max else "index", arrangement=arr)
        if f not in seen:
            seen.add(f)
            yield f


def _recipe(s: dict, flavor: Flavor) -> Recipe:
    return Recipe(flavor=flavor, **{k: s.get(k) for k in ("w1", "b1", "w2", "b2", "conv_weight", "conv_bias", "bn")},
                  light_conv=bool(s.get("light_conv")))


# ------------------------------------------------------------------------------------- numbers
def _probe_input(channels: int) -> Tensor:
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(2, channels, 6, 5, generator=g, dtype=torch.float64)
    x[0, min(1, channels - 1)] = 0.0  # a dead channel: every pixel ties for its max
    x[1, :, 2, 3] = 0.0  # a pixel where all channels tie
    return x


def _run(module: nn.Module, x: Tensor, gy: Tensor, train: bool):
    module.train(train)
    xi = x.clone().requires_grad_()
    y = module(xi)
    if not isinstance(y, Tensor) or y.shape != x.shape:
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise _Skip(f"returns {shape} for an input of shape {tuple(x.shape)}: it gives the attention map only "
                    "(its caller multiplies), which leaves nothing to fuse at this boundary")
    params = dict(module.named_parameters())
    grads = torch.autograd.grad(y, [xi, *params.values()], gy, allow_unused=True)
    buffers = {k: b.detach().clone() for k, b in module.named_buffers()}
    return y.detach(), grads, buffers


def _close(a: Optional[Tensor], b: Optional[Tensor]) -> bool:
    if a is None or b is None:
        return (a is None or not a.abs().any()) and (b is None or not b.abs().any())
    scale = max(1.0, float(b.abs().max()))
    return bool(((a - b).abs() <= _PROBE_TOL * scale).all())


def _agrees(block64: nn.Module, recipe: Recipe, x: Tensor, gy: Tensor) -> bool:
    for train in (True, False):
        original = copy.deepcopy(block64)
        fused = FusedBlock(copy.deepcopy(block64), recipe, "probe", backend="torch")
        y0, g0, b0 = _run(original, x, gy, train)
        y1, g1, b1 = _run(fused, x, gy, train)
        if not _close(y1, y0) or not all(_close(a, b) for a, b in zip(g1, g0)):
            return False
        if b0.keys() != b1.keys() or not all(torch.equal(b0[k], b1[k]) or _close(b1[k].double(), b0[k].double())
                                             for k in b0):
            return False
    return True


def _match(block: nn.Module, known: list) -> Optional[Recipe]:
    """The recipe that reproduces ``block``, None if it does not look like attention; ``_Skip`` if it
    looks like attention but cannot be reproduced."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the probes are tiny: thread start-up and contention dominate (40x measured)
    try:
        return _match_probed(block, known)
    finally:
        torch.set_num_threads(threads)


def _match_probed(block: nn.Module, known: list) -> Optional[Recipe]:
    s = _structure(block)
    if not s:
        return None
    channels = s.get("channels") or 8
    try:
        block64 = copy.deepcopy(block).to("cpu", torch.float64)
    except Exception as e:  # e.g. meta tensors
        raise _Skip(f"cannot copy it to run the numeric check: {e}") from None
    x = _probe_input(channels)
    gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    candidates = list(_candidates(s))
    # flavors that matched earlier blocks of this model first: blocks of one model are usually alike
    candidates = [f for f in known if f in candidates] + [f for f in candidates if f not in known]
    for flavor in candidates:
        recipe = _recipe(s, flavor)
        try:
            if _agrees(block64, recipe, x, gy):
                if flavor not in known:
                    known.insert(0, flavor)
                return recipe
        except _Skip:
            raise
        except Exception:  # this flavor does not fit (e.g. a shape error in the original): try the next
            continue
    raise _Skip("its layers look like channel/spatial attention, but no supported flavor reproduces its "
                "output and gradients (checked numerically in float64, with ties planted)")


# ------------------------------------------------------------------------------------- convert
_ALREADY_FUSED = (FusedBlock, _fused_modules.CBAM, _fused_modules.ChannelAttention, _fused_modules.SpatialAttention,
                  _fused_modules.SE, _fused_modules.ECA)


def convert(model: nn.Module, *, backend: Optional[str] = None) -> ConvertReport:
    """Replace, in place, every attention block of ``model`` that the fused ops reproduce exactly.

    Returns a ``ConvertReport`` listing what was replaced and what was skipped and why. The root
    module itself is never replaced (there is no parent to hold the replacement): wrap a lone block,
    e.g. in ``nn.Sequential``.
    """
    if backend not in (None, "auto") and not backends.has_backend(backend):
        raise ValueError(f"unknown backend {backend!r}; expected None or one of {ops.BACKENDS + ('auto',)}")
    report = ConvertReport()
    known: list = []  # flavors that matched so far

    def visit(parent: nn.Module, prefix: str) -> None:
        for name, child in list(parent.named_children()):
            path = f"{prefix}.{name}" if prefix else name
            if isinstance(child, _ALREADY_FUSED):
                continue
            try:
                recipe = _match(child, known)
            except _Skip as why:
                report.skipped.append((path, type(child).__name__, str(why)))
                visit(child, path)  # its parts may still be convertible units on their own
                continue
            if recipe is None:
                if _ATTENTION_LIKE.search(type(child).__name__) and next(child.parameters(), None) is not None:
                    report.skipped.append((path, type(child).__name__, (
                        "named like channel/spatial attention, but its layers are not a channel map (two 1x1 "
                        "convs or Linear layers C->Cr->C, one C->C, or a Conv1d(1, 1, k)) and/or a "
                        "Conv2d(2 or 1, 1, K) with an optional BatchNorm(1)")))
                visit(child, path)
                continue
            fused = FusedBlock(child, recipe, type(child).__name__, backend=backend)
            fused.train(child.training)
            setattr(parent, name, fused)
            report.replaced.append((path, type(child).__name__, fused.extra_repr()))

    visit(model, "")
    return report
