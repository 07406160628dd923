"""``python -m bench --mode passes``: each full-size pass of the fused block against a plain pass that
moves the same bytes.

Per (dtype, layout, shape), every pass of every backend asked for (``cbam_fused.backends.passes_for``:
the pass ops of the compiled backends, the Triton passes) and the yardsticks are timed side by side
in interleaved rounds (``bench.measure.time_interleaved``), each call allocating its outputs afresh as
the passes do. The yardsticks (``bench.budget.YARDSTICK_TRAFFIC``):

* read: ``x.sum((2, 3))``;
* read and write into a fresh tensor: ``x * a[:, :, None, None]``;
* two reads: ``torch.dot(x, gy)`` over the tensors' memory;
* CUDA only: ``copy_`` of x into a tensor of its own (same size), and once per run a 1 GiB
  device-to-device ``copy_``, whose bandwidth is the ceiling each pass is compared with.

A pass's bytes come from the pass contract (``bench.budget.PASS_TRAFFIC``); its ratio is its time over
its yardstick's. On CUDA the times are CUDA events around each call, and the profiler adds the device's
busy time per call (``kernel_s``), which leaves out launch gaps.
"""
from __future__ import annotations

import datetime
import os
import sys

import torch

from . import budget
from .measure import device_kernel_times, time_interleaved

# Per-pass targets: at most 1.5x its yardstick (CPU and GPU); on a GPU, for tensors larger than the L2
# cache, at least 70% of the device-to-device copy_ bandwidth.
TARGETS = {"max_over_yardstick": 1.5, "min_copy_fraction": 0.7}
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
PEAK_COPY_BYTES = 1 << 30


def _memory_order(t: torch.Tensor) -> torch.Tensor:
    """A 1-D view of ``t`` in memory order (NCHW or channels_last), without a copy."""
    if not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        t = t.permute(0, 2, 3, 1)
    return t.view(-1)


def _operands(passes, x: torch.Tensor, gen: torch.Generator) -> dict:
    """The small operands of the six passes, as the orchestration passes them (docs/design.md §4.3):
    gates in (0, 1), pools from the backend's own pool passes, random gradients of the pools."""
    n, c, h, w = x.shape
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=acc).to(x.device)

    a, s = torch.sigmoid(rand(n, c)), torch.sigmoid(rand(n, h * w))
    _, max_hw, argmax_hw, _ = passes.pool_hw(x)
    _, max_c, argmax_c, _ = passes.pool_c(x, a)
    return dict(a=a, s=s, max_hw=max_hw, argmax_hw=argmax_hw, max_c=max_c, argmax_c=argmax_c,
                u_c=rand(n, h * w) / c, v_c=rand(n, h * w), u_hw=rand(n, c) / (h * w), v_hw=rand(n, c))


def pass_calls(passes, x: torch.Tensor, gy: torch.Tensor, o: dict) -> dict:
    """The six passes of one backend as argument-free calls, index-style ties (``PASS_TRAFFIC``)."""
    return {
        "pool_hw": lambda: passes.pool_hw(x),
        "pool_c": lambda: passes.pool_c(x, o["a"]),
        "apply_gates": lambda: passes.apply_gates(x, o["a"], o["s"]),
        "gate_grads": lambda: passes.gate_grads(gy, x, o["a"], o["s"], True, True),
        "pool_c_grad_a": lambda: passes.pool_c_grad_a(x, o["a"], o["u_c"], o["v_c"], o["argmax_c"], o["max_c"],
                                                      False),
        "input_grad": lambda: passes.input_grad(gy, None, o["a"], o["s"], o["u_c"], o["v_c"], o["argmax_c"],
                                                o["max_c"], o["u_hw"], o["v_hw"], o["argmax_hw"], o["max_hw"], False),
    }


def yardstick_calls(x: torch.Tensor, gy: torch.Tensor) -> dict:
    a = torch.rand(x.shape[0], x.shape[1], dtype=x.dtype, device=x.device)
    xf, gyf = _memory_order(x), _memory_order(gy)
    calls = {"read": lambda: x.sum((2, 3)), "read_write": lambda: x * a[:, :, None, None],
             "two_reads": lambda: torch.dot(xf, gyf)}
    assert set(calls) == set(budget.YARDSTICK_TRAFFIC)
    if x.device.type == "cuda":
        dst = torch.empty_like(x)
        calls["copy"] = lambda: dst.copy_(x)
    return calls


