"""torch.library custom ops for fused CBAM: schemas, fake kernels, autograd and the backend choice.

One pair of ops covers every unit (channel gate, spatial gate, the whole block) and every flavor:

* ``cbam_fused::attention_forward`` returns ``y`` and the small tensors the backward needs;
* ``cbam_fused::attention_backward`` returns ``gx`` and every weight gradient.

``torch.library.register_autograd`` ties them together, so to autograd and to ``torch.compile`` each
direction is one opaque op. Inside, the orchestration below runs the six full-size passes of a
backend (see ``cbam_fused.passes`` for their contract) with the small steps of
``cbam_fused.small_steps`` between them. The same orchestration serves the C++ CPU kernels, the CUDA
kernels, the Triton kernels (through ``torch.library.triton_op`` twins of the two ops, so that
``torch.compile`` traces into them on GPUs) and, in tests, the CUDA kernels run by the CPU emulator.

This module is the only place that chooses a backend.
"""
import functools
import os
from typing import Optional

import torch
from torch import Tensor

from . import _build, _compat
from . import small_steps as ss
from .passes import TorchPasses, acc_dtype

__all__ = ["attention", "available_backends", "unavailable_reason", "resolve_backend", "BACKENDS"]

BACKENDS = ("cpu", "cuda", "triton", "torch")
TIES = ("index", "split")

# ------------------------------------------------------------------------------ compiled kernels
try:  # the C++ op library: CPU kernels, always built
    from . import _C  # noqa: F401

    _CPP_ERROR = None
except ImportError as e:  # pragma: no cover - exercised only on broken installs
    _CPP_ERROR = e

try:  # CUDA kernels live in their own extension so that a CPU-only torch can import us
    from . import _cuda  # noqa: F401

    _CUDA_ERROR = None
except ImportError as e:
    _CUDA_ERROR = e


class CppPasses:
    """The passes as C++ ops (``torch.ops.cbam_fused.*``); the dispatcher picks CPU or CUDA kernels."""

    def __init__(self, name: str):
        self.name = name

    @staticmethod
    def pool_hw(x):
        return torch.ops.cbam_fused.pool_hw(x)

    @staticmethod
    def pool_c(x, a):
        return torch.ops.cbam_fused.pool_c(x, a)

    @staticmethod
    def apply_gates(x, a, s):
        return torch.ops.cbam_fused.apply_gates(x, a, s)

    @staticmethod
    def gate_grads(gy, x, a, s, want_a, want_s):
        return torch.ops.cbam_fused.gate_grads(gy, x, a, s, want_a, want_s)

    @staticmethod
    def pool_c_grad_a(x, a, u, v, argmax, mx, split):
        return torch.ops.cbam_fused.pool_c_grad_a(x, a, u, v, argmax, mx, split)

    @staticmethod
    def input_grad(gy, x, a, s, u_c, v_c, argmax_c, max_c, u_hw, v_hw, argmax_hw, max_hw, split):
        return torch.ops.cbam_fused.input_grad(
            gy, x, a, s, u_c, v_c, argmax_c, max_c, u_hw, v_hw, argmax_hw, max_hw, split
        )


def _register_pass_fakes() -> None:
    """Fake kernels of the C++ pass ops (their schemas live in csrc/ops.cpp)."""

    def small(x, per_channel, dtype=None):
        n, c, h, w = x.shape
        return x.new_empty((n, c) if per_channel else (n, h * w), dtype=dtype or acc_dtype(x.dtype))

    def pools(x, per_channel):
        return (small(x, per_channel), small(x, per_channel), small(x, per_channel, torch.int32),
                small(x, per_channel, torch.int32))

    lib = "cbam_fused::"
    torch.library.register_fake(lib + "pool_hw")(lambda x: pools(x, True))
    torch.library.register_fake(lib + "pool_c")(lambda x, a: pools(x, False))
    torch.library.register_fake(lib + "apply_gates")(lambda x, a, s: torch.empty_like(_dense(x)))
    torch.library.register_fake(lib + "gate_grads")(
        lambda gy, x, a, s, want_a, want_s: (small(x, True) if want_a else x.new_empty(0, dtype=acc_dtype(x.dtype)),
                                             small(x, False) if want_s else x.new_empty(0, dtype=acc_dtype(x.dtype))))
    torch.library.register_fake(lib + "pool_c_grad_a")(lambda x, a, u, v, argmax, mx, split: small(x, True))
    torch.library.register_fake(lib + "input_grad")(lambda gy, *rest: torch.empty_like(_dense(gy)))


