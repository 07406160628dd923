"""Training setups beyond DDP: FSDP2, activation checkpointing, Python threads,
copies of a converted model, and torch.func.

Each setup is compared with the same model without it: the unconverted model under the same FSDP2
setup, the same blocks without checkpointing, the same calls one after another, the original model.
Sanity checks against the reference CBAM use tolerances; "the same run" comparisons are bitwise
where the work is the same. ``FusedCalls`` counts the fused ops, to show that the fused path ran.
"""
import copy
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import cbam_fused as cf
from cbam_fused import reference
from cbam_fused.convert import FusedBlock
from tests.conftest import device_of, require_backend

ROOT = Path(__file__).resolve().parents[1]


class FusedCalls(TorchDispatchMode):
    """Records (op name, backend argument) of every ``torch.ops.cbam_fused`` op dispatched (the C++
    passes run inside the two attention ops and are not seen)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "cbam_fused":
            named = dict(zip((a.name for a in func._schema.arguments), args))
            # the Python twins of the op pair (spec, Triton) count alike
            name = func._schema.name.split("::")[1].removesuffix("_triton").removesuffix("_py")
            self.calls.append((name, named.get("backend", kwargs.get("backend"))))
        return func(*args, **kwargs)

    def count(self, op):
        return sum(1 for name, _ in self.calls if name == op)


def _reference_net(kernel_sizes=(7, 3)):
    """Conv/GroupNorm layers around default-flavor reference CBAMs (modules 3 and 7)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(),
        reference.CBAM(16, reduction=4, kernel_size=kernel_sizes[0]),
        nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.GroupNorm(8, 32), nn.ReLU(),
        reference.CBAM(32, reduction=8, kernel_size=kernel_sizes[1]),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )


def _converted_net(backend=None):
    model = _reference_net()
    report = cf.convert(model, backend=backend)
    assert [path for path, _, _ in report.replaced] == ["3", "7"], str(report)
    return model


def _grads(model, x, loss_fn=lambda y: y.square().mean(), backward=False):
    """Output, gradient of x and of every parameter (by name) of one forward and backward, by
    ``torch.autograd.grad`` (no shared ``.grad``, for threads) or ``.backward()`` (reentrant
    checkpointing supports only that)."""
    x = x.detach().requires_grad_()
    params = dict(model.named_parameters())
    y = model(x)
    if not backward:
        gx, *gp = torch.autograd.grad(loss_fn(y), [x, *params.values()])
        return y.detach(), gx, dict(zip(params, gp))
    for p in params.values():
        p.grad = None
    loss_fn(y).backward()
    return y.detach(), x.grad, {name: p.grad for name, p in params.items()}


def _assert_same(a, b, exact=True, what=""):
    tol = dict(rtol=0, atol=0) if exact else dict(rtol=1e-4, atol=1e-5)
    ya, gxa, gpa = a
    yb, gxb, gpb = b
    torch.testing.assert_close(ya, yb, **tol, msg=lambda m: f"{what} output: {m}")
    torch.testing.assert_close(gxa, gxb, **tol, msg=lambda m: f"{what} grad x: {m}")
    assert len(gpa) == len(gpb)
    for (name, ga), gb in zip(gpa.items(), gpb.values()):  # by position: a wrapper may rename
        torch.testing.assert_close(ga, gb, **tol, msg=lambda m: f"{what} grad {name}: {m}")


# ------------------------------------------------------------------------------------------ FSDP2
WORLD = 2
STEPS = 3
PER_RANK = 4


def _fsdp_worker(rank, init_file, out_dir):
    torch.set_num_threads(1)  # 2 processes on 2 cores
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (WORLD,))
        out = {}
        for converted in (False, True):
            model = _converted_net() if converted else _reference_net()
            for block in (model[3], model[7]):
                fully_shard(block, mesh=mesh)
            fully_shard(model, mesh=mesh)
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            g = torch.Generator().manual_seed(100 + rank)  # each rank its own half of the batch
            losses, grads = [], []
            with FusedCalls() as calls:
                for _ in range(STEPS):
                    x = torch.randn(PER_RANK, 3, 16, 12, generator=g)
                    t = torch.randint(0, 10, (PER_RANK,), generator=g)
                    opt.zero_grad(set_to_none=True)
                    loss = nn.functional.cross_entropy(model(x), t)
                    loss.backward()
                    losses.append(loss.detach())
                    grads.append({n: p.grad.full_tensor() for n, p in model.named_parameters()})
                    opt.step()
            params = {n: p.full_tensor().detach() for n, p in model.named_parameters()}
            out[converted] = dict(losses=losses, grads=grads, params=params, calls=calls.calls)
        # convert() after fully_shard cannot copy the blocks for its numeric check: it replaces nothing
        late = _reference_net()
        fully_shard(late[3], mesh=mesh)
        fully_shard(late, mesh=mesh)
        report = cf.convert(late)
        out["late_convert"] = (len(report.replaced), [why for _, _, why in report.skipped])
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _fsdp2_unavailable():
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError as e:
        return f"torch.distributed.fsdp.fully_shard (FSDP2) is not importable: {e}"
    if not dist.is_available() or not dist.is_gloo_available():
        return "torch.distributed with gloo is not available in this torch build"
    return None


