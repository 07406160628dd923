"""Smoke test of the benchmark CLI: a tiny sweep writes its JSON (with every row) and its plots.

Nothing here depends on timing values; the expected rows come from the CLI's documented options
(bench/README.md) and the byte counts from docs/design.md §3, not from the bench code.
"""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

import cbam_fused
from bench import shapes as shape_sets
from bench.__main__ import build_parser, main, resolve_formulations

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [(2, 32, 8, 8), (2, 48, 5, 9)]
# bench/README.md: the formulations compiled for the torch.compile baseline, by default all of them
FORMULATIONS = ["conv1x1", "matmul", "matmul_amax"]


def _fused_cpu_backends():
    # every fused backend reported for CPU tensors; never triton on CPU, never the unfused "torch"
    return [b for b in cbam_fused.available_backends() if b not in ("torch", "triton", "cuda")]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_out")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "bench", "--quick", "--device", "cpu", "--backends", "all,spec",
           "--repeats", "1", "--warmup", "1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    with open(out / "results.json") as f:
        return out, json.load(f), proc.stdout, proc.stderr


def test_json_describes_the_machine(sweep):
    _, result, _, _ = sweep
    m = result["machine"]
    for key in ("cpu_model", "logical_cpus", "torch_threads", "aten_cpu_capability", "torch", "triton",
                "cbam_fused_backends", "device"):
        assert key in m, key
    assert m["cbam_fused_backends"] == cbam_fused.available_backends()
    assert result["config"]["shapes"] == [list(s) for s in TINY]


def test_json_has_every_row(sweep):
    _, result, _, _ = sweep
    fused = [f"fused:{b}" for b in _fused_cpu_backends() + ["spec"]]
    compiled = [f"compile:{f}" for f in FORMULATIONS]
    impls = ["eager", *compiled, *fused]
    assert result["config"]["compile_formulations"] == FORMULATIONS
    rows = {(tuple(r["shape"]), r["mode"], r["impl"]): r for r in result["results"]}
    expected = {(s, m, i) for s in TINY for m in ("forward", "forward+backward") for i in impls}
    assert set(rows) == expected
    for (shape, mode, impl), r in rows.items():
        assert "error" not in r, r.get("error")
        x_bytes = 4 * shape[0] * shape[1] * shape[2] * shape[3]  # float32
        assert r["x_bytes"] == x_bytes
        for key in ("time_s", "iqr_s", "speedup_vs_eager", "speedup_vs_compile", "effective_gbps",
                    "time_over_clone", "time_over_roof"):
            assert r[key] is not None and r[key] >= 0, (key, r)
        if impl.startswith("fused:"):
            # docs/design.md §3: the fused plan moves 4|x| forward and 5|x| backward
            assert r["bytes_moved"] == (4 if mode == "forward" else 9) * x_bytes
            assert r["max_abs_diff_vs_eager"] < 1e-4
            assert set(r["targets"]) >= ({"vs_compile"} if mode == "forward" else {"vs_compile", "vs_eager", "saved"})
        if mode == "forward+backward":
            assert r["saved_bytes"] >= x_bytes  # every implementation keeps x for backward
        if impl.startswith("compile:"):  # the timed calls ran one compiled graph, not an eager fallback
            assert (r["compile_graphs"], r["compile_graph_breaks"], r["compile_recompiles"]) == (1, 0, 0)
            assert r["formulation"] == impl.removeprefix("compile:")
            assert r["max_abs_diff_vs_eager"] < 1e-4
        # "compile" is the fastest compiled formulation of the same shape and mode
        best = min(compiled, key=lambda i: rows[shape, mode, i]["time_s"])
        assert r["compile_winner"] == best.removeprefix("compile:")
        assert r["speedup_vs_compile"] == pytest.approx(rows[shape, mode, best]["time_s"] / r["time_s"])
    assert len(result["baselines"]) == len(TINY)
    summary = {(tuple(s["shape"]), s["mode"]): s for s in result["compile_summary"]}
    assert set(summary) == {(s, m) for s in TINY for m in ("forward", "forward+backward")}
    for (shape, mode), s in summary.items():
        assert s["winner"] == rows[shape, mode, "eager"]["compile_winner"] and set(s["time_s"]) == set(FORMULATIONS)
    for b in result["baselines"]:
        assert {"clone_s", "read_s", "read_write_s", "roof_forward_s", "roof_forward+backward_s"} <= set(b)


