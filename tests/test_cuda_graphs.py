"""CUDA graphs: a converted model's training step captured in ``torch.cuda.graph`` after warm-up, and
``torch.compile(mode="reduce-overhead")``, match eager (marked ``gpu``; skipped without a CUDA device).

Capture fails if anything on the path reads a device value on the host or synchronises, so these
tests also guard that property of the CUDA orchestration (csrc/attention.cpp).
"""
import copy

import pytest
import torch
from torch import nn

import cbam_fused as cf
from cbam_fused import reference as R

from .conftest import require_backend

pytestmark = pytest.mark.gpu


class Net(nn.Module):
    """A stem, two reference CBAMs (one with a BatchNorm-free default, one with biases) and a head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.cbam1 = R.CBAM(32, reduction=8)
        self.conv = nn.Conv2d(32, 64, 3, padding=1, stride=2)
        self.cbam2 = R.CBAM(64, reduction=16, kernel_size=3)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        x = self.cbam1(torch.relu(self.stem(x)))
        x = self.cbam2(torch.relu(self.conv(x)))
        return self.head(x.mean(dim=(2, 3)))


def _models():
    require_backend("cuda")
    torch.manual_seed(0)
    eager = Net().cuda()
    fused = copy.deepcopy(eager)
    report = cf.convert(fused, backend="cuda")
    assert len(report.replaced) == 2, report
    return eager, fused


def _batch(seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (torch.randn(8, 3, 28, 28, device="cuda", generator=g),
            torch.randint(0, 10, (8,), device="cuda", generator=g))


def _eager_grads(model, x, t):
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), t).backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}


def test_captured_training_step_matches_eager():
    eager, fused = _models()
    static_x, static_t = _batch(0)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream, as torch.cuda.graph's docs ask
        for _ in range(3):
            fused.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(fused(static_x), static_t).backward()
    torch.cuda.current_stream().wait_stream(side)
    fused.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = nn.functional.cross_entropy(fused(static_x), static_t)
        static_loss.backward()
    for seed in (1, 2):  # new data through the same graph
        x, t = _batch(seed)
        static_x.copy_(x)
        static_t.copy_(t)
        graph.replay()
        want = _eager_grads(eager, x, t)
        for k, p in fused.named_parameters():
            torch.testing.assert_close(p.grad, want[k], rtol=1e-4, atol=1e-5, msg=lambda m: f"{k}: {m}")
        with torch.no_grad():
            torch.testing.assert_close(static_loss, nn.functional.cross_entropy(eager(x), t), rtol=1e-5, atol=1e-6)


def test_reduce_overhead_compile_matches_eager():
    eager, fused = _models()
    torch._dynamo.reset()
    compiled = torch.compile(fused, mode="reduce-overhead", fullgraph=True)
    for seed in range(4):  # the first calls record, later ones replay the CUDA graphs
        x, t = _batch(seed)
        fused.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(compiled(x), t).backward()
        want = _eager_grads(eager, x, t)
        for k, p in fused.named_parameters():
            torch.testing.assert_close(p.grad, want[k], rtol=1e-4, atol=1e-5, msg=lambda m: f"{k}: {m}")
