"""Rich tables, the JSON file and the matplotlib plots of a sweep."""
from __future__ import annotations

import json
import os

from rich.console import Console
from rich.table import Table

from .budget import has_backward
from .runner import TARGETS


def _shape(s) -> str:
    return "x".join(str(d) for d in s)


def _fmt(v, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def _ok(flag) -> str:
    return "" if flag is None else (" [green]✓[/]" if flag else " [red]✗[/]")


def _impl_label(r: dict, markup: bool = True) -> str:
    """The impl's name; the compiled formulation that "compile" stands for is marked."""
    if r["kind"] == "fused" and markup:
        return f"[bold cyan]{r['impl']}[/]"
    if r["kind"] == "compile" and r.get("formulation") == r.get("compile_winner"):
        return f"{r['impl']} (fastest)"
    return r["impl"]


def print_tables(console: Console, result: dict) -> None:
    rows, device = result["results"], result["config"]["device"]
    on_gpu = device.startswith("cuda")
    keys = sorted({(r["dtype"], r["mode"]) for r in rows}, key=lambda k: (k[0], k[1] != "forward", k[1]))
    for dtype, mode in keys:
        t = Table(title=f"{mode}, {dtype}, {device}  median (IQR); vs = speed-up; vs compile = against the fastest "
                        f"compiled formulation; x clone / x roof = time in units of the plain passes",
                  show_lines=False, header_style="bold")
        t.add_column("shape", no_wrap=True)
        t.add_column("impl", no_wrap=True)
        for col in ("ms (IQR)", "vs eager", "vs compile", "GB/s", "x clone", "x roof"):
            t.add_column(col, justify="right", no_wrap=True)
        if has_backward(mode):
            t.add_column("saved/|x|", justify="right", no_wrap=True)
        if on_gpu:
            t.add_column("peak MB", justify="right")
        t.add_column("max|diff|", justify="right")
        last_shape = None
        for r in (r for r in rows if r["dtype"] == dtype and r["mode"] == mode):
            shape = _shape(r["shape"])
            if last_shape is not None and shape != last_shape:
                t.add_section()
            first = shape != last_shape
            last_shape = shape
            name = _impl_label(r)
            if "error" in r:
                t.add_row(shape if first else "", name, f"[red]{r['error'][:70]}[/]")
                continue
            tg = r.get("targets", {})
            cells = [
                shape if first else "", name,
                f"{r['time_s'] * 1e3:.3f} ({r['iqr_s'] * 1e3:.3f})",
                _fmt(r.get("speedup_vs_eager"), ".2f") + _ok(tg.get("vs_eager")),
                _fmt(r.get("speedup_vs_compile"), ".2f") + _ok(tg.get("vs_compile")),
                _fmt(r.get("gbps"), ".1f"),
                _fmt(r.get("time_over_clone"), ".2f"), _fmt(r.get("time_over_roof"), ".2f"),
            ]
            if has_backward(mode):
                cells.append(_fmt(r.get("saved_over_x"), ".3f") + _ok(tg.get("saved")))
            if on_gpu:
                peak = r.get("peak_memory_bytes")
                cells.append(_fmt(None if peak is None else peak / 2**20, ".1f"))
            cells.append(_fmt(r.get("max_abs_diff_vs_eager"), ".1e"))
            t.add_row(*cells)
        console.print(t)
    _print_compile_summary(console, result)
    _print_baselines(console, result)
    _print_target_summary(console, result)


def compile_summary(result: dict) -> list[dict]:
    """Per (dtype, shape, mode): every compiled formulation's median and the fastest, which "compile" is."""
    out = {}
    for r in result["results"]:
        if r["kind"] != "compile":
            continue
        key = (r["dtype"], tuple(r["shape"]), r["mode"])
        s = out.setdefault(key, {"dtype": r["dtype"], "shape": list(r["shape"]), "mode": r["mode"],
                                 "winner": r.get("compile_winner"), "time_s": {}})
        s["time_s"][r["formulation"]] = r.get("time_s")  # None: it failed (see its row's error)
    return list(out.values())


def _print_compile_summary(console: Console, result: dict) -> None:
    summary = compile_summary(result)
    if not summary:
        return
    names = list(dict.fromkeys(f for s in summary for f in s["time_s"]))
    t = Table(title="torch.compile: median ms of each compiled formulation; 'compile' is the fastest",
              header_style="bold")
    for col in ("dtype", "shape", "mode", *names, "fastest"):
        t.add_column(col, justify="right" if col in names else "left", no_wrap=True)
    for s in summary:
        times = [s["time_s"].get(f) for f in names]
        t.add_row(s["dtype"], _shape(s["shape"]), s["mode"],
                  *["-" if v is None else f"{v * 1e3:.3f}" for v in times], s["winner"] or "-")
    console.print(t)


def _print_baselines(console: Console, result: dict) -> None:
    t = Table(title="plain passes (the yardsticks of docs/design.md §3.5)", header_style="bold")
    for col in ("shape", "dtype", "|x| MB", "clone ms", "read ms", "x*a ms", "roof fwd ms", "roof fwd+bwd ms"):
        t.add_column(col, justify="left" if col in ("shape", "dtype") else "right")
    for b in result["baselines"]:
        t.add_row(_shape(b["shape"]), b["dtype"], f"{b['x_bytes'] / 2**20:.1f}", f"{b['clone_s'] * 1e3:.3f}",
                  f"{b['read_s'] * 1e3:.3f}", f"{b['read_write_s'] * 1e3:.3f}",
                  f"{b['roof_forward_s'] * 1e3:.3f}", f"{b['roof_forward+backward_s'] * 1e3:.3f}")
    console.print(t)


def target_summary(result: dict) -> list[dict]:
    """Per fused backend and dtype: how many shapes meet each target, and the worst ratio seen."""
    out = {}
    for r in result["results"]:
        if r["kind"] != "fused" or "error" in r:
            continue
        key = (r["impl"], r["dtype"])
        s = out.setdefault(key, {"impl": r["impl"], "dtype": r["dtype"], "checks": {}})
        for name, ok in r.get("targets", {}).items():
            c = s["checks"].setdefault(f"{r['mode']}:{name}", {"met": 0, "total": 0})
            c["met"] += int(ok)
            c["total"] += 1
    return list(out.values())


def _print_target_summary(console: Console, result: dict) -> None:
    summary = result.get("target_summary") or []
    if not summary:
        return
    goals = (f"targets: forward+backward >= {TARGETS['forward+backward']['min_speedup_vs_compile']}x "
             f"compile and >= {TARGETS['forward+backward']['min_speedup_vs_eager']}x eager; forward >= "
             f"{TARGETS['forward']['min_speedup_vs_compile']}x compile; saved <= {TARGETS['max_saved_over_x']}|x|")
    t = Table(title=goals, header_style="bold")
    t.add_column("impl")
    t.add_column("dtype")
    t.add_column("shapes meeting each target")
    for s in summary:
        parts = []
        for name, c in s["checks"].items():
            color = "green" if c["met"] == c["total"] else "red"
            parts.append(f"{name} [{color}]{c['met']}/{c['total']}[/]")
        t.add_row(s["impl"], s["dtype"], ", ".join(parts))
    console.print(t)


def write_json(result: dict, out_dir: str, name: str = "results.json") -> str:
    """Written to a temporary file and renamed: a run killed mid-write keeps the previous complete file."""
    path = os.path.join(out_dir, name)
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=1, default=str)
    os.replace(path + ".tmp", path)
    return path


