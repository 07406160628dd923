"""torch.compile(fullgraph=True) over a small net with fused CBAMs: no graph break, matches eager.

Each fused module is one opaque custom op per direction, so the compiled graph must contain
``cbam_fused::attention_forward`` in the forward and ``cbam_fused::attention_backward`` in the backward
(checked with a recording backend), and inductor's result must match eager.
"""
import copy

import pytest
import torch
from torch import nn

import cbam_fused as cf

from .conftest import device_of


def _skip_uncompilable(backend):
    if backend == "triton" and not torch.cuda.is_available():
        pytest.skip("torch.compile cannot trace a triton_op under the Triton interpreter")
    if backend == "cudaemu":
        pytest.skip("the emulated CUDA kernels sit behind the same opaque op as 'cpu'; compile is tested there")


class Net(nn.Module):
    """Conv stem, a fused CBAM, a fused channel gate and a fused spatial gate, then a classifier."""

    def __init__(self, backend):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.cbam = cf.CBAM(16, reduction=4, kernel_size=7, backend=backend)
        self.conv = nn.Conv2d(16, 24, 3, padding=1, stride=2)
        self.channel = cf.ChannelAttention(24, reduction=8, gate="hard_sigmoid", backend=backend)
        self.spatial = cf.SpatialAttention(3, backend=backend)
        self.head = nn.Linear(24, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = self.cbam(x)
        x = self.spatial(self.channel(torch.relu(self.conv(x))))
        return self.head(x.mean(dim=(2, 3)))


def _grads(model):
    return {k.removeprefix("_orig_mod."): p.grad.clone() for k, p in model.named_parameters()}


def _run(model, x, target):
    model.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    out = model(x)
    nn.functional.cross_entropy(out, target).backward()
    return out.detach(), x.grad.clone(), _grads(model)


def _setup(backend, seed=0):
    torch.manual_seed(seed)
    device = device_of(backend)
    model = Net(backend).to(device)
    x = torch.randn(4, 3, 14, 15, device=device)
    target = torch.randint(0, 5, (4,), device=device)
    return model, x, target


def test_compiled_graph_holds_the_fused_ops(backend):
    """aot_eager-style capture: one forward and one backward op per fused module, and no graph break."""
    _skip_uncompilable(backend)
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    seen = {"fw": [], "bw": []}

    def recorder(kind):
        def compile_fn(gm, example_inputs):
            seen[kind].extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
            return make_boxed_func(gm.forward)
        return compile_fn

    torch._dynamo.reset()
    model, x, target = _setup(backend)
    compiled = torch.compile(model, fullgraph=True,
                             backend=aot_autograd(fw_compiler=recorder("fw"), bw_compiler=recorder("bw")))
    _run(compiled, x, target)
    fw = [t for t in seen["fw"] if "cbam_fused" in t]
    bw = [t for t in seen["bw"] if "cbam_fused" in t]
    assert len(fw) == 3 and all("attention_forward" in t for t in fw), seen["fw"]
    assert len(bw) == 3 and all("attention_backward" in t for t in bw), seen["bw"]


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_inductor_matches_eager(backend, dynamic):
    _skip_uncompilable(backend)
    torch._dynamo.reset()
    model, x, target = _setup(backend, seed=1)
    eager = copy.deepcopy(model)
    compiled = torch.compile(model, fullgraph=True, dynamic=dynamic)
    steps = [(x, target)]
    if dynamic:  # a second shape through the same compiled function
        steps.append((torch.randn(3, 3, 10, 9, device=x.device), target[:3]))
    for xs, ts in steps:
        out_c, gx_c, grads_c = _run(compiled, xs, ts)
        out_e, gx_e, grads_e = _run(eager, xs, ts)
        torch.testing.assert_close(out_c, out_e, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(gx_c, gx_e, atol=1e-6, rtol=1e-4)
        for k in grads_e:
            torch.testing.assert_close(grads_c[k], grads_e[k], atol=1e-6, rtol=1e-4, msg=lambda m: f"{k}: {m}")
