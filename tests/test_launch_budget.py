"""Launch budget of the default CBAM in training (docs/design.md, "The launch budget").

Counted per call, inside the op only (the harness's loss, seed and .grad accumulation are left out):
the ATen ops that reach a kernel (profiler leaf events, not counting allocations and views) and the
kernels of the pass table, which the C++ orchestration names ``cbam_fused::kernel::<name>``.
Targets: at most 8 for a forward and 20 for a forward+backward.
"""
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import cbam_fused as cf

from .conftest import require_backend

FORWARD_BUDGET = 8
TRAINING_STEP_BUDGET = 20

# ops that launch nothing
NO_KERNEL = {
    "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::view", "aten::as_strided", "aten::detach",
    "aten::resize_", "aten::select", "aten::slice", "aten::narrow", "aten::t", "aten::transpose",
    "aten::unsqueeze", "aten::squeeze", "aten::reshape", "aten::_reshape_alias", "aten::alias", "aten::expand",
    "aten::lift_fresh", "aten::unflatten", "aten::permute", "aten::numpy_T", "aten::contiguous", "aten::to",
}
KERNEL_PREFIX = "cbam_fused::kernel::"


def _launches(event) -> list:
    """Names of the kernel launches under ``event``: table kernels and leaf ATen ops."""
    if event.name.startswith(KERNEL_PREFIX):
        return [event.name]
    if not event.cpu_children:
        return [event.name] if event.name.startswith("aten::") and event.name not in NO_KERNEL else []
    return [name for child in event.cpu_children for name in _launches(child)]


def _count(prof, op_name: str) -> list:
    """Launches inside the outermost events named ``op_name``."""
    out = []
    for ev in prof.events():
        if ev.name == op_name and (ev.cpu_parent is None or ev.cpu_parent.name != op_name):
            out += _launches(ev)
    return out


def _model_and_input(backend):
    torch.manual_seed(0)
    m = cf.CBAM(64, reduction=16, kernel_size=7, backend=backend)
    x = torch.randn(2, 64, 8, 8, requires_grad=True)
    return m, x


@pytest.mark.parametrize("backend", ["cpu"])
def test_launch_budget(backend):
    require_backend(backend)
    m, x = _model_and_input(backend)
    gy = torch.randn(2, 64, 8, 8)
    m(x).backward(gy)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        y = m(x)
    fwd = _count(prof, "cbam_fused::attention_forward")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        y.backward(gy)
    bwd = _count(prof, "cbam_fused::attention_backward")
    assert len(fwd) <= FORWARD_BUDGET, f"forward launches {len(fwd)}: {fwd}"
    assert len(fwd) + len(bwd) <= TRAINING_STEP_BUDGET, f"forward+backward {len(fwd) + len(bwd)}: {fwd} + {bwd}"
    # the passes themselves are among them: the count is of real work, not of an empty trace
    for name in ("pool_hw", "pool_c", "apply_gates"):
        assert KERNEL_PREFIX + name in fwd
    for name in ("gate_grads", "pool_c_grad_a", "input_grad"):
        assert KERNEL_PREFIX + name in bwd