def _yardstick_bytes(name: str, x_bytes: int) -> int:
    reads, writes = budget.YARDSTICK_TRAFFIC.get(name, (1, 1))  # copy: one read, one write
    return (reads + writes) * x_bytes


def peak_copy(device: torch.device, repeats: int, warmup: int) -> dict | None:
    """CUDA only: the bandwidth of a 1 GiB device-to-device ``copy_`` (bytes read plus written)."""
    if device.type != "cuda":
        return None
    src = torch.empty(PEAK_COPY_BYTES, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    t = time_interleaved({"copy": lambda: dst.copy_(src)}, device, max(repeats, 5), warmup)["copy"]
    del src, dst
    torch.cuda.empty_cache()
    return {"bytes": 2 * PEAK_COPY_BYTES, "time_s": t.median_s, "iqr_s": t.iqr_s,
            "gbps": 2 * PEAK_COPY_BYTES / t.median_s / 1e9}


def _l2_bytes(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    return getattr(torch.cuda.get_device_properties(device), "L2_cache_size", None)


def run_case(device: torch.device, backends: list[str], dtype: torch.dtype, layout: str, shape, repeats: int,
             warmup: int, copy_gbps: float | None, seed: int = 0) -> list[dict]:
    """Every pass of every backend and the yardsticks at one (dtype, layout, shape), interleaved."""
    from cbam_fused.backends import passes_for

    from .runner import dtype_name, record_error

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=dtype).to(device).contiguous(memory_format=LAYOUTS[layout])
    gy = torch.randn(shape, generator=gen, dtype=dtype).to(device).contiguous(memory_format=LAYOUTS[layout])
    x_bytes = x.numel() * x.element_size()
    base = {"dtype": dtype_name(dtype), "layout": layout, "shape": list(shape), "x_bytes": x_bytes}
    rows, calls = {}, {}
    for name, fn in yardstick_calls(x, gy).items():
        rows[f"yardstick:{name}"] = {**base, "kind": "yardstick", "name": name,
                                     "bytes": _yardstick_bytes(name, x_bytes)}
        calls[f"yardstick:{name}"] = fn
    for backend in backends:
        try:
            passes = passes_for(backend)
            with torch.no_grad():
                fns = pass_calls(passes, x, gy, _operands(passes, x, gen))
        except Exception as e:  # a backend that cannot run here is reported; the others are still timed
            record_error(rows.setdefault(f"{backend}:*", {**base, "kind": "pass", "backend": backend, "name": "*"}), e)
            continue
        for name, fn in fns.items():
            key = f"{backend}:{name}"
            rows[key] = {**base, "kind": "pass", "backend": backend, "name": name,
                         "bytes": budget.pass_bytes(name, x_bytes), "yardstick": budget.yardstick_of(name)}
            try:
                with torch.no_grad():
                    fn()  # a pass that fails is reported, not timed
                calls[key] = fn
            except Exception as e:
                record_error(rows[key], e)
    with torch.no_grad():
        try:
            timings = time_interleaved(calls, device, repeats, warmup)
        except Exception as e:  # a call that fails only when repeated: the case is reported, the run goes on
            for key in calls:
                record_error(rows[key], e)
            return list(rows.values())
        kernel = {}
        try:
            kernel = device_kernel_times(calls, device)
        except Exception as e:  # the profiler is optional: the events still give the times
            for key in calls:
                rows[key]["kernel_error"] = f"{type(e).__name__}: {e}"
    for key, t in timings.items():
        r = rows[key]
        r.update(time_s=t.median_s, iqr_s=t.iqr_s, samples=t.samples, calls_per_sample=t.calls_per_sample,
                 gbps=r["bytes"] / t.median_s / 1e9)
        if kernel.get(key):
            r.update(kernel_s=kernel[key], kernel_gbps=r["bytes"] / kernel[key] / 1e9)
    _derive(list(rows.values()), copy_gbps, _l2_bytes(device))
    return list(rows.values())


def _derive(rows: list[dict], copy_gbps: float | None, l2_bytes: int | None) -> None:
    """Ratio to the yardstick, fraction of the copy bandwidth, and the targets, per pass row."""
    sticks = {r["name"]: r for r in rows if r["kind"] == "yardstick" and "time_s" in r}
    for r in rows:
        if "time_s" not in r:
            continue
        if copy_gbps:
            r["copy_fraction"] = r["gbps"] / copy_gbps
            if "kernel_gbps" in r:
                r["kernel_copy_fraction"] = r["kernel_gbps"] / copy_gbps
        if r["kind"] != "pass":
            continue
        stick = sticks.get(r["yardstick"])
        if stick is not None:
            r["yardstick_s"] = stick["time_s"]
            r["over_yardstick"] = r["time_s"] / stick["time_s"]
            if stick.get("kernel_s") and r.get("kernel_s"):
                r["kernel_over_yardstick"] = r["kernel_s"] / stick["kernel_s"]
        targets = {}
        if "over_yardstick" in r:
            targets["yardstick"] = r["over_yardstick"] <= TARGETS["max_over_yardstick"]
        if copy_gbps and l2_bytes and r["x_bytes"] > l2_bytes:
            # the profiler's busy time where there is one: at these sizes launch gaps are small anyway
            frac = r.get("kernel_copy_fraction", r["copy_fraction"])
            targets["copy"] = frac >= TARGETS["min_copy_fraction"]
        r["targets"] = targets


def target_summary(rows: list[dict]) -> list[dict]:
    """Per backend and dtype: how many passes meet each target, and the worst ratio to a yardstick."""
    out = {}
    for r in rows:
        if r["kind"] != "pass" or "time_s" not in r:
            continue
        s = out.setdefault((r["backend"], r["dtype"]), {"backend": r["backend"], "dtype": r["dtype"], "checks": {},
                                                         "worst_over_yardstick": None})
        for name, ok in r.get("targets", {}).items():
            c = s["checks"].setdefault(name, {"met": 0, "total": 0})
            c["met"] += int(ok)
            c["total"] += 1
        if "over_yardstick" in r:
            worst = s["worst_over_yardstick"]
            if worst is None or r["over_yardstick"] > worst["ratio"]:
                s["worst_over_yardstick"] = {"ratio": r["over_yardstick"], "pass": r["name"], "layout": r["layout"],
                                             "shape": r["shape"]}
    return list(out.values())


def main(args, device: torch.device, backends: list[str], dtypes: list[torch.dtype], layouts: list[str],
         shapes: list, repeats: int, warmup: int) -> int:
    from rich.console import Console

    from . import machine, report
    from .runner import dtype_name

    console = Console() if sys.stdout.isatty() else Console(width=170)
    info = machine.describe(device)
    console.print(f"[bold]cbam_fused per-pass benchmark[/] on {machine.one_line(info)}")
    if not backends:
        raise SystemExit("error: no fused backend with a pass set is available for this device")
    os.makedirs(args.out, exist_ok=True)
    with torch.no_grad():
        copy = peak_copy(device, repeats, warmup)
    if copy:
        console.print(f"device-to-device copy_ of 1 GiB: {copy['gbps']:.0f} GB/s (read + written)")
    result = {
        "schema": 1, "kind": "passes",
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": list(args.argv), "machine": info,
        "config": {"device": str(device), "backends": backends, "dtypes": [dtype_name(d) for d in dtypes],
                   "layouts": layouts, "shapes": [list(s) for s in shapes], "repeats": repeats, "warmup": warmup,
                   "ties": "index", "l2_bytes": _l2_bytes(device), "targets": TARGETS,
                   "timer": "cuda events (+ profiler busy time)" if device.type == "cuda"
                   else "time.perf_counter blocks of about 10 ms"},
        "peak_copy": copy,
        "rows": [],
    }
    for dtype in dtypes:
        for layout in layouts:
            for shape in shapes:
                rows = run_case(device, backends, dtype, layout, shape, repeats, warmup, copy and copy["gbps"])
                result["rows"] += rows
                console.print(f"done {dtype_name(dtype)} {layout} {'x'.join(map(str, shape))}")
                report.write_json(result, args.out, "passes.json")  # an interrupted run keeps what it measured
    info["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result["target_summary"] = target_summary(result["rows"])
    report.print_passes(console, result)
    console.print(f"JSON: {report.write_json(result, args.out, 'passes.json')}")
    console.print(f"Markdown: {report.write_passes_markdown(result, args.out)}")
    errors = [r for r in result["rows"] if "error" in r]
    if errors:
        console.print(f"[red]{len(errors)} pass(es) failed; see 'error' in the JSON[/]")
        return 1
    return 0
