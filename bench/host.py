"""``python -m bench --mode host``: the fused block's host time against eager, at a shape where the
kernels' own work is negligible (2x64x8x8 fp32 on the CPU, one thread), and its launch counts.

Protocol: x requires grad; forward is ``m(x)``; forward+backward is ``m(x).backward(gy)`` with a fixed
random gy and the grads set to None between calls; 15 interleaved rounds of 50 calls per contestant,
median per call. "eager" is the faster of the reference CBAM and the matmul formulation (its amax
variant, as for the README's host figures).
"""
from __future__ import annotations

import json
import os
import statistics
import time

import torch

import cbam_fused
from cbam_fused import reference

from .formulations import MatmulCBAM
from .launches import NO_KERNEL, training_step_launches
from .measure import training_step

SHAPE = (2, 64, 8, 8)
TARGET = 0.5  # fused host time at most half of eager's
MODES = ("forward", "forward, no_grad", "forward+backward")


def _step(module, x, gy, mode):
    if mode == "forward":
        return lambda: module(x)
    if mode == "forward, no_grad":
        def run():
            with torch.no_grad():
                return module(x)
        return run
    return training_step(module, x, gy)


def _eager_launches(module, x, gy) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        module(x).backward(gy)
    return sum(1 for e in prof.events() if e.name.startswith("aten::") and not e.cpu_children
               and e.name not in NO_KERNEL)


def measure(rounds: int = 15, calls: int = 50, threads: int = 1) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    n, c, h, w = SHAPE
    ref = reference.CBAM(c)
    fused = cbam_fused.CBAM(c)
    fused.load_state_dict(ref.state_dict())
    contestants = {"fused": fused, "reference": ref, "matmul": MatmulCBAM(ref, ties="split")}
    x = torch.randn(*SHAPE, requires_grad=True)
    gy = torch.randn(*SHAPE)
    out = {"shape": list(SHAPE), "dtype": "float32", "threads": threads, "rounds": rounds, "calls": calls,
           "backend": cbam_fused.ops.resolve_backend(None, x), "modes": {}}
    for mode in MODES:
        steps = {name: _step(m, x, gy, mode) for name, m in contestants.items()}
        for step in steps.values():  # warm-up
            for _ in range(5):
                step()
        samples = {name: [] for name in steps}
        for _ in range(rounds):
            for name, step in steps.items():
                t = time.perf_counter()
                for _ in range(calls):
                    step()
                samples[name].append((time.perf_counter() - t) / calls)
        med = {name: statistics.median(v) * 1e6 for name, v in samples.items()}
        eager_name = min(("reference", "matmul"), key=med.get)
        out["modes"][mode] = {"us": med, "eager": eager_name, "fused_vs_eager": med["fused"] / med[eager_name]}
    fwd, bwd = training_step_launches(fused, x, gy)
    out["launches"] = {"fused_forward": len(fwd), "fused_backward": len(bwd), "fused_forward_names": fwd,
                       "fused_backward_names": bwd,
                       "reference": _eager_launches(ref, x, gy), "matmul": _eager_launches(contestants["matmul"], x, gy)}
    return out


def print_table(console, result: dict) -> None:
    from rich.table import Table

    t = Table(title=f"host path, {'x'.join(map(str, result['shape']))} fp32 on the CPU, "
                    f"{result['threads']} thread(s), median of {result['rounds']} rounds of {result['calls']} calls")
    for col in ("", "fused", "reference", "matmul", "fused / eager", f"target <= {TARGET}"):
        t.add_column(col, justify="right")
    for mode, r in result["modes"].items():
        us = r["us"]
        met = "-" if mode == "forward, no_grad" else ("met" if r["fused_vs_eager"] <= TARGET else "MISSED")
        t.add_row(mode, f"{us['fused']:.0f} us", f"{us['reference']:.0f} us", f"{us['matmul']:.0f} us",
                  f"{r['fused_vs_eager']:.2f} (vs {r['eager']})", met)
    ln = result["launches"]
    t.add_row("ATen ops + kernels, forward+backward", f"{ln['fused_forward']} + {ln['fused_backward']}",
              str(ln["reference"]), str(ln["matmul"]), "", "")
    console.print(t)


def main(console, out_dir: str) -> int:
    result = measure()
    print_table(console, result)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "host.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    console.print(f"JSON: {path}")
    return 0
