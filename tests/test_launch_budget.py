"""Launch budget of the default CBAM in training (docs/design.md, "The launch budget"): at most 8
ATen ops + table kernels for a forward and 20 for a forward+backward, counted inside the op only
(bench/launches.py says how)."""
import pytest
import torch

import cbam_fused as cf
from bench.launches import KERNEL_PREFIX, training_step_launches

from .conftest import require_backend

FORWARD_BUDGET = 8
TRAINING_STEP_BUDGET = 20


@pytest.mark.parametrize("backend", ["cpu"])
def test_launch_budget(backend):
    require_backend(backend)
    torch.manual_seed(0)
    m = cf.CBAM(64, reduction=16, kernel_size=7, backend=backend)
    x = torch.randn(2, 64, 8, 8, requires_grad=True)
    gy = torch.randn(2, 64, 8, 8)
    m(x).backward(gy)  # warm-up
    fwd, bwd = training_step_launches(m, x, gy)
    assert len(fwd) <= FORWARD_BUDGET, f"forward launches {len(fwd)}: {fwd}"
    assert len(fwd) + len(bwd) <= TRAINING_STEP_BUDGET, f"forward+backward {len(fwd) + len(bwd)}: {fwd} + {bwd}"
    # the passes are among them: the count is of real work, not of an empty trace
    for name in ("pool_hw", "pool_c", "apply_gates"):
        assert KERNEL_PREFIX + name in fwd
    for name in ("gate_grads", "pool_c_grad_a", "input_grad"):
        assert KERNEL_PREFIX + name in bwd
