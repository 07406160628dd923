"""The fused op pair: ``cbam_fused::attention_forward`` returns ``y`` and the small tensors the
backward needs, ``cbam_fused::attention_backward`` returns ``gx`` and every weight gradient.

The schemas are written once, in C++ (csrc/ops.cpp, from csrc/attention_interface.h); every name
used here is read from them. The compiled pair runs the C++ orchestration and has a C++ autograd
kernel. This module adds:

* their fake kernels, so that ``torch.compile`` keeps each direction as one opaque op;
* Python twins with the same schemas for pass sets written in Python: ``*_py`` (a ``custom_op``,
  for the pure-torch spec and other test pass sets) and ``*_triton`` (a ``triton_op``, so that
  ``torch.compile`` traces into the Triton kernels). Their orchestration below is the executable
  spec of the C++ one (docs/design.md, "The orchestration"); tests check that the two agree.
"""
from __future__ import annotations

import threading

import torch
from torch import Tensor

from . import _compat, backends
from . import small_steps as ss
from .passes import acc_dtype

__all__ = ["FORWARD_ARGS", "SAVED", "BACKWARD_ARGS", "GRADS", "CONFIG", "forward_op", "backward_op",
           "dense", "memory_format", "no_autocast"]

if not backends.is_native("cpu"):  # pragma: no cover - a broken install: only the "torch" backend runs
    raise ImportError(f"cbam_fused._C did not load: {backends.unavailable_reason('cpu')}")
_FORWARD = torch.ops.cbam_fused.attention_forward.default
_BACKWARD = torch.ops.cbam_fused.attention_backward.default

FORWARD_ARGS = tuple(a.name for a in _FORWARD._schema.arguments)  # x, the weights, the config
SAVED = tuple(r.name for r in _FORWARD._schema.returns)[1:]  # after y
BACKWARD_ARGS = tuple(a.name for a in _BACKWARD._schema.arguments)
GRADS = tuple(r.name for r in _BACKWARD._schema.returns)  # grad_x, then the trained weights
WEIGHTS = FORWARD_ARGS[1:FORWARD_ARGS.index("channel_kind")]
CONFIG = FORWARD_ARGS[len(WEIGHTS) + 1:]
TRAINED = tuple(g[len("grad_"):] for g in GRADS[1:])


def memory_format(x: Tensor) -> torch.memory_format:
    if x.is_contiguous():
        return torch.contiguous_format
    return torch.channels_last


