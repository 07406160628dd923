"""``python -m bench``: fused CBAM backends vs the eager reference vs torch.compile, in one sweep."""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys

import torch

from . import shapes as shape_sets
from .budget import DEFAULT_MODES, MODES
from .formulations import FORMULATIONS

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "float64": torch.float64, "fp64": torch.float64}
EXTRA_BACKENDS = ("spec",)  # the pure-torch pass spec: a dry run of the orchestration, slow by design


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark fused CBAM (every available fused backend) against the eager reference "
                    "and the fastest of several torch.compile'd formulations of it, forward and "
                    "forward+backward, and write a table, JSON and PNG plots.")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: cuda when a GPU is present, else cpu (default: %(default)s)")
    p.add_argument("--backends", default="all",
                   help="comma list of fused backends; 'all' = every fused backend available for the device "
                        "(never triton for CPU tensors); 'torch' (the unfused composite) and 'spec' (the "
                        "pure-torch pass spec) only when named (default: %(default)s)")
    p.add_argument("--dtypes", default="float32", help="comma list of float32, bfloat16, float16, float64 "
                                                       "(default: %(default)s)")
    p.add_argument("--modes", default=",".join(DEFAULT_MODES),
                   help="comma list of %s (default: %s)" % (", ".join(MODES), ",".join(DEFAULT_MODES)))
    p.add_argument("--mode", choices=("sweep", "host", "passes", "allocator"), default="sweep",
                   help="sweep: the kernel benchmark; host: the fused block's host time and launch counts "
                        "against eager at a tiny shape on the CPU, one thread; passes: each full-size pass of "
                        "each fused backend against a plain pass moving the same bytes; allocator: a plain "
                        "CPU training loop under the CPU allocator's settings, eager, compile and fused, one "
                        "process per setting (--repeats rounds, default 7; shapes default to three of the "
                        "targets) (default: %(default)s)")
    p.add_argument("--shapes", default="default",
                   help="comma list of shape sets (%s, default = %s) or literal NxCxHxW shapes "
                        "(default: %%(default)s)" % (", ".join(shape_sets.SHAPE_SETS),
                                                     "+".join(shape_sets.DEFAULT_SETS)))
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default: 10, "
                                                               "--quick: 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (default: 3, --quick: 1)")
    p.add_argument("--out", default="bench_out", help="output directory (default: %(default)s)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    p.add_argument("--compile-formulations", default="all",
                   help="comma list of the formulations compiled for the torch.compile baseline, which is "
                        "the fastest of them: %s; all = every one (default: %%(default)s)"
                        % "; ".join(f"{k} ({f.summary})" for k, f in FORMULATIONS.items()))
    p.add_argument("--quick", action="store_true", help="smoke run: the tiny shape set and few repeats")
    p.add_argument("--channels-last", action="store_true", help="x in channels_last layout (= --layouts channels_last)")
    p.add_argument("--layouts", default=None,
                   help="comma list of nchw, channels_last (default: nchw); the sweep takes one, --mode passes "
                        "any")
    p.add_argument("--compile-budget", type=float, default=None, metavar="SECONDS",
                   help="sweep: once the first calls of the compiled contestants (their compiles) have taken "
                        "this long in all, the remaining cases run without torch.compile (default: no limit)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return p


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is available")
    return torch.device(name)


def fused_backends_for(device: torch.device) -> list[str]:
    """Every fused backend that ``cbam_fused.available_backends()`` reports for tensors on ``device``."""
    import cbam_fused

    skip = {"torch"}  # the unfused composite is not a fused backend
    skip |= {"triton", "cuda"} if device.type == "cpu" else {"cpu"}
    return [b for b in cbam_fused.available_backends() if b not in skip]


def resolve_backends(text: str, device: torch.device) -> list[str]:
    from cbam_fused import backends, ops

    out: list[str] = []
    probe = torch.empty(1, 1, 1, 1, device=device)
    for name in _csv(text):
        if name == "all":
            names = fused_backends_for(device)
        elif name == "spec":
            from cbam_fused.passes import TorchPasses

            backends.register_passes("spec", TorchPasses())
            names = ["spec"]
        elif name == "triton" and device.type == "cpu":
            raise SystemExit("error: backend 'triton' is not benchmarked on CPU tensors (it would run in the "
                             "interpreter); use --device cuda")
        else:
            try:
                ops.resolve_backend(name, probe)
            except (ValueError, RuntimeError) as e:
                raise SystemExit(f"error: --backends {name}: {e}") from None
            names = [name]
        out += [n for n in names if n not in out]
    return out


def resolve_dtypes(text: str) -> list[torch.dtype]:
    out = []
    for name in _csv(text):
        if name not in DTYPES:
            raise SystemExit(f"error: unknown dtype {name!r}; expected one of {sorted(set(DTYPES))}")
        if DTYPES[name] not in out:
            out.append(DTYPES[name])
    return out


def resolve_formulations(text: str) -> list[str]:
    out: list[str] = []
    for name in _csv(text):
        names = list(FORMULATIONS) if name == "all" else [name]
        if name not in FORMULATIONS and name != "all":
            raise SystemExit(f"error: unknown compile formulation {name!r}; expected 'all' or one of "
                             f"{', '.join(FORMULATIONS)}")
        out += [n for n in names if n not in out]
    if not out:
        raise SystemExit("error: --compile-formulations is empty (use --no-compile to skip torch.compile)")
    return out


def resolve_layouts(args) -> list[str]:
    from .passes import LAYOUTS

    if args.layouts is None:
        return ["channels_last" if args.channels_last else "nchw"]
    out = []
    for name in _csv(args.layouts):
        if name not in LAYOUTS:
            raise SystemExit(f"error: unknown layout {name!r}; expected {', '.join(LAYOUTS)}")
        if name not in out:
            out.append(name)
    if not out or (args.channels_last and out != ["channels_last"]):
        raise SystemExit("error: --layouts is empty or contradicts --channels-last")
    return out


def resolve_modes(text: str) -> list[str]:
    modes = _csv(text)
    for m in modes:
        if m not in MODES:
            raise SystemExit(f"error: unknown mode {m!r}; expected {', '.join(MODES)}")
    return [m for m in MODES if m in modes]


class _NoCudaHomeProbe(logging.Filter):
    """Drops torch's "No CUDA runtime is found, using CUDA_HOME=..." log line.

    torch.compile on the CPU (inductor's C++ code generation) imports ``torch.utils.cpp_extension``
    for torch's header paths, and that module's import-time CUDA_HOME probe logs this line whenever
    nvcc is on PATH but no GPU is present. It concerns building CUDA extensions, which the benchmark
    never does; every other record of that logger still passes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No CUDA runtime is found")


def _quiet_cuda_home_probe() -> None:
    logger = logging.getLogger("torch.utils.cpp_extension")
    if not any(isinstance(f, _NoCudaHomeProbe) for f in logger.filters):
        logger.addFilter(_NoCudaHomeProbe())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_cuda_home_probe()
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from . import machine, report
    from .runner import Config, dtype_name, run_case

    if args.mode == "host":
        from rich.console import Console

        from . import host

        return host.main(Console(width=150), args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.mode == "allocator":
        from . import allocator

        try:
            shapes = None if args.shapes == "default" else shape_sets.resolve(_csv(args.shapes))
        except ValueError as e:
            raise SystemExit(f"error: --shapes: {e}") from None
        return allocator.main(Console(width=150), args, shapes)
    device = resolve_device(args.device)
    try:
        shapes = shape_sets.resolve(_csv("tiny" if args.quick and args.shapes == "default" else args.shapes))
    except ValueError as e:
        raise SystemExit(f"error: --shapes: {e}") from None
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    if repeats < 1 or warmup < 0:
        raise SystemExit("error: --repeats must be >= 1 and --warmup >= 0")
    layouts = resolve_layouts(args)
    if args.mode == "passes":
        from . import passes

        args.argv = sys.argv[1:] if argv is None else list(argv)
        return passes.main(args, device, resolve_backends(args.backends, device), resolve_dtypes(args.dtypes),
                           layouts, shapes, repeats, warmup)
    if len(layouts) != 1:
        raise SystemExit("error: the sweep runs one layout per run; --layouts takes several with --mode passes")
    if args.compile_budget is not None and args.compile_budget < 0:
        raise SystemExit("error: --compile-budget must be >= 0")
    cfg = Config(device=device, backends=resolve_backends(args.backends, device),
                 dtypes=resolve_dtypes(args.dtypes), modes=resolve_modes(args.modes), shapes=shapes,
                 repeats=repeats, warmup=warmup, compile=not args.no_compile,
                 compile_formulations=resolve_formulations(args.compile_formulations),
                 channels_last=layouts == ["channels_last"], compile_budget_s=args.compile_budget)
    if not (cfg.dtypes and cfg.modes and cfg.shapes):
        raise SystemExit("error: nothing to run (empty --dtypes, --modes or --shapes)")

    console = Console()
    if not console.is_terminal:  # logs and pipes: wide enough for the tables
        console = Console(width=150)
    info = machine.describe(device)
    console.print(f"[bold]cbam_fused benchmark[/] on {machine.one_line(info)}")
    if info.get("cbam_fused_cpu_info"):
        console.print(f"CPU kernels: {info['cbam_fused_cpu_info']}")
    load = (info.get("load_average") or [0.0])[0]
    if device.type == "cpu" and load > 0.5 * (info.get("cpus_usable") or 1):
        console.print(f"[yellow]the machine is busy (1-minute load {load:.1f} on {info.get('cpus_usable')} CPUs): "
                      f"CPU timings will be noisy[/]")
    if not cfg.backends:
        console.print("[yellow]no fused backend is available for this device (is the extension built?); "
                      "timing eager and torch.compile only[/]")
    console.print(f"fused backends: {cfg.backends or '-'}; dtypes: {[dtype_name(d) for d in cfg.dtypes]}; "
                  f"modes: {cfg.modes}; {len(shapes)} shapes; repeats {repeats}, warm-up {warmup}")

    os.makedirs(args.out, exist_ok=True)
    result = {
        "schema": 1,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv[1:] if argv is None else list(argv),
        "machine": info,
        "config": {"device": str(device), "backends": cfg.backends, "dtypes": [dtype_name(d) for d in cfg.dtypes],
                   "modes": cfg.modes, "shapes": [list(s) for s in shapes],
                   "shape_sets": {"x".join(map(str, s)): shape_sets.sets_containing(s) for s in shapes},
                   "repeats": repeats, "warmup": warmup, "compile": cfg.compile,
                   "compile_formulations": cfg.compile_formulations if cfg.compile else [],
                   "compile_budget_s": cfg.compile_budget_s,
                   "layout": "channels_last" if cfg.channels_last else "nchw",
                   "reduction": cfg.reduction, "kernel_size": cfg.kernel_size,
                   "impls": [i.name for i in cfg.impls], "timer": "cuda events" if device.type == "cuda"
                   else "time.perf_counter blocks of about 10 ms"},
        "baselines": [],
        "results": [],
    }
    total = len(cfg.dtypes) * len(shapes) * len(cfg.modes) * len(cfg.impls)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        task = progress.add_task("sweep", total=total)
        started = [0]

        def on_step(desc: str) -> None:
            if started[0]:
                progress.advance(task)
            started[0] += 1
            progress.update(task, description=desc)

        for dtype in cfg.dtypes:
            for shape in shapes:
                base, rows = run_case(cfg, dtype, shape, on_step)
                result["baselines"].append(base)
                result["results"] += rows
                result["compile_skipped"] = cfg.compile_skipped
                if not console.is_terminal:  # no live bar in logs: one line per case instead
                    console.print(f"done {dtype_name(dtype)} {'x'.join(map(str, shape))}: "
                                  f"{progress.tasks[0].completed + 1}/{total} steps, "
                                  f"{progress.tasks[0].elapsed:.0f} s")
                report.write_json(result, args.out)  # partial results survive an interrupted sweep
        progress.update(task, completed=total, description="done")

    info["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    if cfg.compile_skipped:
        console.print(f"[yellow]torch.compile skipped in {len(cfg.compile_skipped)} case(s): the compile budget "
                      f"of {cfg.compile_budget_s:g} s was spent[/]")
    result["target_summary"] = report.target_summary(result)
    result["compile_summary"] = report.compile_summary(result)
    report.print_tables(console, result)
    path = report.write_json(result, args.out)
    console.print(f"JSON: {path}")
    console.print(f"Markdown: {report.write_markdown(result, args.out)}")
    if not args.no_plots:
        for p in report.write_plots(result, args.out):
            console.print(f"plot: {p}")
    errors = [r for r in result["results"] if "error" in r]
    if errors:
        console.print(f"[red]{len(errors)} measurement(s) failed; see 'error' in the JSON[/]")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
