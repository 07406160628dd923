"""DistributedDataParallel (gloo, 2 CPU processes) over a net with fused CBAMs matches one process.

The net uses GroupNorm, not BatchNorm, so every sample is normalised on its own and the two replicas
on half batches compute exactly the per-sample terms of the single-process run on the whole batch.
DDP averages the replicas' gradients, which equals the gradient of the mean loss over the whole batch.
"""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import cbam_fused as cf

WORLD = 2
STEPS = 3
GLOBAL_BATCH = 8


def _net(backend):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(),
        cf.CBAM(16, reduction=4, kernel_size=7, backend=backend),
        nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.GroupNorm(8, 32), nn.ReLU(),
        cf.CBAM(32, reduction=8, kernel_size=3, backend=backend),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )


def _data():
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(GLOBAL_BATCH, 3, 16, 12, generator=g) for _ in range(STEPS)]
    ts = [torch.randint(0, 10, (GLOBAL_BATCH,), generator=g) for _ in range(STEPS)]
    return xs, ts


def _train(model, xs, ts, shard=slice(None)):
    """A few SGD steps; returns the gradients seen at each step and the final parameters."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    grads = []
    for x, t in zip(xs, ts):
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x[shard]), t[shard]).backward()
        grads.append([p.grad.detach().clone() for p in model.parameters()])
        opt.step()
    return grads, [p.detach().clone() for p in model.parameters()]


def _prepare_backend(backend):
    if backend == "spec":  # the test-only pass set lives in tests/conftest.py, not in the package
        from cbam_fused import backends, ops
        from cbam_fused.passes import TorchPasses

        backends.register_passes("spec", TorchPasses())


def _worker(rank, backend, init_file, out_dir):
    torch.set_num_threads(1)  # 2 processes on 2 cores
    _prepare_backend(backend)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        model = nn.parallel.DistributedDataParallel(_net(backend))
        xs, ts = _data()
        per_rank = GLOBAL_BATCH // WORLD
        grads, params = _train(model, xs, ts, slice(rank * per_rank, (rank + 1) * per_rank))
        torch.save({"grads": grads, "params": params}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_gloo_matches_single_process(backend, tmp_path):
    if backend not in ("cpu", "spec"):
        pytest.skip("DDP with gloo runs on the CPU backends")
    mp.spawn(_worker, args=(backend, str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        xs, ts = _data()
        grads_1, params_1 = _train(_net(backend), xs, ts)
    finally:
        torch.set_num_threads(threads)

    names = [k for k, _ in _net(backend).named_parameters()]
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for step in range(STEPS):
            for name, g, g1 in zip(names, got["grads"][step], grads_1[step]):
                torch.testing.assert_close(g, g1, atol=1e-6, rtol=1e-4,
                                           msg=lambda m: f"rank {rank} step {step} grad {name}: {m}")
        for name, p, p1 in zip(names, got["params"], params_1):
            torch.testing.assert_close(p, p1, atol=1e-6, rtol=1e-4, msg=lambda m: f"rank {rank} param {name}: {m}")
    # the fused CBAMs' parameters (modules 3 and 7) received gradients and moved
    initial = dict(_net(backend).named_parameters())
    for name, p1 in zip(names, params_1):
        if name.startswith(("3.", "7.")):
            assert not torch.equal(p1, initial[name]), f"{name} did not train"