def dense(x: Tensor) -> Tensor:
    """NCHW-contiguous or channels_last-contiguous as it is; anything else becomes NCHW-contiguous."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous()


def no_autocast(x: Tensor):
    """Autocast off for the small steps, which must run in the accumulation dtype."""
    return torch.autocast(x.device.type, enabled=False)


def _bind(names, args, kwargs) -> dict:
    out = dict(zip(names, args))
    out.update(kwargs)
    return out


# ---------------------------------------------------------------------------------- fake kernels
def _saved_like(a: dict) -> tuple:
    """Empty tensors of the shapes and dtypes of the saved small tensors (csrc/attention_interface.h)."""
    x = dense(a["x"])
    n, c, h, w = x.shape
    acc = acc_dtype(x.dtype)
    ch, sp = a["w1"] is not None, a["conv_w"] is not None
    track = a["ties"] != "none"  # inference: no tie operand
    spec = {
        "m": ((n, c), acc, ch), "pooled_hw": ((2, n, c), acc, ch), "tie_hw": ((n, c), torch.int32, ch and track),
        "l": ((n, h * w), acc, sp), "pooled_c": ((2, n, h * w), acc, sp),
        "tie_c": ((n, h * w), torch.int32, sp and track),
        "bn_stats": ((2,), acc, sp and a["bn"] == "train"),
    }
    return tuple(x.new_empty(shape if present else (0,), dtype=dtype) for shape, dtype, present in
                 (spec[name] for name in SAVED))


def _fake_forward(*args, **kwargs):
    a = _bind(FORWARD_ARGS, args, kwargs)
    if len({t.device for t in a.values() if isinstance(t, Tensor)}) > 1:
        # not a trace: real tensors on several devices, one of them meta, reached this kernel
        torch.ops.cbam_fused.check_inputs(*(a[name] for name in FORWARD_ARGS))
    return (torch.empty_like(dense(a["x"])), *_saved_like(a))


def _fake_backward(*args, **kwargs):
    a = _bind(BACKWARD_ARGS, args, kwargs)
    x = dense(a["x"])
    gx = torch.empty_like(x) if a["need_gx"] else x.new_empty(0)
    return (gx, *(torch.empty_like(a[w]) if a[w] is not None else x.new_empty(0) for w in TRAINED))


def _register_fakes(forward_name: str, backward_name: str) -> None:
    torch.library.register_fake(forward_name)(_fake_forward)
    torch.library.register_fake(backward_name)(_fake_backward)


_register_fakes("cbam_fused::attention_forward", "cbam_fused::attention_backward")


# --------------------------------------------------------------------- the Python orchestration
def _opt(t: Tensor):
    return t if t is not None and t.numel() > 0 else None


def _weights(a: dict, acc):
    cw = None
    if a["w1"] is not None:
        cw = ss.ChannelWeights.of(a["channel_kind"], a["w1"], a["b1"], a["w2"], a["b2"], acc)
    sw = None
    if a["conv_w"] is not None:
        sw = ss.SpatialWeights.of(a["conv_w"], a["conv_b"], a["spatial_order"], a["bn"], a["bn_w"], a["bn_b"],
                                  a["bn_mean"], a["bn_var"], a["bn_eps"], acc)
    return cw, sw


def forward_impl(passes, a: dict):
    """Forward: pool over pixels, channel map and gate, pool x*a over channels, conv (+BN) and gate,
    apply both gates. Returns y and the saved small tensors (empty where a gate is absent)."""
    x = dense(a["x"])
    n, c, h, w = x.shape
    acc = acc_dtype(x.dtype)
    cw, sw = _weights(a, acc)
    split, track = a["ties"] == "split", a["ties"] != "none"
    saved = {name: x.new_empty(0, dtype=acc) for name in SAVED}
    saved["tie_hw"], saved["tie_c"] = (x.new_empty(0, dtype=torch.int32) for _ in range(2))
    gate_a = gate_s = None
    if cw is not None:
        avg, mx, argmax, count = passes.pool_hw(x, ties=track)
        saved["pooled_hw"] = torch.stack([avg, mx])
        if track:
            saved["tie_hw"] = count if split else argmax
        saved["m"] = ss.channel_logits(cw, a["channel_pools"], avg, mx)
        gate_a = ss.gate_forward(a["channel_gate"], saved["m"])
    if sw is not None:
        mean, mx, argmax, count = passes.pool_c(x, gate_a, ties=track)
        saved["pooled_c"] = torch.stack([mean, mx])
        if track:
            saved["tie_c"] = count if split else argmax
        saved["l"], stats = ss.spatial_logits(sw, mean, mx, (n, h, w))
        if a["bn"] == "train":
            saved["bn_stats"] = stats
        gate_s = ss.gate_forward(a["spatial_gate"], saved["l"])
    y = passes.apply_gates(x, gate_a, gate_s)
    return (y, *(saved[name] for name in SAVED))


def backward_impl(passes, a: dict):
    """Backward from the saved small tensors; returns gx and the trained weights' gradients."""
    if a["ties"] == "none":  # the message of csrc/attention.cpp
        raise ValueError("cbam_fused: no gradient through a forward that ran with ties='none' (inference: it "
                         "kept no argmax or count); run the forward with ties='index' or 'split'")
    x = dense(a["x"])
    gy = a["gy"].contiguous(memory_format=memory_format(x))
    n, c, h, w = x.shape
    acc = acc_dtype(x.dtype)
    cw, sw = _weights(a, acc)
    split = a["ties"] == "split"
    m, l, tie_hw, tie_c = a["m"], a["l"], a["tie_hw"], a["tie_c"]
    channel, spatial = cw is not None, sw is not None
    # the gates are recomputed from their logits (bitwise as in the forward) rather than saved
    gate_a = ss.gate_forward(a["channel_gate"], m) if channel else None
    gate_s = ss.gate_forward(a["spatial_gate"], l) if spatial else None
    ga, gs = passes.gate_grads(gy, x, gate_a, gate_s, channel, spatial)
    u_c = v_c = u_hw = v_hw = max_c = max_hw = None
    cgrads = sgrads = (None,) * 4
    if spatial:
        mean_c, max_c = a["pooled_c"][0], a["pooled_c"][1]
        gl = ss.gate_backward(a["spatial_gate"], l, gs)
        g_mean, g_max, *sgrads = ss.spatial_logits_backward(sw, mean_c, max_c, (n, h, w), a["bn_stats"], gl)
        u_c = g_mean / c
        v_c = g_max / tie_c if split else g_max
        if channel:
            ga = ga + passes.pool_c_grad_a(x, gate_a, u_c, v_c, tie_c, max_c, split)
    if channel:
        avg, max_hw = a["pooled_hw"][0], a["pooled_hw"][1]
        gm = ss.gate_backward(a["channel_gate"], m, ga)
        g_avg, g_max, *cgrads = ss.channel_logits_backward(cw, a["channel_pools"], avg, max_hw, gm)
        u_hw = g_avg / (h * w) if g_avg is not None else torch.zeros_like(ga)
        v_hw = torch.zeros_like(ga) if g_max is None else (g_max / tie_hw if split else g_max)
    gx = x.new_empty(0)
    if a["need_gx"]:
        gx = passes.input_grad(gy, x if split else None, gate_a, gate_s,
                               u_c, v_c, tie_c if spatial else None, max_c,
                               u_hw, v_hw, tie_hw if channel else None, max_hw, split)
    grads = dict(zip(("w1", "b1", "w2", "b2", "conv_w", "conv_b", "bn_w", "bn_b"), (*cgrads, *sgrads)))
    return (gx, *(grads[w].to(a[w].dtype).view(a[w].shape) if grads[w] is not None and a[w] is not None
                  else x.new_empty(0) for w in TRAINED))


