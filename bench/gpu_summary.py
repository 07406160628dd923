"""``python -m bench.gpu_summary OUTDIR``: summary.md of a ``scripts/gpu_check.sh`` run.

Reads what the phases left in OUTDIR, complete or cut short by a time box: ``phases.jsonl``, the
pytest JUnit files ``tests_*.xml``, ``passes/passes.json`` and ``blocks_*/results.json``; writes
``OUTDIR/summary.md`` (phases, tests, per-pass bandwidth against the yardsticks and ``copy_``, the
block's times against eager and torch.compile) and prints it.
"""
from __future__ import annotations

import glob
import json
import os
import sys
import xml.etree.ElementTree as ET

from .passes import TARGETS, target_summary


def _shape(s) -> str:
    return "x".join(str(d) for d in s)


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _load(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def phases(out: str) -> list[str]:
    lines = ["## Phases", "", "| phase | status | seconds | box (s) |", "|---|---|---:|---:|"]
    try:
        with open(os.path.join(out, "phases.jsonl")) as f:
            recs = [json.loads(line) for line in f if line.strip()]
    except OSError:
        recs = []
    for r in recs:
        status = r.get("status", "?") + (f": {r['reason']}" if r.get("reason") else "")
        lines.append(f"| {r.get('phase')} | {status} | {r.get('seconds', '-')} | {r.get('box_s', '-')} |")
    return lines + [""]


def tests(out: str) -> list[str]:
    lines = ["## gpu-marked tests", ""]
    files = sorted(glob.glob(os.path.join(out, "tests_*.xml")))
    if not files:
        return lines + ["No JUnit file: the test phases did not run or did not finish.", ""]
    lines += ["| run | tests | passed | failed | errors | skipped |", "|---|---:|---:|---:|---:|---:|"]
    failed = []
    for path in files:
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as e:
            lines.append(f"| {os.path.basename(path)} | unreadable: {e} | | | | |")
            continue
        suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
        total = sum(int(s.get("tests", 0)) for s in suites)
        fails = sum(int(s.get("failures", 0)) for s in suites)
        errors = sum(int(s.get("errors", 0)) for s in suites)
        skipped = sum(int(s.get("skipped", 0)) for s in suites)
        lines.append(f"| {os.path.basename(path)[:-4]} | {total} | {total - fails - errors - skipped} | {fails} | "
                     f"{errors} | {skipped} |")
        for case in root.iter("testcase"):
            bad = case.find("failure") if case.find("failure") is not None else case.find("error")
            if bad is not None:
                msg = (bad.get("message") or "").splitlines()[0][:160] if bad.get("message") else ""
                failed.append(f"- `{case.get('classname')}::{case.get('name')}`: {msg}")
    lines.append("")
    if failed:
        lines += [f"Failed ({len(failed)}; the first 40):", ""] + failed[:40] + [""]
    return lines


def passes(out: str) -> list[str]:
    """One table per (dtype, layout): each pass's GB/s (profiler busy time where there is one) and its
    ratio to its yardstick, per shape; then the targets."""
    result = _load(os.path.join(out, "passes", "passes.json"))
    lines = ["## Per pass", ""]
    if not result:
        return lines + ["No results: the passes phase did not run.", ""]
    rows = [r for r in result["rows"] if "time_s" in r]
    copy = result.get("peak_copy")
    lines.append(f"{result['machine'].get('gpu_name') or result['machine']['cpu_model']}, torch "
                 f"{result['machine']['torch']}. Cells: GB/s (kernel busy time where the profiler gave it, else "
                 f"CUDA events), x its yardstick, % of copy_. " + (f"1 GiB device-to-device copy_: "
                                                                 f"{copy['gbps']:.0f} GB/s." if copy else ""))
    lines.append("")
    for dtype, layout in dict.fromkeys((r["dtype"], r["layout"]) for r in rows):
        sel = [r for r in rows if r["dtype"] == dtype and r["layout"] == layout]
        shapes = list(dict.fromkeys(_shape(r["shape"]) for r in sel))
        labels = list(dict.fromkeys((r.get("backend") or "yardstick") + ":" + r["name"] for r in sel))
        lines += [f"**{dtype}, {layout}**", "", "| | " + " | ".join(shapes) + " |", "|---|" + "---:|" * len(shapes)]
        for label in labels:
            cells = []
            for shape in shapes:
                r = next((r for r in sel if _shape(r["shape"]) == shape
                          and (r.get("backend") or "yardstick") + ":" + r["name"] == label), None)
                if r is None:
                    cells.append("-")
                    continue
                gbps = r.get("kernel_gbps", r["gbps"])
                ratio = r.get("kernel_over_yardstick", r.get("over_yardstick"))
                frac = r.get("kernel_copy_fraction", r.get("copy_fraction"))
                cell = f"{gbps:.3g}"
                if ratio is not None:
                    cell += f", x{ratio:.2f}"
                if frac is not None:
                    cell += f", {100 * frac:.0f}%"
                cells.append(cell)
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"Targets: each pass at most {TARGETS['max_over_yardstick']}x its yardstick; on a GPU, for tensors "
              f"larger than L2, at least {100 * TARGETS['min_copy_fraction']:.0f}% of copy_.", "",
              "| backend | dtype | met | worst x yardstick |", "|---|---|---|---|"]
    for s in target_summary(result["rows"]):
        met = ", ".join(f"{k} {c['met']}/{c['total']}" for k, c in s["checks"].items())
        w = s["worst_over_yardstick"]
        worst = "-" if w is None else f"{w['ratio']:.2f} ({w['pass']}, {w['layout']} {_shape(w['shape'])})"
        lines.append(f"| {s['backend']} | {s['dtype']} | {met} | {worst} |")
    failed = [r for r in result["rows"] if "error" in r]
    lines.append("")
    if failed:
        lines += ["Failed passes:", ""] + [f"- {r['dtype']} {r['layout']} {_shape(r['shape'])} "
                                           f"{r.get('backend')}:{r['name']}: {r['error'][:200]}" for r in failed] + [""]
    return lines


