"""Timing, saved-for-backward bytes and peak memory of one callable."""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Optional

import torch


def training_step(module: torch.nn.Module, x: torch.Tensor, gy: torch.Tensor) -> Callable[[], None]:
    """``module(x).backward(gy)`` as a callable, with x's and the parameters' gradients set to None
    first, as a training loop's zero_grad(set_to_none=True) does."""
    params = list(module.parameters())

    def step() -> None:
        x.grad = None
        for p in params:
            p.grad = None
        module(x).backward(gy)
    return step


@dataclass
class Timing:
    median_s: float
    iqr_s: float
    samples: int  # timed blocks
    calls_per_sample: int
    counted: Optional[int] = None  # growth of ``counter()`` over this callable's warm-up and rounds

    def to_dict(self) -> dict:
        return asdict(self)


class Stopwatch:
    """Times one callable in several rounds, so that the rounds of rival callables can interleave.

    On a shared machine the load drifts over seconds; measuring contestants in turns lets each see
    the same drift. CPU: blocks of calls timed with ``time.perf_counter`` (fast calls are grouped
    into blocks of about 10 ms so that the clock's overhead stays negligible), each block giving
    one per-call sample. GPU: CUDA events around each call.

    Not ``torch.utils.benchmark.Timer``: importing it imports ``torch.utils.cpp_extension`` (build
    tooling), which logs "No CUDA runtime is found" on a machine without a GPU.
    """

    def __init__(self, fn: Callable[[], object], device: torch.device, warmup: int,
                 counter: Optional[Callable[[], int]] = None):
        self.fn, self.device, self.counter = fn, device, counter
        self.counted = 0
        before = counter() if counter else 0
        start = time.perf_counter()
        for _ in range(max(1, warmup)):
            fn()
        _sync(device)
        self.per_call_s = (time.perf_counter() - start) / max(1, warmup)
        self.counted += (counter() if counter else 0) - before
        # calls per block: about 10 ms of them, at least one
        self.calls_per_block = max(1, min(100_000, int(1e-2 / max(self.per_call_s, 1e-9))))
        self._cpu_times: list[float] = []
        self._cuda_times: list[float] = []

    def round(self, samples: int) -> None:
        """About ``samples`` x max(one call, 50 ms) more of timed blocks (CPU), or exactly ``samples``
        timed calls (GPU)."""
        before = self.counter() if self.counter else 0
        self._round(samples)
        self.counted += (self.counter() if self.counter else 0) - before

    def _round(self, samples: int) -> None:
        if self.device.type == "cuda":
            pairs = []
            for _ in range(max(1, samples)):
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                self.fn()
                end.record()
                pairs.append((begin, end))
            torch.cuda.synchronize(self.device)
            self._cuda_times += [b.elapsed_time(e) / 1e3 for b, e in pairs]
        else:
            # run blocks for samples x max(one call, 50 ms) in all (the former blocked_autorange budget)
            budget = max(1, samples) * max(self.per_call_s, 0.05)
            n, spent = self.calls_per_block, 0.0
            while spent < budget or not self._cpu_times:
                start = time.perf_counter()
                for _ in range(n):
                    self.fn()
                block = time.perf_counter() - start
                self._cpu_times.append(block / n)
                spent += block

    def result(self) -> Timing:
        counted = self.counted if self.counter else None
        if self.device.type == "cuda":
            t = self._cuda_times
            return Timing(median_s=statistics.median(t), iqr_s=iqr(t), samples=len(t), calls_per_sample=1,
                          counted=counted)
        t = self._cpu_times
        return Timing(median_s=statistics.median(t), iqr_s=iqr(t), samples=len(t),
                      calls_per_sample=self.calls_per_block, counted=counted)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def iqr(values: list[float]) -> float:
    """Interquartile range (inclusive quartiles); 0 for fewer than two values."""
    if len(values) < 2:
        return 0.0
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[2] - q[0]


def time_fn(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> Timing:
    """One callable on its own: warm-up, then about ``repeats`` samples."""
    watch = Stopwatch(fn, device, warmup)
    watch.round(repeats)
    return watch.result()


def time_interleaved(fns: dict, device: torch.device, repeats: int, warmup: int, rounds: int = 3,
                     counter: Optional[Callable[[], int]] = None) -> dict:
    """Several callables in turns: ``rounds`` rounds of about ``repeats / rounds`` samples each.

    ``counter`` (e.g. dynamo's graph count) is read between turns, never inside the timed blocks, so
    that what it counts is charged to the callable whose turn it was.
    """
    watches = {name: Stopwatch(fn, device, warmup, counter) for name, fn in fns.items()}
    per_round = max(1, -(-repeats // rounds))
    for _ in range(rounds if repeats >= rounds else 1):
        for watch in watches.values():
            watch.round(per_round if repeats >= rounds else repeats)
    return {name: watch.result() for name, watch in watches.items()}


def saved_bytes(forward: Callable[[], object], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes that autograd keeps for backward during ``forward()``: distinct storages, counted once.

    x itself counts (a block that saves only x scores |x|); views of one storage count once. Storages
    of ``exclude`` (the module's parameters, which live on anyway) do not count.
    """
    skip = {(t.device, t.untyped_storage().data_ptr()) for t in exclude}
    storages: dict[tuple, int] = {}

    def pack(t: torch.Tensor):
        st = t.untyped_storage()
        key = (t.device, st.data_ptr())
        if key not in skip:
            storages[key] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    del out
    return sum(storages.values())


def peak_memory(fn: Callable[[], object], device: torch.device) -> int | None:
    """CUDA only: peak bytes allocated during one ``fn()`` above what was allocated before it."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del out
    return int(peak)



def device_kernel_times(fns: dict, device: torch.device, calls: int = 10) -> dict:
    """CUDA only: seconds of device activity (kernels, memcpy, memset) per call of each callable, from
    one profiler session over ``calls`` calls of each in turn (after one untimed call each). Unlike
    events around a call, it leaves out the host's launch gaps, so a launch-bound call at a small shape
    still shows its kernels' own time. A callable's calls run inside a ``record_function`` range that
    ends with a synchronize, so the device work that starts inside its range is its own. None where
    the profiler recorded no device activity for a callable."""
    if device.type != "cuda":
        return {name: None for name in fns}
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, record_function

    for fn in fns.values():
        fn()
    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for name, fn in fns.items():
            with record_function(f"bench::{name}"):
                for _ in range(calls):
                    fn()
                torch.cuda.synchronize(device)
    events = prof.events()
    # device activity, without the GPU-side copies of the annotations themselves (gpu_user_annotation)
    busy = [(e.time_range.start, e.time_range.elapsed_us()) for e in events
            if e.device_type == DeviceType.CUDA and not e.name.startswith("bench::")]
    out = {}
    for name in fns:
        ranges = [e.time_range for e in events if e.name == f"bench::{name}" and e.device_type == DeviceType.CPU]
        us = sum(d for start, d in busy for r in ranges if r.start <= start <= r.end)
        out[name] = us / 1e6 / calls if us > 0 else None
    return out