def test_plots_and_table_are_written(sweep):
    out, _, stdout, _ = sweep
    for name in ("speedup_fwd_float32.png", "speedup_fwdbwd_float32.png"):
        with open(out / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", name
    assert "forward+backward" in stdout and "fused:spec" in stdout
    markdown = (out / "results.md").read_text()
    assert "| 2x48x5x9 | fused:spec |" in markdown
    assert markdown.count("(fastest) |") == 2 * len(TINY)  # one compiled formulation per shape and mode


# a Python warning ("...Warning: ..."), logging's "WARNING:", torch's glog-style "W1201 01:23:16" lines
WARNING_LINE = re.compile(r"warn|^[WE]\d{4} \d\d:\d\d|No CUDA runtime", re.IGNORECASE | re.MULTILINE)


def test_output_has_no_warnings(sweep):
    # the sweep runs torch.compile on the CPU, whose C++ code generation imports the build tooling
    _, _, stdout, stderr = sweep
    for name, text in (("stdout", stdout), ("stderr", stderr)):
        found = [line for line in text.splitlines() if WARNING_LINE.search(line)]
        assert not found, f"the benchmark's {name} has warnings:\n" + "\n".join(found)


def test_cuda_home_probe_is_quiet(tmp_path):
    """torch.utils.cpp_extension logs "No CUDA runtime is found" at import when CUDA_HOME is set and no GPU
    is present; the benchmark drops that line (and only imports the module through inductor)."""
    if torch.cuda.is_available():
        pytest.skip("with a GPU torch does not log the line")
    env = {**os.environ, "CUDA_HOME": str(tmp_path),
           "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    code = ("import sys, bench.__main__ as b, bench.measure, bench.runner\n"
            "assert 'torch.utils.cpp_extension' not in sys.modules, 'bench imports the build tooling'\n"
            "if sys.argv[1] == 'quiet': b._quiet_cuda_home_probe()\n"
            "import torch.utils.cpp_extension\n")
    runs = {mode: subprocess.run([sys.executable, "-c", code, mode], cwd=ROOT, env=env, capture_output=True,
                                 text=True, timeout=300) for mode in ("loud", "quiet")}
    for mode, proc in runs.items():
        assert proc.returncode == 0, f"{mode}: {proc.stderr[-3000:]}"
    assert "No CUDA runtime is found" in runs["loud"].stderr  # the control: torch does log it here
    assert runs["quiet"].stdout + runs["quiet"].stderr == ""


@pytest.mark.parametrize("argv, message", [
    (["--backends", "nonsense"], "unknown backend"),
    (["--backends", "triton"], "triton"),
    (["--dtypes", "int8"], "unknown dtype"),
    (["--modes", "backward"], "unknown mode"),
    (["--shapes", "bogus"], "unknown shape set"),
    (["--shapes", "8x256x56"], "NxCxHxW"),
    (["--compile-formulations", "matmul,bogus"], "unknown compile formulation 'bogus'"),
    (["--compile-formulations", ","], "empty"),
])
def test_bad_options_fail_clearly(argv, message):
    with pytest.raises(SystemExit, match=message):
        main(["--device", "cpu", *argv])


def test_compile_formulations_option():
    assert resolve_formulations(build_parser().parse_args([]).compile_formulations) == FORMULATIONS
    assert resolve_formulations("matmul, conv1x1,matmul") == ["matmul", "conv1x1"]


def test_shape_sets():
    default = shape_sets.resolve(["default"])
    # the five shapes of the CPU targets
    for s in [(8, 256, 56, 56), (8, 512, 28, 28), (8, 1024, 14, 14), (8, 2048, 7, 7), (32, 64, 56, 56)]:
        assert s in default
    assert (32, 256, 56, 56) in default and (8, 2048, 7, 7) in default  # ResNet-50 stages, batch 8 and 32
    assert any(h != w for _, _, h, w in shape_sets.SHAPE_SETS["neck"])
    assert len(default) == len(set(default))
    assert shape_sets.resolve(["8x16x4x6", "tiny"])[0] == (8, 16, 4, 6)


def test_broadcast_gradient_mode(tmp_path):
    """``--modes forward+backward_sum`` differentiates y.sum() (a stride-0 upstream gradient): the fused
    rows agree with eager and keep the forward+backward byte plan and targets (bench/README.md)."""
    main(["--device", "cpu", "--backends", "cpu", "--shapes", "2x32x8x8", "--modes", "forward+backward_sum",
          "--no-compile", "--no-plots", "--repeats", "1", "--warmup", "1", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "results.json").read_text())
    rows = {r["impl"]: r for r in result["results"]}
    assert {r["mode"] for r in rows.values()} == {"forward+backward_sum"}
    assert set(rows) == {"eager", "fused:cpu"}
    x_bytes = 4 * 2 * 32 * 8 * 8
    fused = rows["fused:cpu"]
    assert fused["max_abs_diff_vs_eager"] < 1e-5
    assert fused["bytes_moved"] == 9 * x_bytes  # docs/design.md §3: 4|x| forward, 5|x| backward
    assert set(fused["targets"]) == {"vs_eager", "saved"} and fused["saved_bytes"] >= x_bytes


def test_every_mode_has_a_plot_name():
    from bench.budget import MODES
    from bench.report import MODE_FILE
    assert set(MODE_FILE) == set(MODES)


def test_allocator_mode(tmp_path):
    """``--mode allocator`` runs eager and fused in one child process per allocator setting (bench/README.md)
    and reports each setting's environment and a time per implementation and shape."""
    main(["--mode", "allocator", "--shapes", "2x32x8x8", "--no-compile", "--repeats", "2", "--threads", "1",
          "--out", str(tmp_path)])
    result = json.loads((tmp_path / "allocator.json").read_text())
    assert set(result["settings"]) == {"default", "thp", "keep"}
    assert result["settings"]["default"]["env"] == {}
    assert result["settings"]["thp"]["env"] == {"THP_MEM_ALLOC_ENABLE": "1"}
    assert "glibc.malloc.trim_threshold" in result["settings"]["keep"]["env"]["GLIBC_TUNABLES"]
    for setting in result["settings"].values():
        impls = setting["shapes"]["2x32x8x8"]
        assert set(impls) == {"eager", "fused"}
        assert all(t["median_s"] > 0 and t["iqr_s"] >= 0 for t in impls.values())
