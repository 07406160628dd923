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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_cpu(fn: Callable[[], object], repeats: int, warmup: int) -> Timing:
    """``torch.utils.benchmark`` on the CPU: ``warmup`` calls, then about ``repeats`` timed blocks.

    ``blocked_autorange`` groups fast calls into blocks (of up to ~50 ms here) so that the timer's
    overhead stays negligible; its minimum run time, set from the warm-up, gives at least about
    ``repeats`` blocks.
    """
    start = time.perf_counter()
    for _ in range(max(1, warmup)):
        fn()
    per_call = (time.perf_counter() - start) / max(1, warmup)
    timer = tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=repeats * max(per_call, 0.05))
    return Timing(median_s=m.median, iqr_s=m.iqr, samples=len(m.times), calls_per_sample=m.number_per_run)


def time_cuda(fn: Callable[[], object], repeats: int, warmup: int, device: torch.device) -> Timing:
    """CUDA events around each of ``repeats`` calls, after ``warmup`` calls."""
    for _ in range(max(1, warmup)):
        fn()
    torch.cuda.synchronize(device)
    pairs = []
    for _ in range(max(1, repeats)):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        pairs.append((begin, end))
    torch.cuda.synchronize(device)
    times = [b.elapsed_time(e) / 1e3 for b, e in pairs]
    return Timing(median_s=statistics.median(times), iqr_s=_iqr(times), samples=len(times), calls_per_sample=1)


def _iqr(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[2] - q[0]


def time_fn(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> Timing:
    if device.type == "cuda":
        return time_cuda(fn, repeats, warmup, device)
    return time_cpu(fn, repeats, warmup)


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
