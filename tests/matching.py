"""The matching criterion of the flavor and convert tests (docs/design.md §7).

Against a float64 oracle on the same inputs, the fused result's error may be at most twice the error
of the original module run in the same dtype, plus a small absolute tolerance (relative to the
oracle's magnitude). Tie semantics, a wrong flavor or a missing term give O(1) errors and fail.
"""
import pytest
import torch

# the Triton interpreter and the CUDA emulator are slow: there the tests run the planted-ties data only
# (random data plus a dead channel and an all-tied pixel), the fast backends run both
SLOW_BACKENDS = ("triton", "cudaemu")


def skip_random_on_slow(backend, data):
    if backend in SLOW_BACKENDS and data == "random":
        pytest.skip("slow backend: the planted-ties data covers random data as well")


ATOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def assert_matches(what, fused, original, oracle, dtype=torch.float32):
    assert fused is not None, f"{what}: the fused run produced no value (missing gradient?)"
    fused, original, oracle = (t.detach().to("cpu", torch.float64) for t in (fused, original, oracle))
    assert fused.shape == oracle.shape, f"{what}: shape {tuple(fused.shape)} != {tuple(oracle.shape)}"
    scale = max(1.0, oracle.abs().max().item()) if oracle.numel() else 1.0
    err_fused = (fused - oracle).abs().max().item() if oracle.numel() else 0.0
    err_orig = (original - oracle).abs().max().item() if oracle.numel() else 0.0
    bound = 2.0 * err_orig + ATOL[dtype] * scale
    assert err_fused <= bound, (f"{what}: fused error {err_fused:.3g} > 2 x original error {err_orig:.3g} "
                                f"+ atol ({bound:.3g}); oracle scale {scale:.3g}")