# --------------------------------------------------------------------------------- Python twins
def _schema_of(op) -> str:
    s = str(op._schema)
    return s[s.index("("):]


def _make_twin(suffix: str, passes_of, define):
    """Ops ``attention_{forward,backward}{suffix}`` with the compiled pair's schemas, run by the
    Python orchestration over ``passes_of(backend)``, with their fakes and autograd."""

    def forward(*args):
        a = _bind(FORWARD_ARGS, args, {})
        with no_autocast(a["x"]):
            return forward_impl(passes_of(a["backend"]), a)

    def backward(*args):
        a = _bind(BACKWARD_ARGS, args, {})
        with no_autocast(a["x"]):
            return backward_impl(passes_of(a["backend"]), a)

    fwd = define(f"cbam_fused::attention_forward{suffix}", forward, _schema_of(_FORWARD))
    bwd = define(f"cbam_fused::attention_backward{suffix}", backward, _schema_of(_BACKWARD))
    _register_fakes(f"cbam_fused::attention_forward{suffix}", f"cbam_fused::attention_backward{suffix}")
    _register_autograd(f"cbam_fused::attention_forward{suffix}", bwd)
    return fwd, bwd


def _register_autograd(forward_name: str, backward_op) -> None:
    n_tensors = 1 + len(WEIGHTS)

    def setup_context(ctx, inputs, output):
        ctx.config = inputs[n_tensors:]
        ctx.save_for_backward(*inputs[:n_tensors], *output[1:])
        ctx.mark_non_differentiable(*output[1:])
        ctx.set_materialize_grads(False)

    def backward(ctx, gy, *_small):
        n_inputs = n_tensors + len(CONFIG)
        if gy is None:
            return (None,) * n_inputs
        grads = backward_op(gy, *ctx.saved_tensors, *ctx.config, ctx.needs_input_grad[0])
        out = [None] * n_inputs
        for i, g in enumerate(grads):  # grad_x, then the trained weights in WEIGHTS order
            if ctx.needs_input_grad[i] and g.numel() > 0:
                out[i] = g
        return tuple(out)

    torch.library.register_autograd(forward_name, backward, setup_context=setup_context)
    torch.library.register_autograd(backward_op._qualname if hasattr(backward_op, "_qualname") else backward_op,
                                    _no_double_backward, setup_context=lambda ctx, inputs, output: None)


def _no_double_backward(ctx, *grads):
    raise RuntimeError("cbam_fused does not implement second derivatives: double backward "
                       "(create_graph=True, then differentiating the gradients) through a fused op is "
                       "not supported; use backend='torch' for that")


def _custom_op(name, fn, schema):
    return torch.library.custom_op(name, fn, mutates_args=(), schema=schema)


_PY_OPS = _make_twin("_py", backends.python_passes, _custom_op)
_TRITON_OPS = None
_TRITON_OPS_LOCK = threading.Lock()  # threads whose first calls coincide must define the ops once


def _triton_ops():
    """The triton_op twins, defined on first use (importing triton is slow)."""
    global _TRITON_OPS
    with _TRITON_OPS_LOCK:
        if _TRITON_OPS is None:
            _TRITON_OPS = _define_triton_twins()
    return _TRITON_OPS


def _define_triton_twins():
    from . import triton as tt

    return _make_twin("_triton", lambda _backend: tt.TritonPasses(),
                      _compat.triton_op)


@_compat.assume_constant_result
def define_triton_ops() -> bool:
    """Define the triton_op twins; torch.compile runs this at trace time instead of tracing it
    (dynamo refuses to trace ``triton_op`` itself, which broke fullgraph on a first call). The mark
    must be on the function before dynamo first sees it, so it is set at import, without dynamo."""
    _triton_ops()
    return True


def forward_op(backend: str):
    """The forward op that runs a resolved backend (not "torch")."""
    if backends.is_native(backend):
        return _FORWARD
    if backend == "triton" and define_triton_ops():
        return torch.ops.cbam_fused.attention_forward_triton
    return torch.ops.cbam_fused.attention_forward_py


def backward_op(backend: str):
    """The backward op paired with ``forward_op(backend)``."""
    if backends.is_native(backend):
        return _BACKWARD
    if backend == "triton" and define_triton_ops():
        return torch.ops.cbam_fused.attention_backward_triton
    return torch.ops.cbam_fused.attention_backward_py