def write_markdown(result: dict, out_dir: str) -> str:
    """``results.md``: the machine and one Markdown table per (dtype, mode), ready to paste in a README."""
    m = result["machine"]
    who = m.get("gpu_name") or f"{m['cpu_model']} ({m['logical_cpus']} CPUs, {m['torch_threads']} threads, " \
                                f"ATen ISA {m['aten_cpu_capability']})"
    lines = [f"Measured {result['created_utc']} on {who}, torch {m['torch']}, load average at start "
             f"{_fmt((m.get('load_average') or [None])[0], '.1f')}; median of repeats. \"vs compile\": against "
             f"the fastest compiled formulation of each shape and mode, marked (fastest).", ""]
    rows = [r for r in result["results"] if "error" not in r]
    for dtype in sorted({r["dtype"] for r in rows}):
        for mode in [k for k in MODE_FILE if any(r["mode"] == k and r["dtype"] == dtype for r in rows)]:
            lines += [f"**{mode}, {dtype}**", "",
                      "| shape | impl | ms | vs eager | vs compile | x clone | saved/\\|x\\| |",
                      "|---|---|---:|---:|---:|---:|---:|"]
            for r in (r for r in rows if r["dtype"] == dtype and r["mode"] == mode):
                lines.append(f"| {_shape(r['shape'])} | {_impl_label(r, markup=False)} | {r['time_s'] * 1e3:.2f} | "
                             f"{_fmt(r.get('speedup_vs_eager'), '.2f')} | {_fmt(r.get('speedup_vs_compile'), '.2f')} | "
                             f"{_fmt(r.get('time_over_clone'), '.1f')} | {_fmt(r.get('saved_over_x'), '.2f')} |")
            lines.append("")
    summary = compile_summary(result)
    if summary:
        names = list(dict.fromkeys(f for s in summary for f in s["time_s"]))
        lines += ["**torch.compile: ms of each compiled formulation**", "",
                  "| dtype | shape | mode | " + " | ".join(names) + " | fastest |",
                  "|---|---|---|" + "---:|" * len(names) + "---|"]
        for s in summary:
            cells = [_fmt(None if s["time_s"].get(f) is None else s["time_s"][f] * 1e3, ".2f") for f in names]
            lines.append(f"| {s['dtype']} | {_shape(s['shape'])} | {s['mode']} | " + " | ".join(cells)
                         + f" | {s['winner'] or '-'} |")
        lines.append("")
    path = os.path.join(out_dir, "results.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


MODE_FILE = {"forward": "fwd", "forward+backward": "fwdbwd", "forward+backward_sum": "fwdbwd_sum"}


def write_plots(result: dict, out_dir: str) -> list[str]:
    """One PNG per (dtype, mode): speed-up per shape and impl, vs eager (left) and vs compile (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["results"] if "error" not in r]
    paths = []
    machine = result["machine"]
    who = machine.get("gpu_name") or f"{machine['cpu_model']}, {machine['torch_threads']} threads"
    load = (machine.get("load_average") or [None])[0]
    if load is not None and not machine.get("gpu_name"):
        who += f", load average {load:.1f} at start"
    who += f", {result['created_utc']}"
    for dtype in sorted({r["dtype"] for r in rows}):
        for mode in [m for m in MODE_FILE if any(r["mode"] == m and r["dtype"] == dtype for r in rows)]:
            sel = [r for r in rows if r["dtype"] == dtype and r["mode"] == mode]
            shapes = list(dict.fromkeys(_shape(r["shape"]) for r in sel))
            panels = [("speedup_vs_eager", "speed-up vs eager", "eager"),
                      ("speedup_vs_compile", "speed-up vs the fastest torch.compile", "compile")]
            panels = [p for p in panels if any(r.get(p[0]) for r in sel)]
            fig, axes = plt.subplots(1, len(panels), figsize=(max(8, 1.1 * len(shapes)) * len(panels) / 1.4, 4.8),
                                     squeeze=False)
            for ax, (key, label, baseline) in zip(axes[0], panels):
                impls = list(dict.fromkeys(r["impl"] for r in sel if r["kind"] != baseline))
                width = 0.8 / max(1, len(impls))
                for k, impl in enumerate(impls):
                    vals = {_shape(r["shape"]): r.get(key) for r in sel if r["impl"] == impl}
                    xs = [i + (k - (len(impls) - 1) / 2) * width for i in range(len(shapes))]
                    ax.bar(xs, [vals.get(s) or 0 for s in shapes], width, label=impl)
                ax.axhline(1.0, color="black", linewidth=0.8)
                goal = TARGETS[mode].get("min_speedup_vs_" + baseline)
                if goal and goal != 1.0:
                    ax.axhline(goal, color="red", linestyle="--", linewidth=0.8, label=f"target {goal:g}x (fused)")
                ax.set_xticks(range(len(shapes)))
                ax.set_xticklabels(shapes, rotation=45, ha="right", fontsize=8)
                ax.set_ylabel(label + " (x)")
                ax.set_title(f"{mode}, {dtype}: {label}", fontsize=10)
                ax.legend(fontsize=8)
                ax.grid(axis="y", alpha=0.3)
            fig.suptitle(who, fontsize=9)
            fig.tight_layout()
            path = os.path.join(out_dir, f"speedup_{MODE_FILE[mode]}_{dtype}.png")
            fig.savefig(path, dpi=110)
            plt.close(fig)
            paths.append(path)
    return paths


def _pass_label(r: dict) -> str:
    return f"{r['backend']}:{r['name']}" if r["kind"] == "pass" else f"yardstick:{r['name']}"


def _passes_columns(result: dict) -> list[tuple[str, callable]]:
    """(header, cell of a row) of the per-pass tables; the CUDA columns only on a GPU run."""
    def us(key):
        return lambda r: _fmt(None if r.get(key) is None else r[key] * 1e6, ".1f")

    cols = [("us (IQR)", lambda r: f"{r['time_s'] * 1e6:.1f} ({r['iqr_s'] * 1e6:.1f})"),
            ("MB moved", lambda r: f"{r['bytes'] / 1e6:.1f}"),
            ("GB/s", lambda r: _fmt(r.get("gbps"), ".1f")),
            ("yardstick", lambda r: r.get("yardstick", "")),
            ("x yardstick", lambda r: _fmt(r.get("over_yardstick"), ".2f"))]
    if result.get("peak_copy"):
        cols += [("kernel us", us("kernel_s")), ("kernel GB/s", lambda r: _fmt(r.get("kernel_gbps"), ".1f")),
                 ("kernel x yardstick", lambda r: _fmt(r.get("kernel_over_yardstick"), ".2f")),
                 ("% copy_", lambda r: _fmt(None if r.get("kernel_copy_fraction", r.get("copy_fraction")) is None
                                            else 100 * r.get("kernel_copy_fraction", r.get("copy_fraction")), ".0f"))]
    return cols


def _passes_title(result: dict) -> str:
    copy = result.get("peak_copy")
    t = (f"per pass, {result['config']['device']}: median of interleaved rounds; x yardstick = time over the plain "
         f"pass moving the same bytes (target <= {result['config']['targets']['max_over_yardstick']})")
    if copy:
        t += (f"; % copy_ = of a 1 GiB device-to-device copy_, {copy['gbps']:.0f} GB/s (target >= "
              f"{100 * result['config']['targets']['min_copy_fraction']:.0f}% above L2); kernel = profiler busy time")
    return t


def print_passes(console: Console, result: dict) -> None:
    """One table per (dtype, layout): the yardsticks then each backend's passes, per shape."""
    rows = result["rows"]
    cols = _passes_columns(result)
    for dtype, layout in dict.fromkeys((r["dtype"], r["layout"]) for r in rows):
        t = Table(title=f"{dtype}, {layout}: {_passes_title(result)}", header_style="bold")
        t.add_column("shape", no_wrap=True)
        t.add_column("pass", no_wrap=True)
        for head, _ in cols:
            t.add_column(head, justify="right", no_wrap=True)
        last = None
        for r in (r for r in rows if r["dtype"] == dtype and r["layout"] == layout):
            shape = _shape(r["shape"])
            if last is not None and shape != last:
                t.add_section()
            label = _pass_label(r) if r["kind"] == "yardstick" else f"[bold cyan]{_pass_label(r)}[/]"
            first, last = shape != last, shape
            if "error" in r or "time_s" not in r:
                t.add_row(shape if first else "", label, f"[red]{r.get('error', 'not timed')[:70]}[/]")
                continue
            tg = r.get("targets", {})
            cells = [cell(r) for _, cell in cols]
            cells[4] += _ok(tg.get("yardstick")) if r["kind"] == "pass" else ""
            if result.get("peak_copy"):
                cells[-1] += _ok(tg.get("copy"))
            t.add_row(shape if first else "", label, *cells)
        console.print(t)
    summary = result.get("target_summary") or []
    if summary:
        t = Table(title="passes meeting each target", header_style="bold")
        for col in ("backend", "dtype", "targets met", "worst x yardstick"):
            t.add_column(col)
        for s in summary:
            parts = [f"{k} [{'green' if c['met'] == c['total'] else 'red'}]{c['met']}/{c['total']}[/]"
                     for k, c in s["checks"].items()]
            w = s["worst_over_yardstick"]
            t.add_row(s["backend"], s["dtype"], ", ".join(parts),
                      "-" if w is None else f"{w['ratio']:.2f} ({w['pass']}, {w['layout']} {_shape(w['shape'])})")
        console.print(t)


def passes_markdown(result: dict) -> str:
    """The per-pass tables in Markdown (also part of scripts/gpu_check.sh's summary)."""
    m = result["machine"]
    who = m.get("gpu_name") or f"{m['cpu_model']} ({m['logical_cpus']} CPUs, {m['torch_threads']} threads)"
    lines = [f"Measured {result['created_utc']} on {who}, torch {m['torch']}, load average at start "
             f"{_fmt((m.get('load_average') or [None])[0], '.1f')}. {_passes_title(result)}.", ""]
    cols = _passes_columns(result)
    rows = [r for r in result["rows"] if "time_s" in r]
    for dtype, layout in dict.fromkeys((r["dtype"], r["layout"]) for r in rows):
        lines += [f"**{dtype}, {layout}**", "", "| shape | pass | " + " | ".join(h for h, _ in cols) + " |",
                  "|---|---|" + "---:|" * len(cols)]
        for r in (r for r in rows if r["dtype"] == dtype and r["layout"] == layout):
            lines.append(f"| {_shape(r['shape'])} | {_pass_label(r)} | " + " | ".join(c(r) for _, c in cols) + " |")
        lines.append("")
    failed = [r for r in result["rows"] if "error" in r]
    if failed:
        lines += ["**failed**", ""] + [f"- {r['dtype']} {r['layout']} {_shape(r['shape'])} {_pass_label(r)}: "
                                       f"{r['error'][:200]}" for r in failed] + [""]
    return "\n".join(lines)


def write_passes_markdown(result: dict, out_dir: str) -> str:
    path = os.path.join(out_dir, "passes.md")
    with open(path, "w") as f:
        f.write(passes_markdown(result))
    return path
