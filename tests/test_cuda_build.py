"""ptxas resource usage of the CUDA kernels: no register spills and no local-memory stack frame; and
in their SASS, the reductions' row loops keep several 16-byte loads in flight, and input_grad's row
loop loads no small operand per element.

nvcc compiles the kernel translation unit (tests/kernel_resources.py, compile_kernels: every launcher
of csrc/cuda instantiated for every dtype and layout, with no ATen) for sm_80, sm_90 and sm_120 with
``-Xptxas -v``; the same flags as the extension build. Skips without nvcc; under CI=true a missing
nvcc is a failure.
"""
import os

import pytest

from .kernel_resources import CHECKED_ARCHS as ARCHS
from .kernel_resources import (compile_kernels, demangle, find_cuobjdump, find_nvcc, innermost_loop, is_load_32,
                               loop_loads_in_flight, opcode, parse_ptxas, sass_functions)

# every kernel is named after its pass: <pass>_tiles, <pass>_finish, spatial_conv_*, channel_mlp_*
MAIN_KERNELS = ("_tiles", "_finish", "spatial_conv_", "channel_mlp_")
PASS_TILE_KERNELS = ("pool_hw_tiles", "pool_c_tiles", "gate_grads_tiles", "pool_c_grad_a_tiles", "apply_gates_tiles",
                     "input_grad_tiles")
REDUCTION_TILE_KERNELS = ("pool_hw_tiles", "pool_c_tiles", "gate_grads_tiles", "pool_c_grad_a_tiles")
TILE_INSTANCES = 4 * 2  # dtypes x layouts
MIN_LOADS_IN_FLIGHT = 4  # reduce_tiles loads kRowUnroll rows before it folds the first
ROW_OPERAND_LOADS = 5  # input_grad's per-row operand: gate, u, v, and the tie's max or argmax
VEC = {"c10::Half": 8, "float": 4}  # elements per 16 bytes


def demangled_kind(name):
    for kind in MAIN_KERNELS:
        if kind in name:
            return kind
    return None


def test_parser_reads_spills():
    sample = ("ptxas info    : Compiling entry function '_Z13pool_hw_tilesX' for 'sm_90'\n"
              "ptxas info    : Function properties for _Z13pool_hw_tilesX\n"
              "    8 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\n"
              "ptxas info    : Used 48 registers, used 1 barriers, 8 bytes cumulative stack size\n")
    assert parse_ptxas(sample) == {("_Z13pool_hw_tilesX", "sm_90"): dict(stack=8, spill_stores=8, spill_loads=4,
                                                                       registers=48)}


def compile_or_skip():
    """(nvcc's completed process, the object) of the kernel TU for ARCHS; one compile per process."""
    nvcc = find_nvcc()
    if nvcc is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true and nvcc was not found (set CUDA_HOME or put nvcc on PATH)")
        pytest.skip("nvcc not found: the ptxas resource check needs the CUDA toolkit")
    return compile_kernels(ARCHS, nvcc)


@pytest.mark.slow
def test_no_spills_no_stack():
    proc, _ = compile_or_skip()
    assert proc.returncode == 0, f"nvcc failed:\n{proc.stderr[-5000:]}"
    usage = parse_ptxas(proc.stdout + proc.stderr)
    main = {k: v for k, v in usage.items() if demangled_kind(k[0])}
    for kernel in PASS_TILE_KERNELS:
        found = [k for k in main if kernel in k[0]]
        assert len(found) == TILE_INSTANCES * len(ARCHS), f"expected every {kernel}, ptxas listed {sorted(usage)}"
    assert any("spatial_conv_grad_tiles" in k[0] for k in main), "the spatial conv kernels were not compiled"
    for kernel in ("channel_mlp_fwd", "channel_mlp_bwd"):  # float and double
        assert len([k for k in main if kernel in k[0]]) == 2 * len(ARCHS), f"{kernel} was not compiled"
    bad = {k: v for k, v in main.items()
           if v.get("stack", 1) or v.get("spill_stores", 1) or v.get("spill_loads", 1)}
    assert not bad, "kernels with spills or a stack frame:\n" + "\n".join(f"{k}: {v}" for k, v in sorted(bad.items()))
    table = "\n".join(f"{v['registers']:4d} regs  {arch}  {name}" for (name, arch), v in sorted(main.items()))
    print("ptxas registers per kernel:\n" + table)