def blocks(out: str) -> list[str]:
    """Per block sweep: ms of eager, the fastest compiled formulation and each fused backend, the fused
    backends' speed-up against compile, and their peak memory."""
    lines = ["## The fused block", ""]
    found = False
    for path in sorted(glob.glob(os.path.join(out, "blocks_*", "results.json"))):
        result = _load(path)
        if not result:
            continue
        found = True
        rows = [r for r in result["results"] if "time_s" in r]
        fused = list(dict.fromkeys(r["impl"] for r in rows if r["kind"] == "fused"))
        lines += [f"**{os.path.basename(os.path.dirname(path))}** ({result['config']['layout']}; compile = the "
                  f"fastest of {', '.join(result['config']['compile_formulations']) or 'none'})", "",
                  "| dtype | shape | mode | eager ms | compile ms | " + " | ".join(f"{f} ms (vs compile)" for f in fused)
                  + " | " + " | ".join(f"{f} peak MB" for f in fused) + " |",
                  "|---|---|---|---:|---:|" + "---:|" * (2 * len(fused))]
        cases = list(dict.fromkeys((r["dtype"], _shape(r["shape"]), r["mode"]) for r in rows))
        for dtype, shape, mode in cases:
            sel = {r["impl"]: r for r in rows if (r["dtype"], _shape(r["shape"]), r["mode"]) == (dtype, shape, mode)}
            compiled = [r["time_s"] for r in sel.values() if r["kind"] == "compile"]
            eager = sel.get("eager", {}).get("time_s")
            cells = [_fmt(None if eager is None else eager * 1e3, ".3f"),
                     _fmt(min(compiled) * 1e3 if compiled else None, ".3f")]
            for f in fused:
                r = sel.get(f)
                cells.append("-" if r is None else f"{r['time_s'] * 1e3:.3f} ({_fmt(r.get('speedup_vs_compile'), '.2f')})")
            for f in fused:
                peak = (sel.get(f) or {}).get("peak_memory_bytes")
                cells.append(_fmt(None if peak is None else peak / 2**20, ".0f"))
            lines.append(f"| {dtype} | {shape} | {mode} | " + " | ".join(cells) + " |")
        skipped = result.get("compile_skipped") or []
        errors = [r for r in result["results"] if "error" in r]
        lines.append("")
        if skipped:
            lines += [f"torch.compile skipped in {len(skipped)} case(s): the compile budget was spent.", ""]
        if errors:
            lines += ["Errors:", ""] + [f"- {r['dtype']} {_shape(r['shape'])} {r['mode']} {r['impl']}: "
                                        f"{r['error'][:200]}" for r in errors] + [""]
    if not found:
        lines += ["No results: the block phases did not run.", ""]
    return lines


def write(out: str) -> str:
    text = "\n".join(["# GPU check", ""] + phases(out) + tests(out) + passes(out) + blocks(out))
    path = os.path.join(out, "summary.md")
    with open(path, "w") as f:
        f.write(text)
    return text


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not os.path.isdir(argv[0]):
        print("usage: python -m bench.gpu_summary OUTDIR (the folder scripts/gpu_check.sh wrote)", file=sys.stderr)
        return 2
    print(write(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
