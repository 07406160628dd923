"""Counting what a fused call launches: the launch budget of docs/design.md ("The launch budget").

Counted inside the op only: the ATen ops that reach a kernel (profiler leaf events, not counting
allocations and views) and the kernels of the C++ orchestration's pass table, which it names
``cbam_fused::kernel::<name>`` for the profiler.
"""
from __future__ import annotations

from typing import Callable

from torch.profiler import ProfilerActivity, profile

FORWARD_OP = "cbam_fused::attention_forward"
BACKWARD_OP = "cbam_fused::attention_backward"
KERNEL_PREFIX = "cbam_fused::kernel::"
# ATen ops that launch nothing: allocations, views and no-op conversions
NO_KERNEL = frozenset({
    "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::view", "aten::as_strided", "aten::detach",
    "aten::resize_", "aten::select", "aten::slice", "aten::narrow", "aten::t", "aten::transpose",
    "aten::unsqueeze", "aten::squeeze", "aten::reshape", "aten::_reshape_alias", "aten::alias", "aten::expand",
    "aten::lift_fresh", "aten::unflatten", "aten::permute", "aten::numpy_T", "aten::contiguous", "aten::to",
})


def _launches(event) -> list[str]:
    if event.name.startswith(KERNEL_PREFIX):
        return [event.name]
    if not event.cpu_children:
        return [event.name] if event.name.startswith("aten::") and event.name not in NO_KERNEL else []
    return [name for child in event.cpu_children for name in _launches(child)]


def launches_in(fn: Callable[[], object], op_name: str) -> tuple[list[str], object]:
    """(launches inside the outermost calls of ``op_name`` while ``fn()`` runs, fn's result)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        result = fn()
    out = []
    for ev in prof.events():
        if ev.name == op_name and (ev.cpu_parent is None or ev.cpu_parent.name != op_name):
            out += _launches(ev)
    return out, result


def training_step_launches(module, x, gy) -> tuple[list[str], list[str]]:
    """(forward launches, backward launches) of ``module(x).backward(gy)``."""
    fwd, y = launches_in(lambda: module(x), FORWARD_OP)
    bwd, _ = launches_in(lambda: y.backward(gy), BACKWARD_OP)
    return fwd, bwd
