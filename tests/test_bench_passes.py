"""Smoke test of ``python -m bench --mode passes`` on the CPU at tiny shapes, of the sweep's compile
budget, and of the summary that scripts/gpu_check.sh writes from such results.

Nothing here depends on timing values. The bytes each pass moves and the yardstick it is compared
with are written out from docs/design.md §3.1 (the traffic table) and §4.3, not taken from the bench code.
"""
import json
import os
import re
import subprocess
import sys

import pytest

import cbam_fused
from bench import gpu_summary
from bench.__main__ import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [(2, 32, 8, 8), (2, 48, 5, 9)]
DTYPES = {"float32": 4, "bfloat16": 2}
LAYOUTS = ["nchw", "channels_last"]
# docs/design.md §3.1: full-size tensors read + written per pass (index-style ties), and the plain pass
# moving the same: one read -> x.sum, a read and a write -> x * a, two reads -> torch.dot
TRAFFIC = {"pool_hw": 1, "pool_c": 1, "apply_gates": 2, "gate_grads": 2, "pool_c_grad_a": 1, "input_grad": 2}
YARDSTICK = {"pool_hw": "read", "pool_c": "read", "apply_gates": "read_write", "gate_grads": "two_reads",
             "pool_c_grad_a": "read", "input_grad": "read_write"}
WARNING_LINE = re.compile(r"warn|^[WE]\d{4} \d\d:\d\d|No CUDA runtime", re.IGNORECASE | re.MULTILINE)