def test_fsdp2_converted_matches_unconverted(tmp_path):
    """Under FSDP2 (gloo, 2 CPU processes, each CBAM its own FSDP unit) a converted model and the
    unconverted one give the same losses, gradients and parameters. Compared with each other, not
    with one process: gloo's FSDP2 averages in its own way (pytorch#162338)."""
    reason = _fsdp2_unavailable()
    if reason:
        pytest.skip(reason)
    require_backend("cpu")
    mp.spawn(_fsdp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)

    initial = dict(_reference_net().named_parameters())
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        plain, fused = got[False], got[True]
        assert plain["calls"] == []
        # the converted blocks ran the fused CPU op: 2 blocks x STEPS forward and backward
        assert fused["calls"].count(("attention_forward", "cpu")) == 2 * STEPS
        assert fused["calls"].count(("attention_backward", "cpu")) == 2 * STEPS
        tol = dict(atol=1e-6, rtol=1e-4)
        for step in range(STEPS):
            torch.testing.assert_close(fused["losses"][step], plain["losses"][step], **tol,
                                       msg=lambda m: f"rank {rank} step {step} loss: {m}")
            for name, g in plain["grads"][step].items():
                torch.testing.assert_close(fused["grads"][step][name], g, **tol,
                                           msg=lambda m: f"rank {rank} step {step} grad {name}: {m}")
        for name, p in plain["params"].items():
            torch.testing.assert_close(fused["params"][name], p, **tol, msg=lambda m: f"rank {rank} {name}: {m}")
            if name.startswith(("3.", "7.")):
                assert not torch.equal(p, initial[name].detach()), f"{name} did not train"
        replaced, why = got["late_convert"]
        assert replaced == 0 and any("deepcopy" in w for w in why), why


# ---------------------------------------------------------------------------- activation checkpointing
class _Checkpointed(nn.Module):
    def __init__(self, block, use_reentrant):
        super().__init__()
        self.block, self.use_reentrant = block, use_reentrant

    def forward(self, x):
        return torch.utils.checkpoint.checkpoint(self.block, x, use_reentrant=self.use_reentrant)


@pytest.mark.parametrize("use_reentrant", [False, True], ids=["non_reentrant", "reentrant"])
def test_activation_checkpointing(backend, use_reentrant):
    device = device_of(backend)
    model = _converted_net(backend).to(device)
    # the same module objects, the converted blocks under torch.utils.checkpoint
    checkpointed = nn.Sequential(*(_Checkpointed(m, use_reentrant) if isinstance(m, FusedBlock) else m
                                   for m in model))
    x = torch.randn(2, 3, 8, 6, generator=torch.Generator().manual_seed(2)).to(device)

    with FusedCalls() as plain_calls:
        plain = _grads(model, x, backward=True)
    with FusedCalls() as ckpt_calls:
        ckpt = _grads(checkpointed, x, backward=True)
    _assert_same(ckpt, plain, what="checkpointed vs plain")
    # the blocks' forward ran again during backward, through the fused op
    assert plain_calls.count("attention_forward") == 2
    assert ckpt_calls.count("attention_forward") == 4
    assert ckpt_calls.count("attention_backward") == plain_calls.count("attention_backward") == 2
    # and both agree with the unconverted model
    _assert_same(plain, _grads(_reference_net().to(device), x), exact=False, what="converted vs reference")


# ---------------------------------------------------------------------------------------- threads
THREAD_SHAPES = [(2, 16, 6, 5), (1, 16, 7, 7), (3, 16, 4, 9), (2, 16, 5, 5)]