# backend name -> passes object; the "torch" backend is the eager composite below, not a pass set
_PASSES: dict = {}
if _CPP_ERROR is None:
    _register_pass_fakes()
    _PASSES["cpu"] = CppPasses("cpu")
    if _CUDA_ERROR is None:
        _PASSES["cuda"] = CppPasses("cuda")


def _register_passes(name: str, passes) -> None:
    """Add a pass set under ``name`` (tests use it for the spec passes and the CUDA emulator)."""
    _PASSES[name] = passes


def _triton_usable() -> bool:
    try:
        from . import triton as _t  # noqa: F401
    except ImportError:
        return False
    return _t.AVAILABLE and (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1")


def available_backends() -> list:
    """Backends that work in this process, best first for CUDA tensors then CPU tensors."""
    out = []
    if "cuda" in _PASSES and torch.cuda.is_available():
        out.append("cuda")
    if _triton_usable():
        out.append("triton")
    if "cpu" in _PASSES:
        out.append("cpu")
    out.append("torch")
    return out


def unavailable_reason(name: str) -> Optional[str]:
    """Why backend ``name`` cannot run in this process, or None when it can."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")
    return None if name in available_backends() else _unavailable_reason(name)


def _unavailable_reason(name: str) -> str:
    if name == "cpu":
        return f"the C++ extension cbam_fused._C did not load ({_CPP_ERROR})"
    if name == "cuda":
        if _CUDA_ERROR is not None:
            skipped = (_build.record() or {}).get("cuda_skipped")
            if skipped:
                return f"the CUDA kernels were not built: {skipped}"
            return f"the CUDA extension cbam_fused._cuda did not load ({_CUDA_ERROR})"
        return "no CUDA device is available"
    if name == "triton":
        try:
            from . import triton as _t
        except ImportError as e:
            return f"the Triton kernels did not import ({e})"
        if not _t.AVAILABLE:
            return "triton is not installed"
        return "there is no CUDA device, and TRITON_INTERPRET=1 (the Triton interpreter) is not set"
    return "unknown reason"


def resolve_backend(backend: Optional[str], x: Tensor) -> str:
    """Pick the backend for ``x``: the named one (checked), or the best for x's device.

    While exporting (``torch.export``, ``torch.onnx.export``) it is always "torch": the opaque custom
    ops do not export, the stock-op decomposition does.
    """
    if _compat.is_exporting() or torch.onnx.is_in_onnx_export():
        return "torch"
    if backend in (None, "auto"):
        if x.device.type == "cuda":
            for name in ("cuda", "triton"):
                if name in available_backends():
                    return name
            return "torch"
        if x.device.type == "cpu" and "cpu" in _PASSES:
            return "cpu"
        return "torch"
    if backend == "torch":
        return backend
    if backend in _PASSES and backend not in BACKENDS:  # test-only pass sets
        return backend
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS + ('auto',)}")
    if backend not in available_backends():
        raise RuntimeError(f"backend {backend!r} is not available: {_unavailable_reason(backend)}")
    wanted = {"cpu": "cpu", "cuda": "cuda"}.get(backend)
    if wanted is not None and x.device.type != wanted:
        raise ValueError(f"backend {backend!r} needs {wanted} tensors, got a tensor on {x.device}")
    if backend == "triton" and x.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)")
    return backend


# --------------------------------------------------------------------------------- orchestration
def _memory_format(x: Tensor) -> torch.memory_format:
    if x.is_contiguous():
        return torch.contiguous_format
    return torch.channels_last


def _dense(x: Tensor) -> Tensor:
    """NCHW-contiguous or channels_last-contiguous as it is; anything else becomes NCHW-contiguous."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous()


def _no_autocast(x: Tensor):
    """Autocast off for the small steps, which must run in the accumulation dtype (see ``attention``)."""
    return torch.autocast(x.device.type, enabled=False)


def _opt(t: Tensor) -> Optional[Tensor]:
    return t if t.numel() > 0 else None


def _channel_weights(w1, b1, w2, b2, kind, dtype):
    return None if w1 is None else ss.ChannelWeights.of(kind, w1, b1, w2, b2, dtype)


def _spatial_weights(conv_w, conv_b, order, bn, bn_w, bn_b, bn_mean, bn_var, bn_eps, dtype):
    if conv_w is None:
        return None
    return ss.SpatialWeights.of(conv_w, conv_b, order, bn, bn_w, bn_b, bn_mean, bn_var, bn_eps, dtype)


def _forward_impl(passes, x, cw, pools, cgate, sw, sgate):
    """Forward: pool over pixels, channel MLP, pool x*a over channels, conv, apply both gates.

    Returns y and the small tensors ``m, avg, max_hw, argmax_hw, count_hw, l, mean_c, max_c, argmax_c,
    count_c, bn_stats`` (empty where the gate is absent).
    """
    n, c, h, w = x.shape
    acc = acc_dtype(x.dtype)

    def empty(dtype=acc):  # a fresh tensor per slot: op outputs must not alias each other
        return x.new_empty(0, dtype=dtype)

    a, m, avg, max_hw, s, l, mean_c, max_c, bn_stats = (empty() for _ in range(9))
    argmax_hw, count_hw, argmax_c, count_c = (empty(torch.int32) for _ in range(4))
    if cw is not None:
        avg, max_hw, argmax_hw, count_hw = passes.pool_hw(x)
        m = ss.channel_logits(cw, pools, avg, max_hw)
        a = ss.gate_forward(cgate, m)
    if sw is not None:
        mean_c, max_c, argmax_c, count_c = passes.pool_c(x, _opt(a))
        l, bn_stats = ss.spatial_logits(sw, mean_c, max_c, (n, h, w))
        s = ss.gate_forward(sgate, l)
    y = passes.apply_gates(x, _opt(a), _opt(s))
    return y, m, avg, max_hw, argmax_hw, count_hw, l, mean_c, max_c, argmax_c, count_c, bn_stats


def _backward_impl(passes, gy, x, cw, pools, cgate, sw, sgate, split, need_gx, saved):
    """Backward from the saved small tensors; ``tie_*`` are the argmax (index ties) or count (split)."""
    m, avg, max_hw, tie_hw, l, mean_c, max_c, tie_c, bn_stats = saved
    n, c, h, w = x.shape
    channel, spatial = cw is not None, sw is not None
    # the gates are recomputed from their logits (bitwise as in the forward) rather than saved
    a = ss.gate_forward(cgate, m) if channel else m
    s = ss.gate_forward(sgate, l) if spatial else l
    ga, gs = passes.gate_grads(gy, x, _opt(a), _opt(s), channel, spatial)
    u_c = v_c = u_hw = v_hw = None
    cgrads = sgrads = (None,) * 4
    if spatial:
        gl = ss.gate_backward(sgate, l, gs)
        g_mean, g_max, *sgrads = ss.spatial_logits_backward(sw, mean_c, max_c, (n, h, w), bn_stats, gl)
        u_c = g_mean / c
        v_c = g_max / tie_c if split else g_max
        if channel:
            ga = ga + passes.pool_c_grad_a(x, a, u_c, v_c, tie_c, max_c, split)
    if channel:
        gm = ss.gate_backward(cgate, m, ga)
        g_avg, g_max, *cgrads = ss.channel_logits_backward(cw, pools, avg, max_hw, gm)
        u_hw = g_avg / (h * w) if g_avg is not None else torch.zeros_like(ga)
        if g_max is None:
            v_hw = torch.zeros_like(ga)
        else:
            v_hw = g_max / tie_hw if split else g_max
    gx = x.new_empty(0)
    if need_gx:
        gx = passes.input_grad(
            gy, x if split else None, _opt(a), _opt(s),
            u_c, v_c, tie_c if spatial else None, max_c if spatial else None,
            u_hw, v_hw, tie_hw if channel else None, max_hw if channel else None, split,
        )
    return (gx, *cgrads, *sgrads)


def _passes_for(backend: str):
    try:
        return _PASSES[backend]
    except KeyError:
        raise RuntimeError(f"backend {backend!r} has no compiled passes in this process") from None


def passes_for(backend: str):
    """The pass set of a resolved backend name, for orchestrations outside the two ops (the parallel
    arrangement in ``cbam_fused.parallel``); "torch" gets the pure-torch spec passes."""
    if backend == "torch":
        return TorchPasses()
    if backend == "triton":
        from . import triton as tt

        return tt.TritonPasses()
    return _passes_for(backend)


def _check_config(channel_kind, channel_pools, channel_gate, spatial_gate, ties):
    for value, allowed, what in (
        (channel_kind, ss.CHANNEL_KINDS, "channel_kind"),
        (channel_pools, ss.CHANNEL_POOLS, "channel_pools"),
        (channel_gate, ss.GATES, "channel gate"),
        (spatial_gate, ss.GATES, "spatial gate"),
        (ties, TIES, "ties"),
    ):
        if value not in allowed:
            raise ValueError(f"unknown {what} {value!r}; expected one of {allowed}")


def _make_ops(suffix: str, passes_of, define):
    """Define the forward/backward op pair ``attention_{forward,backward}{suffix}`` with ``define``."""

    def attention_forward(
        x: Tensor, w1: Optional[Tensor], b1: Optional[Tensor], w2: Optional[Tensor], b2: Optional[Tensor],
        conv_w: Optional[Tensor], conv_b: Optional[Tensor], bn_w: Optional[Tensor], bn_b: Optional[Tensor],
        bn_mean: Optional[Tensor], bn_var: Optional[Tensor],
        channel_kind: str, channel_pools: str, channel_gate: str, spatial_order: str, spatial_gate: str,
        bn: str, bn_eps: float, ties: str, backend: str,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
               Tensor]:
        _check_config(channel_kind, channel_pools, channel_gate, spatial_gate, ties)
        x = _dense(x)
        acc = acc_dtype(x.dtype)
        cw = _channel_weights(w1, b1, w2, b2, channel_kind, acc)
        sw = _spatial_weights(conv_w, conv_b, spatial_order, bn, bn_w, bn_b, bn_mean, bn_var, bn_eps, acc)
        with _no_autocast(x):
            return _forward_impl(passes_of(backend), x, cw, channel_pools, channel_gate, sw, spatial_gate)

    def attention_backward(
        gy: Tensor, x: Tensor, w1: Optional[Tensor], b1: Optional[Tensor], w2: Optional[Tensor],
        b2: Optional[Tensor], conv_w: Optional[Tensor], conv_b: Optional[Tensor], bn_w: Optional[Tensor],
        bn_b: Optional[Tensor], bn_mean: Optional[Tensor], bn_var: Optional[Tensor],
        m: Tensor, avg: Tensor, max_hw: Tensor, tie_hw: Tensor, l: Tensor, mean_c: Tensor, max_c: Tensor,
        tie_c: Tensor, bn_stats: Tensor,
        channel_kind: str, channel_pools: str, channel_gate: str, spatial_order: str, spatial_gate: str,
        bn: str, bn_eps: float, ties: str, backend: str, need_gx: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        x = _dense(x)
        gy = gy.contiguous(memory_format=_memory_format(x))
        acc = acc_dtype(x.dtype)
        cw = _channel_weights(w1, b1, w2, b2, channel_kind, acc)
        sw = _spatial_weights(conv_w, conv_b, spatial_order, bn, bn_w, bn_b, bn_mean, bn_var, bn_eps, acc)
        saved = (m, avg, max_hw, tie_hw, l, mean_c, max_c, tie_c, bn_stats)
        with _no_autocast(x):
            grads = _backward_impl(passes_of(backend), gy, x, cw, channel_pools, channel_gate, sw,
                                   spatial_gate, ties == "split", need_gx, saved)
        like = (x, w1, b1, w2, b2, conv_w, conv_b, bn_w, bn_b)
        return tuple(
            g.to(ref.dtype) if g is not None and ref is not None else x.new_empty(0)
            for g, ref in zip(grads, like)
        )

    fwd = define(f"cbam_fused::attention_forward{suffix}", attention_forward)
    bwd = define(f"cbam_fused::attention_backward{suffix}", attention_backward)
    return fwd, bwd


def _define_custom_op(name, fn):
    return torch.library.custom_op(name, fn, mutates_args=())


_forward_op, _backward_op = _make_ops("", _passes_for, _define_custom_op)


# ---------------------------------------------------------------------------------- fake kernels
def _fake_small(x, present, shape, dtype):
    return x.new_empty(shape if present else (0,), dtype=dtype)


@_forward_op.register_fake
def _(x, w1, b1, w2, b2, conv_w, conv_b, bn_w, bn_b, bn_mean, bn_var, channel_kind, channel_pools,
      channel_gate, spatial_order, spatial_gate, bn, bn_eps, ties, backend):
    x = _dense(x)
    n, c, h, w = x.shape
    acc = acc_dtype(x.dtype)
    ch, sp = w1 is not None, conv_w is not None
    nc, np_ = (n, c), (n, h * w)
    return (
        torch.empty_like(x),
        *(_fake_small(x, ch, nc, acc) for _ in range(3)),
        *(_fake_small(x, ch, nc, torch.int32) for _ in range(2)),
        *(_fake_small(x, sp, np_, acc) for _ in range(3)),
        *(_fake_small(x, sp, np_, torch.int32) for _ in range(2)),
        _fake_small(x, sp and bn == "train", (2,), acc),
    )


@_backward_op.register_fake
def _(gy, x, w1, b1, w2, b2, conv_w, conv_b, bn_w, bn_b, bn_mean, bn_var, *rest):
    need_gx = rest[-1]
    x = _dense(x)
    gx = torch.empty_like(x) if need_gx else x.new_empty(0)
    return (gx, *(torch.empty_like(t) if t is not None else x.new_empty(0)
                  for t in (w1, b1, w2, b2, conv_w, conv_b, bn_w, bn_b)))


# -------------------------------------------------------------------------------------- autograd
_N_PARAMS = 11  # x and the ten optional weight tensors of attention_forward
_N_CONFIG = 9


def _make_autograd(backward_op):
    def setup_context(ctx, inputs, output):
        tensors, config = inputs[:_N_PARAMS], inputs[_N_PARAMS:]
        ctx.config = config
        m, avg, max_hw, argmax_hw, count_hw, l, mean_c, max_c, argmax_c, count_c, bn_stats = output[1:]
        split = config[-2] == "split"  # ties: counts route split-style gradients, argmaxes index-style
        tie_hw, tie_c = (count_hw, count_c) if split else (argmax_hw, argmax_c)
        ctx.save_for_backward(*tensors, m, avg, max_hw, tie_hw, l, mean_c, max_c, tie_c, bn_stats)

    def backward(ctx, gy, *_unused_small_grads):
        saved = ctx.saved_tensors
        grads = backward_op(gy, *saved, *ctx.config, ctx.needs_input_grad[0])
        out = [_opt(g) for g in grads]  # gx, w1, b1, w2, b2, conv_w, conv_b, bn_w, bn_b
        out = [g if need else None for g, need in zip(out, ctx.needs_input_grad[:9])]
        return (*out, None, None) + (None,) * _N_CONFIG  # no gradient for running stats and config

    return setup_context, backward


def _no_double_backward(ctx, *grads):
    raise RuntimeError("cbam_fused does not implement second derivatives: double backward "
                       "(create_graph=True, then differentiating the gradients) through a fused op is "
                       "not supported; use backend='torch' for that")


def _register_autograd(forward_name: str, backward_op) -> None:
    setup_context, backward = _make_autograd(backward_op)
    torch.library.register_autograd(forward_name, backward, setup_context=setup_context)
    torch.library.register_autograd(backward_op._qualname, _no_double_backward,
                                    setup_context=lambda ctx, inputs, output: None)


_register_autograd("cbam_fused::attention_forward", _backward_op)

_TRITON_OPS = None


def _triton_ops():
    """The triton_op twins of the two ops, defined on first use (importing triton is slow)."""
    global _TRITON_OPS
    if _TRITON_OPS is None:
        from . import triton as tt

        fwd, bwd = _make_ops("_triton", lambda _backend: tt.TritonPasses(),
                             lambda name, fn: torch.library.triton_op(name, fn, mutates_args=()))
        _register_autograd("cbam_fused::attention_forward_triton", bwd)
        _TRITON_OPS = (fwd, bwd)
    return _TRITON_OPS


@torch.compiler.assume_constant_result
def _define_triton_ops() -> bool:
    """Define the triton_op twins; torch.compile runs this at trace time instead of tracing it
    (dynamo refuses to trace ``triton_op`` itself, which broke fullgraph on a first call)."""
    _triton_ops()
    return True


# ------------------------------------------------------------------------------- eager composite
def _autocast_off(fn):
    """Run ``fn(x, ...)`` with autocast off on x's device (see ``_no_autocast``)."""
    @functools.wraps(fn)
    def run(x, *args, **kwargs):
        with _no_autocast(x):
            return fn(x, *args, **kwargs)
    return run


@_autocast_off
def _eager(x, cw, pools, cgate, sw, sgate, ties):
    """The "torch" backend: the same math with stock ops and autograd (also the ONNX export path)."""
    n, c, h, w = x.shape
    acc = acc_dtype(x.dtype)
    v = x.to(acc)
    stats = None

    def vmax(t, dim):
        if ties == "split":
            return t.amax(dim=dim)
        return t.max(dim=dim).values

    if cw is not None:
        flat = v.reshape(n, c, h * w)
        m = ss.channel_logits(cw, pools, flat.mean(dim=2), vmax(flat, 2))
        v = v * ss.gate_forward(cgate, m)[:, :, None, None]
    if sw is not None:
        l, stats = ss.spatial_logits(sw, v.mean(dim=1).reshape(n, h * w), vmax(v, 1).reshape(n, h * w), (n, h, w))
        v = v * ss.gate_forward(sgate, l).reshape(n, 1, h, w)
    return v.to(x.dtype), stats


# ------------------------------------------------------------------------------------ public op
def _check_tensor(name, t, x, shape=None):
    if t is None:
        return
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a Tensor or None, got {type(t).__name__}")
    if t.dtype != x.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but x has dtype {x.dtype}; cast the weights to x's dtype")
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def _validate(x, w1, b1, w2, b2, channel_kind, conv_w, conv_b, bn_w, bn_b, bn_mean, bn_var, bn_training):
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D [N, C, H, W], got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"x must be float16, bfloat16, float32 or float64, got {x.dtype}")
    n, c, h, w = x.shape
    if c == 0 or h == 0 or w == 0:  # N = 0 is fine: an empty batch, as in the reference
        raise ValueError(f"x has an empty C, H or W dimension (shape {tuple(x.shape)}); "
                         "the max pools over channels and pixels are undefined")
    if w1 is not None:
        _check_tensor("w1", w1, x)
        if channel_kind == "mlp":
            if w1.dim() != 2 or w1.shape[1] != c:
                raise ValueError(f"w1 must have shape [hidden, C={c}], got {tuple(w1.shape)}")
            hidden = w1.shape[0]
            if w2 is None:
                raise ValueError("channel_kind='mlp' needs w2")
            _check_tensor("w2", w2, x, (c, hidden))
            _check_tensor("b1", b1, x, (hidden,))
            _check_tensor("b2", b2, x, (c,))
        elif channel_kind == "linear":
            _check_tensor("w1", w1, x, (c, c))
            _check_tensor("b1", b1, x, (c,))
        elif channel_kind == "conv1d":
            if w1.dim() != 3 or w1.shape[:2] != (1, 1) or w1.shape[2] % 2 != 1:
                raise ValueError(f"conv1d channel weight must be [1, 1, k] with k odd, got {tuple(w1.shape)}")
            _check_tensor("b1", b1, x, (1,))
        if channel_kind != "mlp" and (w2 is not None or b2 is not None):
            raise ValueError(f"channel_kind={channel_kind!r} takes no w2/b2")
    elif any(t is not None for t in (b1, w2, b2)):
        raise ValueError("b1, w2 and b2 need w1")
    if conv_w is not None:
        _check_tensor("conv_weight", conv_w, x)
        if conv_w.dim() != 4 or conv_w.shape[:2] != (1, 2) or conv_w.shape[2] != conv_w.shape[3]:
            raise ValueError(f"conv_weight must have shape [1, 2, K, K], got {tuple(conv_w.shape)}")
        if conv_w.shape[2] % 2 != 1:
            raise ValueError(f"the spatial kernel size K must be odd, got {conv_w.shape[2]}")
        _check_tensor("conv_bias", conv_b, x, (1,))
        for name, t in (("bn_weight", bn_w), ("bn_bias", bn_b), ("bn_running_mean", bn_mean),
                        ("bn_running_var", bn_var)):
            _check_tensor(name, t, x, (1,))
        if not bn_training and (bn_mean is None) != (bn_var is None):
            raise ValueError("bn_running_mean and bn_running_var go together")
    elif any(t is not None for t in (conv_b, bn_w, bn_b, bn_mean, bn_var)):
        raise ValueError("conv_bias and the BatchNorm tensors need conv_weight")
    if w1 is None and conv_w is None:
        raise ValueError("neither a channel gate (w1) nor a spatial gate (conv_weight) was given")


def attention(
    x: Tensor,
    *,
    w1: Optional[Tensor] = None,
    b1: Optional[Tensor] = None,
    w2: Optional[Tensor] = None,
    b2: Optional[Tensor] = None,
    channel_kind: str = "mlp",
    channel_pools: str = "avg+max",
    channel_gate: str = "sigmoid",
    conv_weight: Optional[Tensor] = None,
    conv_bias: Optional[Tensor] = None,
    spatial_order: str = "mean_max",
    spatial_gate: str = "sigmoid",
    bn_weight: Optional[Tensor] = None,
    bn_bias: Optional[Tensor] = None,
    bn_running_mean: Optional[Tensor] = None,
    bn_running_var: Optional[Tensor] = None,
    bn_training: Optional[bool] = None,
    bn_eps: float = 1e-5,
    ties: str = "index",
    backend: Optional[str] = None,
) -> tuple[Tensor, Optional[Tensor]]:
    """Fused channel gate (if ``w1``) followed by spatial gate (if ``conv_weight``).

    ``bn_training`` is None for no BatchNorm after the spatial conv; True uses batch statistics,
    False the running ones. Returns ``(y, bn_batch_stats)``: the stats are ``[mean, biased var]`` of
    the conv output in BN training mode (the caller updates running buffers), else None.

    Under autocast on x's device, the floating-point weights are cast to x's dtype (as the modules
    always do): the op computes in x's dtype with fp32 accumulation and returns x's dtype.
    """
    if isinstance(x, Tensor) and x.is_floating_point() and torch.is_autocast_enabled(x.device.type):
        w1, b1, w2, b2, conv_weight, conv_bias, bn_weight, bn_bias, bn_running_mean, bn_running_var = (
            t.to(x.dtype) if isinstance(t, Tensor) and t.is_floating_point() else t
            for t in (w1, b1, w2, b2, conv_weight, conv_bias, bn_weight, bn_bias, bn_running_mean,
                      bn_running_var))
    _validate(x, w1, b1, w2, b2, channel_kind, conv_weight, conv_bias, bn_weight, bn_bias,
              bn_running_mean, bn_running_var, bn_training)
    _check_config(channel_kind, channel_pools, channel_gate, spatial_gate, ties)
    bn = "none" if bn_training is None else ("train" if bn_training else "eval")
    if bn == "eval" and bn_running_mean is None:
        raise ValueError("BatchNorm in eval mode needs bn_running_mean and bn_running_var")
    name = resolve_backend(backend, x)
    if name == "torch" or x.numel() == 0:
        acc = acc_dtype(x.dtype)
        cw = _channel_weights(w1, b1, w2, b2, channel_kind, acc)
        sw = _spatial_weights(conv_weight, conv_bias, spatial_order, bn, bn_weight, bn_bias,
                              bn_running_mean, bn_running_var, bn_eps, acc)
        return _eager(x, cw, channel_pools, channel_gate, sw, spatial_gate, ties)
    op = _forward_op
    if name == "triton" and _define_triton_ops():
        op = torch.ops.cbam_fused.attention_forward_triton
    out = op(x, w1, b1, w2, b2, conv_weight, conv_bias, bn_weight, bn_bias, bn_running_mean, bn_running_var,
             channel_kind, channel_pools, channel_gate, spatial_order, spatial_gate, bn, float(bn_eps), ties,
             name)
    return out[0], (out[-1] if bn == "train" else None)
