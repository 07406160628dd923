"""The sweep: every (dtype, shape, mode) timed for each fused backend, eager and torch.compile.

"compile" is the fastest of several compiled formulations (``bench.formulations``), each compiled afresh
per shape and mode and timed in the same interleaved rounds as the others.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch._inductor.config
from torch import nn
from torch._dynamo.utils import counters as dynamo_counters

import cbam_fused
from cbam_fused import reference

from . import budget
from .formulations import FORMULATIONS, build
from .measure import peak_memory, saved_bytes, time_interleaved

# The project's CPU targets (bench/README.md, `targets`), checked per fused row; ratios, not measurements.
TARGETS = {
    "forward+backward": {"min_speedup_vs_compile": 2.0, "min_speedup_vs_eager": 3.0},
    "forward": {"min_speedup_vs_compile": 1.0},
    "max_saved_over_x": 1.1,
}
TARGETS["forward+backward_sum"] = TARGETS["forward+backward"]  # both kinds of upstream gradient


@dataclass
class Impl:
    """One contestant: ``kind`` is "fused", "eager" or "compile"; ``backend`` names the fused backend,
    ``formulation`` the compiled formulation."""

    name: str
    kind: str
    backend: Optional[str] = None
    formulation: Optional[str] = None


@dataclass
class Config:
    device: torch.device
    backends: list[str]
    dtypes: list[torch.dtype]
    modes: list[str]
    shapes: list[tuple[int, int, int, int]]
    repeats: int = 10
    warmup: int = 3
    compile: bool = True
    compile_formulations: list[str] = field(default_factory=lambda: list(FORMULATIONS))
    channels_last: bool = False
    reduction: int = 16
    kernel_size: int = 7
    seed: int = 0
    compile_budget_s: Optional[float] = None  # first calls of compiled contestants, summed over the run
    impls: list[Impl] = field(default_factory=list)
    compile_spent_s: float = 0.0
    compile_skipped: list[dict] = field(default_factory=list)  # (dtype, shape, mode) run without compile

    def __post_init__(self):
        self.impls = [Impl("eager", "eager")]
        if self.compile:
            self.impls += [Impl(f"compile:{f}", "compile", formulation=f) for f in self.compile_formulations]
        self.impls += [Impl(f"fused:{b}", "fused", b) for b in self.backends]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _module(impl: Impl, ref: nn.Module, cfg: Config, channels: int) -> nn.Module:
    if impl.kind == "eager":
        return ref
    if impl.kind == "compile":
        return torch.compile(build(impl.formulation, ref), dynamic=False)
    fused = cbam_fused.CBAM(channels, cfg.reduction, cfg.kernel_size, backend=impl.backend)
    fused = fused.to(device=cfg.device, dtype=next(ref.parameters()).dtype)
    fused.load_state_dict(ref.state_dict(), strict=True)
    return fused


def _step_fns(mod: nn.Module, x: torch.Tensor, gy: torch.Tensor, mode: str):
    """(the timed step, a call that returns the output compared against eager)."""
    if mode == "forward":
        def step():
            with torch.no_grad():
                return mod(x)
        return step, step
    params = [p for p in mod.parameters() if p.requires_grad]
    xg = x.detach().requires_grad_(True)

    if mode == "forward+backward_sum":
        def step():  # the upstream gradient is y.sum()'s: expanded ones, stride 0
            return torch.autograd.grad(mod(xg).sum(), [xg, *params])
    else:
        def step():  # autograd.grad, not .backward(): no accumulation pass into .grad
            return torch.autograd.grad(mod(xg), [xg, *params], gy)

    return step, lambda: step()[0]


def run_case(cfg: Config, dtype: torch.dtype, shape, on_step: Callable[[str], None]) -> tuple[dict, list[dict]]:
    """All impls and modes at one (dtype, shape): returns (plain-pass baselines, result rows).

    Per mode: every impl is built and called once (torch.compile compiles then), then all are timed
    in interleaved rounds, then their saved bytes and peak memory are measured.
    """
    n, c, h, w = shape
    torch.manual_seed(cfg.seed)
    ref = reference.CBAM(c, cfg.reduction, cfg.kernel_size).to(device=cfg.device, dtype=dtype)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    x = torch.randn(shape, device=cfg.device, dtype=dtype).contiguous(memory_format=fmt)
    gy = torch.randn_like(x)
    x_bytes = x.numel() * x.element_size()
    base = {"shape": list(shape), "dtype": dtype_name(dtype), "x_bytes": x_bytes,
            **budget.plain_passes(x, cfg.repeats, cfg.warmup)}
    rows = []
    for mode in cfg.modes:
        mode_rows, ready = [], {}
        if any(impl.kind == "compile" for impl in cfg.impls):
            # compile in this process: a pool of compile workers would keep spinning while we time
            torch._inductor.config.compile_threads = 1
            # fresh per shape and mode (one compiled fn over many shapes hits the recompile limit); once
            # per case, not per contestant: a reset drops the code of the modules compiled before it
            torch._dynamo.reset()
        over_budget = cfg.compile_budget_s is not None and cfg.compile_spent_s >= cfg.compile_budget_s
        if over_budget and any(impl.kind == "compile" for impl in cfg.impls):
            cfg.compile_skipped.append({"dtype": dtype_name(dtype), "shape": list(shape), "mode": mode})
        for impl in cfg.impls:
            on_step(f"{dtype_name(dtype)} {tuple(shape)} {mode} {impl.name}")
            if over_budget and impl.kind == "compile":
                continue
            row = {"shape": list(shape), "dtype": dtype_name(dtype), "mode": mode, "impl": impl.name,
                   "kind": impl.kind, "backend": impl.backend, "x_bytes": x_bytes}
            if impl.kind == "compile":
                row["formulation"] = impl.formulation
            mode_rows.append(row)
            try:
                ready[impl.name] = _prepare(impl, ref, cfg, x, gy, mode, c, row)
            except Exception as e:  # a broken backend is reported, the sweep goes on
                record_error(row, e)
            cfg.compile_spent_s += row.get("compile_s", 0.0)
        _compare_outputs(mode_rows, ready)
        try:
            # dynamo's graph count, read between turns: graphs added while a compiled contestant ran
            timings = time_interleaved({name: r["step"] for name, r in ready.items()}, cfg.device,
                                       cfg.repeats, cfg.warmup, counter=lambda: _dynamo_graphs()[0])
        except Exception as e:
            for row in mode_rows:
                if row["impl"] in ready:
                    record_error(row, e)
            timings = {}
        for row in mode_rows:
            if row["impl"] in timings:
                t = timings[row["impl"]]
                row.update(time_s=t.median_s, iqr_s=t.iqr_s, samples=t.samples, calls_per_sample=t.calls_per_sample)
                if row["kind"] == "compile":
                    row["compile_recompiles"] = t.counted
                _memory(ready[row["impl"]], x, mode, cfg.device, row)
        _derive(mode_rows, base, mode)
        rows += mode_rows
    return base, rows


def record_error(row: dict, e: Exception) -> None:
    row["error"] = f"{type(e).__name__}: {e}"
    row["traceback"] = traceback.format_exc(limit=4)


def _prepare(impl: Impl, ref: nn.Module, cfg: Config, x, gy, mode: str, channels: int, row: dict) -> dict:
    """Build the module and call it once (for torch.compile: compile); returns its step and output."""
    mod = _module(impl, ref, cfg, channels)
    step, output = _step_fns(mod, x, gy, mode)
    graphs0, breaks0 = _dynamo_graphs()
    start = time.perf_counter()
    out = output().detach()
    ready = {"impl": impl, "mod": mod, "step": step, "out": out}
    if impl.kind == "compile":
        # one graph and no breaks means the timed calls run compiled code, not an eager fallback
        graphs, breaks = _dynamo_graphs()
        row.update(compile_s=time.perf_counter() - start, compile_graphs=graphs - graphs0,
                   compile_graph_breaks=breaks - breaks0)
    return ready


def _dynamo_graphs() -> tuple[int, int]:
    return dynamo_counters["stats"]["unique_graphs"], sum(dynamo_counters["graph_break"].values())


def _compare_outputs(rows: list[dict], ready: dict) -> None:
    """Max |difference| of each output (forward) or gradient of x (forward+backward) against eager."""
    expected = ready.get("eager", {}).get("out")
    for row in rows:
        r = ready.get(row["impl"])
        if r is not None and expected is not None and row["impl"] != "eager":
            row["max_abs_diff_vs_eager"] = (r["out"].float() - expected.float()).abs().max().item()
    for r in ready.values():
        r.pop("out")


def _memory(ready: dict, x, mode: str, device, row: dict) -> None:
    """Saved-for-backward bytes (forward+backward) and CUDA peak memory of one prepared impl."""
    mod = ready["mod"]
    if budget.has_backward(mode):
        try:
            xg = x.detach().requires_grad_(True)
            row["saved_bytes"] = saved_bytes(lambda: mod(xg), exclude=list(mod.parameters()))
        except Exception as e:  # e.g. hooks not traceable by a compiler
            row["saved_bytes_error"] = f"{type(e).__name__}: {e}"
    row["peak_memory_bytes"] = peak_memory(ready["step"], device)


def _derive(rows: list[dict], base: dict, mode: str) -> None:
    """Speed-ups, bytes, bandwidth and the roof ratios, from the rows of one (dtype, shape, mode).

    "compile" is the fastest compiled formulation of the case; every row names it in ``compile_winner``.
    """
    times = {r["impl"]: r.get("time_s") for r in rows}
    compiled = {r["formulation"]: r["time_s"] for r in rows if r["kind"] == "compile" and r.get("time_s")}
    winner = min(compiled, key=compiled.get) if compiled else None
    x_bytes = base["x_bytes"]
    fused_bytes = budget.bytes_moved("fused", mode, x_bytes)
    for r in rows:
        r["compile_winner"] = winner
        t = r.get("time_s")
        if t is None:
            continue
        r["speedup_vs_eager"] = times["eager"] / t if times.get("eager") else None
        r["speedup_vs_compile"] = compiled[winner] / t if winner else None
        r["bytes_moved"] = budget.bytes_moved(r["kind"], mode, x_bytes)
        r["gbps"] = r["bytes_moved"] / t / 1e9 if r["bytes_moved"] else None
        r["effective_gbps"] = fused_bytes / t / 1e9  # the fused plan's bytes over this time
        r["time_over_clone"] = t / base["clone_s"]
        r["time_over_roof"] = t / base[f"roof_{mode}_s"]
        if "saved_bytes" in r:
            r["saved_over_x"] = r["saved_bytes"] / x_bytes
        if r["kind"] == "fused":
            r["targets"] = check_targets(r, mode)


def check_targets(row: dict, mode: str) -> dict:
    """Pass/fail of the TARGETS for one fused row (None where the other side is missing)."""
    goals = TARGETS[mode]
    out = {}
    if "min_speedup_vs_compile" in goals and row.get("speedup_vs_compile") is not None:
        out["vs_compile"] = row["speedup_vs_compile"] >= goals["min_speedup_vs_compile"]
    if "min_speedup_vs_eager" in goals and row.get("speedup_vs_eager") is not None:
        out["vs_eager"] = row["speedup_vs_eager"] >= goals["min_speedup_vs_eager"]
    if "saved_over_x" in row:
        out["saved"] = row["saved_over_x"] <= TARGETS["max_saved_over_x"]
    return out