def _thread_work(module, device):
    xs = [torch.randn(*s, generator=torch.Generator().manual_seed(10 + i)).to(device)
          for i, s in enumerate(THREAD_SHAPES)]

    def run(i):  # autograd.grad, not .backward(): no shared .grad to race on
        return _grads(module, xs[i], loss_fn=lambda y: (y * (i + 1)).square().sum())

    return run


def _run_in_threads(run, n):
    results, errors = [None] * n, []
    barrier = threading.Barrier(n)

    def body(i):
        try:
            barrier.wait()
            results[i] = run(i)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(f"thread {i}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    return results, errors


def test_threads_match_one_after_another(backend):
    """4 Python threads running forward and backward of one shared fused module at once give the
    results of the same calls one after another (for Triton this also covers the autotune cache and,
    without a GPU, the interpreter, whose global state the backend guards with a lock)."""
    device = device_of(backend)
    torch.manual_seed(0)
    module = cf.CBAM(16, reduction=4, kernel_size=3, backend=backend).to(device)
    run = _thread_work(module, device)
    for round_ in range(2):
        together, errors = _run_in_threads(run, len(THREAD_SHAPES))
        assert not errors, "\n".join(errors)
        for i in range(len(THREAD_SHAPES)):
            _assert_same(together[i], run(i), what=f"round {round_} thread {i}")
    with FusedCalls() as calls:
        run(0)
    assert calls.calls == [("attention_forward", backend), ("attention_backward", backend)]
    ref = reference.CBAM(16, reduction=4, kernel_size=3).to(device)
    ref.load_state_dict(module.state_dict())
    for i in range(len(THREAD_SHAPES)):
        _assert_same(run(i), _thread_work(ref, device)(i), exact=False, what=f"vs reference, input {i}")


COLD_START = """
import os, sys
sys.path.insert(0, {root!r})
import torch
from tests import test_training_setups as t
import cbam_fused as cf
torch.manual_seed(0)
module = cf.CBAM(16, reduction=4, kernel_size=3, backend={backend!r})
run = t._thread_work(module, "cpu")
together, errors = t._run_in_threads(run, len(t.THREAD_SHAPES))  # the backend's very first calls
assert not errors, chr(10).join(errors)
for i in range(len(t.THREAD_SHAPES)):
    t._assert_same(together[i], run(i), what=f"thread {{i}}")
print("OK")
"""


@pytest.mark.parametrize("name", ["cpu", pytest.param("triton", marks=pytest.mark.triton)])
def test_threads_first_calls_at_once(name):
    """A fresh process whose first fused calls come from 4 threads at once (the Triton backend
    defines its ops on first use; before a lock guarded that, this crashed)."""
    require_backend(name)
    if name == "triton" and torch.cuda.is_available():
        pytest.skip("the CPU-tensor variant needs the interpreter")
    proc = subprocess.run([sys.executable, "-c", COLD_START.format(root=str(ROOT), backend=name)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


# ----------------------------------------------------------------------------------------- copies
def _copy_net():
    """A converted reference net plus a native fused module (backend chosen per device)."""
    model = _converted_net()
    model.append(nn.Unflatten(1, (10, 1, 1)))
    model.append(cf.CBAM(10, reduction=2, kernel_size=1))
    return model


def _check_copy(copied, original, x, what):
    assert copied is not original
    for (name, p), (_, q) in zip(copied.named_parameters(), original.named_parameters()):
        assert p is not q and p.data_ptr() != q.data_ptr(), f"{what}: {name} shares storage"
        assert torch.equal(p, q), f"{what}: {name} differs"
    assert [type(m) for m in copied.modules()] == [type(m) for m in original.modules()]
    with FusedCalls() as calls:
        got = _grads(copied, x)
    # every fused block of the copy ran the fused CPU op
    assert calls.calls.count(("attention_forward", "cpu")) == 3, f"{what}: {calls.calls}"
    assert calls.calls.count(("attention_backward", "cpu")) == 3, f"{what}: {calls.calls}"
    _assert_same(got, _grads(original, x), what=what)


def test_copies_run_the_fused_path(tmp_path):
    require_backend("cpu")
    model = _copy_net()
    x = torch.randn(2, 3, 12, 10, generator=torch.Generator().manual_seed(3))

    _check_copy(copy.deepcopy(model), model, x, "deepcopy")

    torch.save(model, tmp_path / "model.pt")
    _check_copy(torch.load(tmp_path / "model.pt", weights_only=False), model, x, "torch.save/torch.load")

    # state_dict: the converted model's keys are the unconverted model's, both ways
    state = model.state_dict()
    fresh = _copy_net()
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)  # differs from the source until loaded
    fresh.load_state_dict(state, strict=True)
    _check_copy(fresh, model, x, "state_dict into a converted model")

    unconverted = _reference_net()
    unconverted.append(nn.Unflatten(1, (10, 1, 1)))
    unconverted.append(reference.CBAM(10, reduction=2, kernel_size=1))
    unconverted.load_state_dict(state, strict=True)
    _assert_same(_grads(unconverted, x), _grads(model, x), exact=False, what="state_dict into the reference")
    back = _copy_net()
    back.load_state_dict(unconverted.state_dict(), strict=True)
    _check_copy(back, model, x, "state_dict from the reference")


# --------------------------------------------------------------------------------------- torch.func
def _weights(dtype=torch.float64):
    g = torch.Generator().manual_seed(4)
    return dict(w1=torch.randn(2, 8, generator=g, dtype=dtype), w2=torch.randn(8, 2, generator=g, dtype=dtype),
                conv_weight=torch.randn(1, 2, 3, 3, generator=g, dtype=dtype))


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")
def test_vmap_runs_the_fused_op_per_element():
    """torch.func.vmap works: PyTorch's fallback calls the fused op once per element (and warns that
    there is no batching rule); results and ordinary-autograd gradients match the reference."""
    require_backend("cpu")
    w = _weights()
    xs = torch.randn(3, 2, 8, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5),
                     requires_grad=True)
    with FusedCalls() as calls:
        y = torch.func.vmap(lambda x: cf.cbam(x, w["w1"], w["w2"], w["conv_weight"], backend="cpu"))(xs)
    assert calls.calls == [("attention_forward", "cpu")] * 3
    expected = torch.stack([reference.cbam(x, w["w1"], w["w2"], w["conv_weight"]) for x in xs])
    torch.testing.assert_close(y, expected)
    gx, = torch.autograd.grad(y.square().sum(), xs)
    gx_ref, = torch.autograd.grad(expected.square().sum(), xs)
    torch.testing.assert_close(gx, gx_ref)


def test_per_sample_gradients_take_the_stock_path():
    """torch.func.grad (here per-sample gradients, vmap over grad of a functional_call) cannot run the
    fused ops' autograd; the default backend takes the stock-op path there and matches the reference."""
    model = nn.Sequential(reference.CBAM(8, reduction=4, kernel_size=3)).double()
    ref = copy.deepcopy(model)
    cf.convert(model)
    params = {k: v.detach() for k, v in model.named_parameters()}
    xs = torch.randn(4, 8, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(6))

    def per_sample(m):
        def loss(p, x):
            return torch.func.functional_call(m, p, (x[None],)).square().sum()
        return torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, xs)

    with FusedCalls() as calls:
        got = per_sample(model)
    assert calls.calls == []
    expected = per_sample(ref)
    for name in params:
        torch.testing.assert_close(got[name], expected[name])
    jac = torch.func.jacrev(lambda x: model(x).sum(dim=(2, 3)))(xs[:1])
    torch.testing.assert_close(jac, torch.func.jacrev(lambda x: ref(x).sum(dim=(2, 3)))(xs[:1]))


def test_named_fused_backend_under_grad_transform_raises_clearly():
    require_backend("cpu")
    w = _weights()
    x = torch.randn(2, 8, 5, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"backend 'cpu' cannot run under torch\.func\.grad.*backend='torch'"):
        torch.func.grad(lambda w1: cf.cbam(x, w1, w["w2"], w["conv_weight"], backend="cpu").sum())(w["w1"])
    # the fix the message names
    g = torch.func.grad(lambda w1: cf.cbam(x, w1, w["w2"], w["conv_weight"], backend="torch").sum())(w["w1"])
    g_ref = torch.func.grad(lambda w1: reference.cbam(x, w1, w["w2"], w["conv_weight"]).sum())(w["w1"])
    torch.testing.assert_close(g, g_ref)


def test_parallel_arrangement_under_grad_transform_raises_clearly():
    module = cf.CBAM(8, reduction=4, kernel_size=3, arrangement="parallel", backend="torch").double()
    params = {k: v.detach() for k, v in module.named_parameters()}
    x = torch.randn(2, 8, 5, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="parallel arrangement does not support torch.func.grad"):
        torch.func.grad(lambda p: torch.func.functional_call(module, p, (x,)).sum())(params)