def sm90_sass():
    """The sm_90 SASS of every kernel of the test build, by mangled name, and the demangled names
    (skips where nvcc or cuobjdump is missing)."""
    cuobjdump = find_cuobjdump()
    if cuobjdump is None:
        pytest.skip("cuobjdump not found (neither beside nvcc nor in Triton)")
    proc, obj = compile_or_skip()
    assert proc.returncode == 0, f"nvcc failed:\n{proc.stderr[-5000:]}"
    sass = sass_functions(obj, cuobjdump, "sm_90")
    return sass, demangle(sorted(sass))


@pytest.mark.slow
def test_reductions_keep_loads_in_flight():
    """The row loop of every reduction tile kernel (every dtype and layout) issues at least
    MIN_LOADS_IN_FLIGHT independent 16-byte loads before it uses one, read off the sm_90 SASS
    (kernel_resources.loop_loads_in_flight)."""
    sass, names = sm90_sass()
    loads = {names[m].split("(", 1)[0].removeprefix("void cbam_fused::cuda::"): loop_loads_in_flight(code)
             for m, code in sass.items() if any(f"::{k}<" in names[m] for k in REDUCTION_TILE_KERNELS)}
    assert len(loads) == len(REDUCTION_TILE_KERNELS) * TILE_INSTANCES, f"missing kernels: {sorted(loads)}"
    few = {k: v for k, v in sorted(loads.items()) if v < MIN_LOADS_IN_FLIGHT}
    assert not few, f"reduction kernels with fewer than {MIN_LOADS_IN_FLIGHT} 16-byte loads in flight: {few}"
    print("16-byte loads in flight (sm_90):\n" + "\n".join(f"{v:3d}  {k}" for k, v in sorted(loads.items())))


@pytest.mark.slow
def test_input_grad_loads_no_operand_per_element():
    """input_grad's row loop (sm_90 SASS; fp16 and fp32, both layouts) loads the small operands of its
    row once, not those of every element: its 32-bit global loads are at most ROW_OPERAND_LOADS per row
    (a bound that does not grow with the elements per row chunk), plus, for 32-bit elements only, the
    scalar path's loads of gy and x (2 per element). The columns' operands are loaded before the loop.
    The row loop is the innermost loop holding the row's 16-byte store (one per row)."""
    sass, names = sm90_sass()
    found = {}
    for mangled, code in sass.items():
        name = names[mangled].split("(", 1)[0].removeprefix("void cbam_fused::cuda::")
        dtype = name.removeprefix("input_grad_tiles<").split(",", 1)[0]
        if name.startswith("input_grad_tiles<") and dtype in VEC:
            body = innermost_loop(code, "STG.E.128")
            rows = sum(opcode(t).startswith("STG.E.128") for t in body)
            element_loads = 2 * VEC[dtype] if dtype == "float" else 0
            found[name] = (sum(map(is_load_32, body)), rows * (ROW_OPERAND_LOADS + element_loads), rows)
    assert len(found) == len(VEC) * 2, f"missing kernels: {sorted(found)}"
    assert all(rows >= 1 for _, _, rows in found.values()), f"no row loop with a 16-byte store: {found}"
    many = {k: v[:2] for k, v in sorted(found.items()) if v[0] > v[1]}
    assert not many, f"input_grad row loops with more 32-bit loads than allowed (loads, bound): {many}"
    print("32-bit loads in input_grad's row loop (sm_90):\n" +
          "\n".join(f"{v[0]:3d} (at most {v[1]})  {k}" for k, v in sorted(found.items())))
