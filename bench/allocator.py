"""``python -m bench --mode allocator``: what the CPU allocator's settings do to a plain training loop.

Every full-size output (y in the forward, gx in the backward) is a fresh tensor, in eager, compiled
and fused CBAMs alike. glibc's malloc serves a tensor that large from mmap, or from the top of its
heap once it has raised its mmap threshold, and hands the memory back to the system when enough of
it is free at the top (its trim threshold). In a loop, a step's outputs can then fault their pages
in anew every time; in the profile of a fused step those faults show up as time in the passes that
write (``apply_gates``, ``input_grad``). Settings read when the process starts decide this:

* ``default``: nothing set;
* ``thp``: ``THP_MEM_ALLOC_ENABLE=1``, PyTorch backs large CPU tensors with transparent huge pages
  (when the kernel's THP mode is ``madvise`` or ``always``);
* ``keep``: ``GLIBC_TUNABLES`` raising glibc's trim and mmap thresholds, so freed tensors stay in
  the heap for the next step.

Each setting runs in a child process. In it, at each shape: eager (the reference module), the
strongest compiled formulation for forward+backward (``matmul_amax``, see bench/formulations.py)
and the fused module take turns, ``rounds`` rounds of ``calls`` consecutive steps each, the way a
training loop runs one model; a step is ``m(x).backward(gy)`` with the gradients set to None. The
figure per round is its median step; the table gives the median and the interquartile range across
rounds (``--no-compile``: eager and fused only). cbam_fused never sets any of these: they are the
user's choice for the whole process.
"""
from __future__ import annotations

import datetime
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from .measure import iqr, training_step

GIB = 1 << 30
SETTINGS = {
    "default": {},
    "thp": {"THP_MEM_ALLOC_ENABLE": "1"},
    "keep": {"GLIBC_TUNABLES": f"glibc.malloc.trim_threshold={4 * GIB}:glibc.malloc.mmap_threshold={GIB // 2}"},
}
DEFAULT_SHAPES = ((8, 256, 56, 56), (8, 1024, 14, 14), (8, 2048, 7, 7))
IMPLS = ("eager", "compile", "fused")
COMPILE_FORMULATION = "matmul_amax"


def _steps(shape, impls, seed: int = 0) -> dict:
    import cbam_fused
    from cbam_fused import reference

    from .formulations import build

    torch.manual_seed(seed)
    ref = reference.CBAM(shape[1])
    fused = cbam_fused.CBAM(shape[1])
    fused.load_state_dict(ref.state_dict())
    modules = {"eager": ref, "fused": fused}
    if "compile" in impls:
        modules["compile"] = torch.compile(build(COMPILE_FORMULATION, ref))
    x = torch.randn(shape, requires_grad=True)
    gy = torch.randn(shape)
    return {name: training_step(modules[name], x, gy) for name in impls}


def child(shapes, impls, rounds: int, calls: int, threads: int) -> dict:
    """Runs in the child process: per shape, per implementation, the median step of each round (s)."""
    torch.set_num_threads(threads)
    out = {}
    for shape in shapes:
        steps = _steps(shape, impls)
        for step in steps.values():  # warm-up, and torch.compile's compilation
            for _ in range(3):
                step()
        per_round = {name: [] for name in steps}
        for _ in range(rounds):
            for name, step in steps.items():
                times = []
                for _ in range(calls):
                    t = time.perf_counter()
                    step()
                    times.append(time.perf_counter() - t)
                per_round[name].append(statistics.median(times))
        out["x".join(map(str, shape))] = per_round
    return out


def _thp_mode() -> str | None:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.find("[") + 1:text.find("]")] if "[" in text else text.strip()


def measure(shapes, impls, rounds: int, calls: int, threads: int) -> dict:
    result = {"schema": 1, "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "threads": threads, "rounds": rounds, "calls": calls, "thp_mode": _thp_mode(), "impls": list(impls),
              "compile_formulation": COMPILE_FORMULATION if "compile" in impls else None, "settings": {}}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name, env in SETTINGS.items():
        args = [sys.executable, "-m", "bench.allocator", "--child", json.dumps(
            {"shapes": [list(s) for s in shapes], "impls": list(impls), "rounds": rounds, "calls": calls,
             "threads": threads})]
        proc = subprocess.run(args, cwd=root, env={**os.environ, **env}, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"allocator setting {name!r}: the child failed:\n{proc.stderr[-2000:]}")
        per_shape = json.loads(proc.stdout.strip().splitlines()[-1])
        result["settings"][name] = {
            "env": env,
            "shapes": {shape: {impl: {"median_s": statistics.median(v), "iqr_s": iqr(v)} for impl, v in by_impl.items()}
                       for shape, by_impl in per_shape.items()}}
    return result


def print_table(console, result: dict) -> None:
    from rich.table import Table

    t = Table(title=f"forward+backward in a plain loop, fp32 on the CPU, {result['threads']} thread(s): median "
                    f"(IQR) of {result['rounds']} rounds of {result['calls']} steps, ms; THP mode "
                    f"{result['thp_mode']}; compile = {result['compile_formulation']}")
    impls = result["impls"]
    t.add_column("shape")
    t.add_column("setting")
    for impl in impls:
        t.add_column(impl, justify="right")
    t.add_column("fused vs compile" if "compile" in impls else "fused vs eager", justify="right")
    shapes = list(next(iter(result["settings"].values()))["shapes"])
    for shape in shapes:
        for name, setting in result["settings"].items():
            r = setting["shapes"][shape]
            cells = [f"{r[i]['median_s'] * 1e3:.2f} ({r[i]['iqr_s'] * 1e3:.2f})" for i in impls]
            base = r["compile" if "compile" in impls else "eager"]["median_s"]
            t.add_row(shape if name == "default" else "", name, *cells, f"{base / r['fused']['median_s']:.2f}")
    console.print(t)


def main(console, args, shapes) -> int:
    threads = args.threads or torch.get_num_threads()
    rounds = args.repeats if args.repeats is not None else 7
    impls = [i for i in IMPLS if not (args.no_compile and i == "compile")]
    result = measure(shapes or DEFAULT_SHAPES, impls, rounds, calls=10, threads=threads)
    print_table(console, result)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "allocator.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    console.print(f"JSON: {path}")
    return 0


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    spec = json.loads(sys.argv[2])
    found = child([tuple(s) for s in spec["shapes"]], spec["impls"], spec["rounds"], spec["calls"], spec["threads"])
    print(json.dumps(found))
