"""docs/gpu_kernels.md is what scripts/cuda_model.py makes of the code now.

The doc's tables come from three sources: the emulator's grids and partials, bench/budget.py's
bytes, and nvcc (registers, shared memory, loads in flight), which the doc keeps in a table of its
own. The cheap check renders the doc again from a dry run on the emulator and that table, read back
from the doc: it fails when a grid, a partial, the byte budget or the model changes and the doc
does not. The slow one compiles the kernels and checks that table against nvcc (skips without
nvcc, or with another nvcc version than the doc's). ``python scripts/cuda_model.py`` rewrites the doc.
"""
import difflib
import importlib.util
import sys
from pathlib import Path

import pytest

from .conftest import require_backend
from .kernel_resources import (CHECKED_ARCHS, find_cuobjdump, find_nvcc, innermost_loop, is_load_32,
                               loads_before_first_use, loop_loads_in_flight)

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "cuda_model.py"


def load_model():
    """scripts/cuda_model.py as a module (scripts/ is not a package); registered first, as its
    dataclasses need."""
    if "cuda_model" not in sys.modules:
        spec = importlib.util.spec_from_file_location("cuda_model", SCRIPT)
        sys.modules["cuda_model"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["cuda_model"])
    return sys.modules["cuda_model"]


def diff(old: str, new: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), "doc", "code", n=1))[:6000]


def test_loads_before_first_use_reads_sass():
    unrolled = ["LDG.E.128 R4, desc[UR4][R2.64]", "@P0 LDG.E.128 R8, desc[UR4][R2.64+0x200]",
                "HADD2.F32 R12, -RZ, R4.H0_H0", "LDG.E.128 R4, desc[UR4][R2.64+0x400]", "FADD R13, R12, R9"]
    assert loads_before_first_use(unrolled) == 2
    assert loads_before_first_use(["LDG.E.128 R4, desc[UR4][R2.64]", "STG.E desc[UR4][R6.64], R5"]) == 1
    assert loads_before_first_use(["LDG.E R4, desc[UR4][R2.64]", "FADD R5, R4, R4"]) == 0  # 4-byte loads


def test_row_loops_in_sass():
    """Loads issued once before a loop (a column chunk's small operands) are not a row loop's loads in
    flight; branch targets are byte offsets of 16-byte instructions."""
    code = ["LDG.E.128 R20, desc[UR4][R6.64]", "LDG.E.128 R24, desc[UR4][R6.64+0x10]",
            "LDG.E.128 R4, desc[UR4][R2.64]", "FMUL R8, R4, R20", "STG.E.128 desc[UR4][R10.64], R8",
            "@P0 BRA 0x20", "EXIT"]
    assert loads_before_first_use(code) == 3 and loop_loads_in_flight(code) == 1
    assert innermost_loop(code, "STG.E.128") == code[2:6] and innermost_loop(code, "LDS") == []
    loads = ["LDG.E R4, desc[UR4][R2.64]", "@!P1 LDG.E.CONSTANT R4, desc[UR4][R2.64]", "LDG.E.U16 R4, desc[UR4][R2.64]",
             "LDG.E.64 R4, desc[UR4][R2.64]", "LDG.E.128 R4, desc[UR4][R2.64]", "LDS R4, [R2]"]
    assert [is_load_32(t) for t in loads] == [True, True, False, False, False, False]


@pytest.mark.emulator
def test_doc_is_what_the_code_gives():
    require_backend("cudaemu")
    model = load_model()
    doc = model.DOC.read_text()
    resources, nvcc = model.resources_from_doc(doc)
    assert list(resources) == model.kernels() and nvcc, "the doc's resources table lists other kernels"
    text = model.render(model.geometry(), resources, nvcc)
    assert text == doc, "docs/gpu_kernels.md is stale: run python scripts/cuda_model.py\n" + diff(doc, text)


@pytest.mark.slow
def test_doc_resources_are_what_nvcc_gives():
    """Not marked emulator, so it runs once, in the process of tests/test_cuda_build.py, whose compile
    it shares (kernel_resources.compile_kernels)."""
    if find_nvcc() is None or find_cuobjdump() is None:
        pytest.skip("nvcc or cuobjdump not found: the resources table needs the CUDA toolkit")
    model = load_model()
    from_doc, nvcc = model.resources_from_doc(model.DOC.read_text())
    if nvcc != model.toolkit():  # registers differ between toolkits
        pytest.skip(f"the doc was made with nvcc {nvcc}, this is nvcc {model.toolkit()}")
    compiled = model.compiled_resources(model.kernels(), CHECKED_ARCHS)
    stale = {k: (from_doc.get(k), v) for k, v in compiled.items() if from_doc.get(k) != v}
    assert not stale, f"run python scripts/cuda_model.py; (doc, nvcc) differ: {stale}"
