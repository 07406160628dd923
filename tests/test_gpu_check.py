"""scripts/gpu_check.sh without a GPU: it parses, its plan lists the phases in priority order within
five minutes, its benchmark commands are valid, and without a GPU it fails with one line saying why."""
import os
import re
import shlex
import subprocess
import sys

import pytest

from bench import shapes as shape_sets
from bench.__main__ import build_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_check.sh")
# the verification's phases in priority order: build, gpu-marked tests, per-pass GB/s, the block benchmark
ORDER = ["build", "tests_core", "tests_all", "passes", "blocks_nchw", "blocks_cl"]
# the four ResNet-50 stage shapes at batch 8 and 128
STAGES = [(n, *chw) for n in (8, 128) for chw in [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)]]


def _bash(*args, env=None):
    return subprocess.run(["bash", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def _plan(env=None):
    proc = _bash(SCRIPT, "--list", env=env)
    assert proc.returncode == 0, proc.stderr
    phases, commands = [], {}
    for line in proc.stdout.splitlines():
        m = re.fullmatch(r"phase (\w+) box=(\d+)s: (.+)", line)
        if m:
            phases.append((m[1], int(m[2])))
        elif line.startswith("  $ "):
            commands[phases[-1][0]] = line[4:]
    total = int(re.search(r"^total=(\d+)s$", proc.stdout, re.MULTILINE)[1])
    return phases, commands, total


def test_script_parses():
    proc = _bash("-n", SCRIPT)
    assert proc.returncode == 0, proc.stderr


def test_plan_lists_the_phases_in_priority_order_within_five_minutes():
    phases, commands, total = _plan()
    assert [name for name, _ in phases] == ORDER
    assert all(box > 0 for _, box in phases)
    assert total <= 300  # the whole check within 5 minutes; each box is capped by what is left of it
    assert set(commands) == set(ORDER)


def test_time_boxes_come_from_the_environment():
    phases, _, total = _plan({"GPU_CHECK_BUILD_S": "7", "GPU_CHECK_TOTAL_S": "120"})
    assert dict(phases)["build"] == 7 and total == 120


def test_benchmark_commands_are_valid():
    """The bench commands of the plan parse with the benchmark's own parser and cover what the GPU check
    asks for: the passes in fp16 and bf16, both layouts, the stage shapes at N=8 and N=128; the block sweep
    with the cuda and triton backends, eager and torch.compile under a compile budget, both layouts."""
    _, commands, _ = _plan()
    parsed = {}
    for name in ("passes", "blocks_nchw", "blocks_cl"):
        words = shlex.split(commands[name].replace("$((BOX / 2))", "30").replace("$((BOX / 3))", "15"))
        assert words[1:3] == ["-m", "bench"], words
        args = build_parser().parse_args(words[3:])
        assert args.device == "cuda" and args.backends == "cuda,triton"
        parsed[name] = args
    p = parsed["passes"]
    assert p.mode == "passes" and set(p.dtypes.split(",")) == {"float16", "bfloat16"}
    assert set(p.layouts.split(",")) == {"nchw", "channels_last"}
    assert set(shape_sets.resolve(p.shapes.split(","))) == set(STAGES)
    for name in ("blocks_nchw", "blocks_cl"):
        b = parsed[name]
        assert b.mode == "sweep" and not b.no_compile and b.compile_budget > 0
    assert not parsed["blocks_nchw"].channels_last and parsed["blocks_cl"].channels_last
    assert set(shape_sets.resolve(parsed["blocks_nchw"].shapes.split(","))) == set(STAGES)


def test_tests_phases_run_the_gpu_marker():
    _, commands, _ = _plan()
    for name in ("tests_core", "tests_all"):
        assert "-m pytest" in commands[name] and "-m 'gpu and not slow'" in commands[name]
        assert f"--junitxml=$OUT/{name}.xml" in commands[name]


def test_without_a_gpu_it_fails_with_one_line(tmp_path):
    # CUDA_VISIBLE_DEVICES hides any GPU of the machine running the test
    proc = _bash(SCRIPT, str(tmp_path / "out"), env={"PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode != 0
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("gpu_check: no GPU, nothing run: ") and "CUDA" in lines[0]
    assert '"phase": "preflight", "status": "failed"' in (tmp_path / "out" / "phases.jsonl").read_text()


def test_without_torch_it_says_so(tmp_path):
    (tmp_path / "torch.py").write_text("raise ImportError('planted: no torch here')\n")
    proc = _bash(SCRIPT, str(tmp_path / "out"), env={"PYTHON": sys.executable, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"gpu_check: no GPU, nothing run: {sys.executable} could not import torch: ImportError: planted: no torch here"]


@pytest.mark.parametrize("argv", [[], ["a", "b"]])
def test_usage(argv):
    proc = _bash(SCRIPT, *argv)
    assert proc.returncode == 2 and "usage" in proc.stderr


# A stand-in for the GPU machine's python: says a GPU is there, "builds", and runs each phase's
# command as the scenario asks (exit code, or a sleep that outlasts its box), logging its arguments.
STUB = r"""#!/usr/bin/env bash
echo "$*" >>"$STUB_LOG"
case "$*" in
  "-") exit 0 ;;                                          # preflight: a GPU is there
  "- "*) exit "${STUB_BUILD_RC:-0}" ;;                    # the build's check of its record
  "-c import xdist") exit 1 ;;
  *"setup.py"*) exit 0 ;;
  *"bench.gpu_summary"*) echo "# GPU check (stub)" >"$3/summary.md"; exit 0 ;;
  *"--mode passes"*) sleep "${STUB_PASSES_SLEEP:-0}"; exit 0 ;;
  *"-m pytest"*"--ignore"*) exit 1 ;;                     # tests_all: a test fails
  *) exit 0 ;;
esac
"""


def _stub_run(tmp_path, **env):
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    (root / "scripts" / "gpu_check.sh").write_text(open(SCRIPT).read())
    stub = tmp_path / "python"
    stub.write_text(STUB)
    stub.chmod(0o755)
    out, log = tmp_path / "out", tmp_path / "stub.log"
    proc = subprocess.run(["bash", str(root / "scripts" / "gpu_check.sh"), str(out)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHON": str(stub), "STUB_LOG": str(log),
                                            "GPU_CHECK_ARCH": "9.0", "GPU_CHECK_MIN_S": "2", **env})
    import json

    phases = [json.loads(line) for line in (out / "phases.jsonl").read_text().splitlines()]
    return proc, {p["phase"]: p for p in phases}, log.read_text()


def test_phases_run_in_order_and_a_phase_past_its_box_is_stopped(tmp_path):
    proc, phases, log = _stub_run(tmp_path, GPU_CHECK_PASSES_S="3", STUB_PASSES_SLEEP="60")
    assert list(phases) == ORDER
    status = {name: p["status"] for name, p in phases.items()}
    assert status == {"build": "ok", "tests_core": "ok", "tests_all": "failed", "passes": "timeout",
                      "blocks_nchw": "ok", "blocks_cl": "ok"}
    assert phases["passes"]["box_s"] == 3 and phases["passes"]["seconds"] < 30
    assert proc.returncode == 1  # not every phase passed
    assert "# GPU check (stub)" in proc.stdout  # the summary, written and printed last
    assert "--compile-budget 37" in log  # blocks_nchw: half of its 75 s box


def test_a_failed_build_skips_the_rest(tmp_path):
    proc, phases, _ = _stub_run(tmp_path, STUB_BUILD_RC="1")
    assert phases["build"]["status"] == "failed" and proc.returncode == 1
    assert all(phases[name]["status"].startswith("skipped: the build did not succeed") for name in ORDER[1:])


def test_phases_share_the_total(tmp_path):
    proc, phases, _ = _stub_run(tmp_path, GPU_CHECK_TOTAL_S="8", STUB_PASSES_SLEEP="60")
    assert phases["passes"]["status"] == "timeout" and phases["passes"]["box_s"] <= 8
    assert phases["blocks_nchw"]["status"].startswith("skipped:") and "left of the total" in phases["blocks_nchw"]["status"]
    assert proc.returncode == 1
