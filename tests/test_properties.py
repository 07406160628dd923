"""Property tests: random shapes, dtypes, layouts and flavors vs the fp64 reference, per backend.

Hypothesis draws the case; ``check_against_reference`` (tests/test_correctness.py) compares the output
and every gradient with ``cbam_fused.reference`` in fp64. Derandomized, so CI is reproducible; the
budgets keep the slow backends (interpreter, emulator) short.
"""
import contextlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from . import oracle
from .conftest import device_of
from .test_correctness import check_against_reference, make_inputs

# examples per backend: the Triton interpreter and the CUDA emulator cost seconds per case
BUDGET = {"cpu": 40, "spec": 40, "cuda": 60, "triton": 10, "cudaemu": 20}
GATES = ["sigmoid", "hard_sigmoid", "keras_hard_sigmoid"]


@st.composite
def cases(draw, backend):
    slow = backend in ("triton", "cudaemu")
    dtypes = [torch.float32, torch.bfloat16, torch.float16]
    if backend != "cudaemu":
        dtypes.append(torch.float64)
    return dict(
        n=draw(st.integers(1, 2 if slow else 3)),
        c=draw(st.integers(1, 24 if slow else 48)),
        h=draw(st.integers(1, 6 if slow else 13)),
        w=draw(st.integers(1, 6 if slow else 13)),
        dtype=draw(st.sampled_from(dtypes)),
        layout=draw(st.sampled_from(["nchw", "channels_last", "strided"])),
        unit=draw(st.sampled_from(["channel", "spatial", "cbam"])),
        gate=draw(st.sampled_from(GATES)),
        ties=draw(st.sampled_from(["index", "split"])),
        reduction=draw(st.sampled_from([1, 2, 4, 16])),
        kernel_size=draw(st.sampled_from([1, 3, 5, 7])),
        biases=draw(st.booleans()),
        dead_channel=draw(st.booleans()),  # an all-zero channel: ties in every max over its pixels
        seed=draw(st.integers(0, 2 ** 16)),
    )


def _check(backend, case):
    shape = (case["n"], case["c"], case["h"], case["w"])
    layout = case["layout"]
    if layout == "strided":  # neither NCHW- nor channels_last-contiguous: a slice of a wider tensor
        inp = make_inputs(shape[:3] + (2 * shape[3],), case["dtype"], "nchw", device_of(backend),
                          reduction=case["reduction"], kernel_size=case["kernel_size"], biases=case["biases"],
                          seed=case["seed"])
        inp["x"] = inp["x"][..., ::2]
        layout = "nchw"
    else:
        inp = make_inputs(shape, case["dtype"], layout, device_of(backend), reduction=case["reduction"],
                          kernel_size=case["kernel_size"], biases=case["biases"], seed=case["seed"])
    if case["dead_channel"]:
        inp["x"][:, 0] = 0
    with _fp64_tolerance_for(case["gate"], case["dtype"]):
        check_against_reference(backend, case["unit"], shape, case["dtype"], layout, case["gate"], case["ties"],
                                inputs=inp)


@contextlib.contextmanager
def _fp64_tolerance_for(gate, dtype):
    """PyTorch's hard-sigmoid backward uses a float32 1/6 even in fp64 (docs/design.md §2.2), so the fp64
    reference itself is off by ~3e-8 relative in the gate derivative; cancellation can lift that
    above the fp64 rtol. Loosen only that combination."""
    saved = oracle.TOL[torch.float64]
    if gate == "hard_sigmoid" and dtype == torch.float64:
        oracle.TOL[torch.float64] = (1e-8, 1e-6)
    try:
        yield
    finally:
        oracle.TOL[torch.float64] = saved


def test_random_cases_match_reference(backend):
    @settings(max_examples=BUDGET[backend], deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=cases(backend))
    def check(case):
        _check(backend, case)

    check()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_random_cases_match_reference_fp_wide(backend, dtype):
    """Larger pixel counts in the precise dtypes (several blocks per reduction in the kernels)."""
    if backend in ("triton", "cudaemu"):
        pytest.skip("large pixel counts are too slow under the interpreter and the emulator")

    @settings(max_examples=8, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(n=st.integers(1, 2), c=st.integers(1, 96), h=st.integers(16, 48), w=st.integers(16, 48),
           unit=st.sampled_from(["channel", "spatial", "cbam"]), ties=st.sampled_from(["index", "split"]),
           seed=st.integers(0, 2 ** 16))
    def check(n, c, h, w, unit, ties, seed):
        case = dict(n=n, c=c, h=h, w=w, dtype=dtype, layout="nchw", unit=unit, gate="sigmoid", ties=ties,
                    reduction=16, kernel_size=7, biases=True, dead_channel=False, seed=seed)
        _check(backend, case)

    check()