def _env():
    return {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _backends():
    return [b for b in cbam_fused.available_backends() if b not in ("torch", "triton", "cuda")] + ["spec"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("passes_out")
    cmd = [sys.executable, "-m", "bench", "--mode", "passes", "--quick", "--device", "cpu", "--backends", "all,spec",
           "--dtypes", ",".join(DTYPES), "--layouts", ",".join(LAYOUTS), "--repeats", "1", "--warmup", "1",
           "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    with open(out / "passes.json") as f:
        return out, json.load(f), proc.stdout, proc.stderr


def test_every_pass_and_yardstick_is_timed(run):
    _, result, _, _ = run
    assert result["config"]["layouts"] == LAYOUTS and result["config"]["shapes"] == [list(s) for s in TINY]
    assert result["peak_copy"] is None  # the copy_ ceiling is a GPU measurement
    rows = {(r["dtype"], r["layout"], tuple(r["shape"]), r.get("backend"), r["name"]): r for r in result["rows"]}
    expected = {(d, lay, s, b, p) for d in DTYPES for lay in LAYOUTS for s in TINY for b in _backends() for p in TRAFFIC}
    expected |= {(d, lay, s, None, y) for d in DTYPES for lay in LAYOUTS for s in TINY
                 for y in ("read", "read_write", "two_reads")}
    assert set(rows) == expected
    for (dtype, layout, shape, backend, name), r in rows.items():
        assert "error" not in r, r.get("error")
        x_bytes = DTYPES[dtype] * shape[0] * shape[1] * shape[2] * shape[3]
        assert r["x_bytes"] == x_bytes
        assert r["time_s"] > 0 and r["gbps"] == pytest.approx(r["bytes"] / r["time_s"] / 1e9)
        assert "kernel_s" not in r and "copy_fraction" not in r  # CUDA only
        if backend is None:
            assert r["kind"] == "yardstick"
            assert r["bytes"] == {"read": 1, "read_write": 2, "two_reads": 2}[name] * x_bytes
            continue
        assert r["bytes"] == TRAFFIC[name] * x_bytes
        assert r["yardstick"] == YARDSTICK[name]
        stick = rows[dtype, layout, shape, None, YARDSTICK[name]]
        assert r["over_yardstick"] == pytest.approx(r["time_s"] / stick["time_s"])
        assert set(r["targets"]) == {"yardstick"} and r["targets"]["yardstick"] == (r["over_yardstick"] <= 1.5)


def test_target_summary_counts_every_pass(run):
    _, result, _, _ = run
    summary = {(s["backend"], s["dtype"]): s for s in result["target_summary"]}
    assert set(summary) == {(b, d) for b in _backends() for d in DTYPES}
    for s in summary.values():
        assert s["checks"]["yardstick"]["total"] == len(TRAFFIC) * len(LAYOUTS) * len(TINY)
        assert s["worst_over_yardstick"]["pass"] in TRAFFIC


def test_tables_are_written_without_warnings(run):
    out, _, stdout, stderr = run
    assert "cpu:gate_grads" in stdout and "yardstick:two_reads" in stdout
    markdown = (out / "passes.md").read_text()
    assert markdown.count("| 2x48x5x9 | cpu:input_grad |") == len(DTYPES) * len(LAYOUTS)
    for name, text in (("stdout", stdout), ("stderr", stderr)):
        found = [line for line in text.splitlines() if WARNING_LINE.search(line)]
        assert not found, f"the benchmark's {name} has warnings:\n" + "\n".join(found)


def test_gpu_summary_of_a_cut_short_run(run, tmp_path):
    """summary.md from what the phases left: a phase record, a JUnit file with one failure, and a
    passes.json written before the run's end (no target summary yet)."""
    _, result, _, _ = run
    (tmp_path / "phases.jsonl").write_text(
        '{"phase": "build", "status": "ok", "rc": 0, "seconds": 61, "box_s": 150}\n'
        '{"phase": "tests_core", "status": "timeout", "rc": 124, "seconds": 45, "box_s": 45}\n')
    (tmp_path / "tests_core.xml").write_text(
        '<testsuites><testsuite name="pytest" tests="3" failures="1" errors="0" skipped="1">'
        '<testcase classname="tests.test_x" name="test_a"/>'
        '<testcase classname="tests.test_x" name="test_b"><failure message="AssertionError: off by one"/></testcase>'
        '<testcase classname="tests.test_x" name="test_c"><skipped/></testcase></testsuite></testsuites>')
    partial = {k: v for k, v in result.items() if k != "target_summary"}
    (tmp_path / "passes").mkdir()
    (tmp_path / "passes" / "passes.json").write_text(json.dumps(partial))
    assert gpu_summary.main([str(tmp_path)]) == 0
    text = (tmp_path / "summary.md").read_text()
    assert "| tests_core | timeout | 45 | 45 |" in text
    assert "| tests_core | 3 | 1 | 1 | 0 | 1 |" in text
    assert "`tests.test_x::test_b`: AssertionError: off by one" in text
    rows = [line for line in text.splitlines() if line.startswith("| cpu:pool_c_grad_a |")]
    assert len(rows) == len(DTYPES) * len(LAYOUTS) and all(line.count(", x") == len(TINY) for line in rows)
    assert "No results: the block phases did not run." in text


def test_compile_budget_stops_compiling(tmp_path):
    """Once the compiles have taken the budget, the remaining cases run without torch.compile."""
    cmd = [sys.executable, "-m", "bench", "--device", "cpu", "--shapes", "tiny", "--modes", "forward",
           "--backends", "cpu", "--compile-formulations", "matmul", "--compile-budget", "0.001", "--repeats", "1",
           "--warmup", "1", "--no-plots", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    result = json.loads((tmp_path / "results.json").read_text())
    impls = {tuple(s): {r["impl"] for r in result["results"] if tuple(r["shape"]) == tuple(s)} for s in TINY}
    assert impls[TINY[0]] == {"eager", "compile:matmul", "fused:cpu"}
    assert impls[TINY[1]] == {"eager", "fused:cpu"}
    assert result["compile_skipped"] == [{"dtype": "float32", "shape": list(TINY[1]), "mode": "forward"}]
    assert all(r.get("speedup_vs_compile") is None for r in result["results"] if tuple(r["shape"]) == TINY[1])


@pytest.mark.parametrize("argv, message", [
    (["--mode", "passes", "--layouts", "nhwc"], "unknown layout 'nhwc'"),
    (["--mode", "passes", "--layouts", "nchw", "--channels-last"], "contradicts"),
    (["--layouts", "nchw,channels_last"], "one layout"),
    (["--compile-budget", "-1"], "--compile-budget"),
])
def test_bad_options_fail_clearly(argv, message):
    with pytest.raises(SystemExit, match=message):
        main(["--device", "cpu", "--shapes", "tiny", *argv])


def test_gpu_summary_works_without_the_extension():
    """The summary is written even after a failed build, when cbam_fused does not import."""
    code = "import sys, bench.gpu_summary; assert 'cbam_fused' not in sys.modules, sorted(sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_gpu_columns_render(run, tmp_path):
    """The GPU-only fields (copy_ ceiling, profiler busy time, the copy target above L2) on the CPU run's rows:
    the fractions follow from the bytes and times, and the tables and the summary render them."""
    import copy
    import io

    from rich.console import Console

    from bench import passes, report

    _, result, _, _ = run
    result = copy.deepcopy(result)
    copy_gbps = 1000.0
    result["peak_copy"] = {"bytes": 2 << 30, "time_s": (2 << 30) / copy_gbps / 1e9, "iqr_s": 0.0, "gbps": copy_gbps}
    rows = result["rows"]
    for r in rows:
        r["kernel_s"] = r["time_s"] / 2  # as if half of each call were launch gaps
        r["kernel_gbps"] = r["bytes"] / r["kernel_s"] / 1e9
    l2 = min(r["x_bytes"] for r in rows)  # the smaller shape fits, the larger does not
    passes._derive(rows, copy_gbps, l2)
    for r in rows:
        assert r["copy_fraction"] == pytest.approx(r["bytes"] / r["time_s"] / 1e9 / copy_gbps)
        assert r["kernel_copy_fraction"] == pytest.approx(2 * r["copy_fraction"])
        if r["kind"] == "pass":
            assert ("copy" in r["targets"]) == (r["x_bytes"] > l2)
            if "copy" in r["targets"]:
                assert r["targets"]["copy"] == (r["kernel_copy_fraction"] >= 0.7)
    result["target_summary"] = passes.target_summary(rows)
    console = Console(file=io.StringIO(), width=250)
    report.print_passes(console, result)
    text = console.file.getvalue()
    assert "% copy_" in text and "kernel GB/s" in text and "1 GiB device-to-device copy_" in text
    markdown = report.passes_markdown(result)
    assert "| kernel us |" in markdown
    (tmp_path / "passes").mkdir()
    (tmp_path / "passes" / "passes.json").write_text(json.dumps(result))
    gpu_summary.write(str(tmp_path))
    summary = (tmp_path / "summary.md").read_text()
    assert f"1 GiB device-to-device copy_: {copy_gbps:.0f} GB/s." in summary
    line = next(line for line in summary.splitlines() if line.startswith("| cpu:gate_grads |"))
    assert line.count("%") == len(TINY)
