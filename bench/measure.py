"""Timing, saved-for-backward bytes and peak memory of one callable."""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable

import torch
import torch.utils.benchmark as tbench


@dataclass
class Timing:
    median_s: float
    iqr_s: float
    samples: int  # timed blocks
    calls_per_sample: int

    def to_dict(self) -> dict:
        return asdict(self)


class Stopwatch:
    """Times one callable in several rounds, so that the rounds of rival callables can interleave.

    On a shared machine the load drifts over seconds; measuring contestants in turns lets each see
    the same drift. CPU: ``torch.utils.benchmark.Timer.blocked_autorange`` per round (fast calls are
    grouped into blocks of up to ~50 ms so that the timer's overhead stays negligible), the rounds
    merged into one ``Measurement``. GPU: CUDA events around each call.
    """

    def __init__(self, fn: Callable[[], object], device: torch.device, warmup: int):
        self.fn, self.device = fn, device
        start = time.perf_counter()
        for _ in range(max(1, warmup)):
            fn()
        _sync(device)
        self.per_call_s = (time.perf_counter() - start) / max(1, warmup)
        self._timer = tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
        self._measurements: list = []
        self._cuda_times: list[float] = []

    def round(self, samples: int) -> None:
        """About ``samples`` more timed blocks (CPU) or exactly ``samples`` timed calls (GPU)."""
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
            self._measurements.append(
                self._timer.blocked_autorange(min_run_time=max(1, samples) * max(self.per_call_s, 0.05)))

    def result(self) -> Timing:
        if self.device.type == "cuda":
            t = self._cuda_times
            return Timing(median_s=statistics.median(t), iqr_s=_iqr(t), samples=len(t), calls_per_sample=1)
        m = tbench.Measurement.merge(self._measurements)[0]
        return Timing(median_s=m.median, iqr_s=m.iqr, samples=len(m.times),
                      calls_per_sample=max(x.number_per_run for x in self._measurements))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _iqr(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[2] - q[0]


def time_fn(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> Timing:
    """One callable on its own: warm-up, then about ``repeats`` samples."""
    watch = Stopwatch(fn, device, warmup)
    watch.round(repeats)
    return watch.result()


def time_interleaved(fns: dict, device: torch.device, repeats: int, warmup: int, rounds: int = 3) -> dict:
    """Several callables in turns: ``rounds`` rounds of about ``repeats / rounds`` samples each."""
    watches = {name: Stopwatch(fn, device, warmup) for name, fn in fns.items()}
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
