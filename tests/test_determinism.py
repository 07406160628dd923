"""Determinism: with ``torch.use_deterministic_algorithms(True)`` two runs are bitwise equal.

Checked for the output and every gradient, both tie modes, both layouts, on every backend (CUDA in
the gpu-marked parametrization). The shape is big enough that the CPU kernels split the reductions
over several threads.
"""
import pytest
import torch

import cbam_fused as cf

from .conftest import device_of
from .test_correctness import make_inputs, used_params


@pytest.fixture
def deterministic():
    was, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(was, warn_only=warn_only)


def _once(backend, inp, ties, dtype):
    names = used_params("cbam")
    leaves = {k: inp[k].detach().clone().requires_grad_() for k in names}
    y = cf.cbam(leaves["x"], leaves["w1"], leaves["w2"], leaves["k"], leaves["b1"], leaves["b2"], leaves["kb"],
                ties=ties, backend=backend)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).to(dtype).to(y.device)
    grads = torch.autograd.grad(y, [leaves[k] for k in names], gy)
    return [y.detach(), *grads]


@pytest.mark.parametrize("ties", ["index", "split"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_two_runs_bitwise_equal(backend, deterministic, ties, layout, dtype):
    slow = backend in ("triton", "cudaemu")
    shape = (2, 16, 6, 7) if slow else (4, 96, 40, 44)
    inp = make_inputs(shape, dtype, layout, device_of(backend), seed=5)
    inp["x"][:, 3] = 0  # a dead channel: ties everywhere in its max
    first = _once(backend, inp, ties, dtype)
    second = _once(backend, inp, ties, dtype)
    for i, (a, b) in enumerate(zip(first, second)):
        assert torch.equal(a, b), f"tensor {i} (0 = y, then x, w1, w2, b1, b2, k, kb) differs between runs"
