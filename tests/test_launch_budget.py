"""Launch budget of the default CBAM in training (docs/design.md, "The launch budget"): at most 8
ATen ops + kernels for a forward and 20 for a forward+backward, counted inside the op only
(bench/launches.py says how).

On "cpu" the kernels are the table's records; on "cudaemu" the CUDA kernels that the emulator's
launch log lists (a table entry may launch several), counted in a child process (tests/cudaemu.py).
"""
import functools

import pytest
import torch

import cbam_fused as cf
from bench.launches import KERNEL_PREFIX, training_step_launches

from .conftest import require_backend

FORWARD_BUDGET = 8
TRAINING_STEP_BUDGET = 20

CBAM = dict(channels=64, reduction=16, kernel_size=7)
SHAPE = (2, 64, 8, 8)
FORWARD_PASSES = ("pool_hw", "channel_mlp", "pool_c", "spatial_conv", "apply_gates")
# channel_mlp: the backward makes the channel gate again as the forward made it
BACKWARD_PASSES = ("channel_mlp", "gate_grads", "spatial_conv_grad", "pool_c_grad_a", "channel_mlp_grad",
                   "input_grad")


@functools.lru_cache(maxsize=None)
def _launches(backend):
    if backend == "cudaemu":
        from tests import cudaemu

        return cudaemu.training_step_launches(CBAM, SHAPE, seed=0)
    torch.manual_seed(0)
    m = cf.CBAM(**CBAM, backend=backend)
    x = torch.randn(SHAPE, requires_grad=True)
    gy = torch.randn(SHAPE)
    m(x).backward(gy)  # warm-up
    return training_step_launches(m, x, gy)


def _kernels(backend, passes):
    """The names each pass must contribute to the count."""
    if backend == "cudaemu":
        from tests import cudaemu

        return [k for p in passes for k in cudaemu.PASS_KERNELS[p]]
    return [KERNEL_PREFIX + p for p in passes]


@pytest.mark.parametrize("backend", ["cpu", pytest.param("cudaemu", marks=pytest.mark.emulator)])
def test_launch_budget(backend):
    require_backend(backend)
    fwd, bwd = _launches(backend)
    assert len(fwd) <= FORWARD_BUDGET, f"forward launches {len(fwd)}: {fwd}"
    assert len(fwd) + len(bwd) <= TRAINING_STEP_BUDGET, f"forward+backward {len(fwd) + len(bwd)}: {fwd} + {bwd}"
    # every pass's kernels are among them: the count is of real work, not of an empty trace
    for name in _kernels(backend, FORWARD_PASSES):
        assert name in fwd, f"{name} missing from the forward: {fwd}"
    for name in _kernels(backend, BACKWARD_PASSES):
        assert name in bwd, f"{name} missing from the backward: {bwd}"

