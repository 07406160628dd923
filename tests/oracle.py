"""Comparison helpers: the reference run in float64 is the oracle for every dtype."""
import torch

# (atol, rtol) per dtype for outputs and gradients against the fp64 oracle
TOL = {
    torch.float64: (1e-9, 1e-7),
    torch.float32: (2e-5, 2e-4),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (3e-3, 3e-3),
}


def assert_close(actual, expected, dtype, what, outlier_fraction=0.0):
    """``actual`` vs the fp64 ``expected`` with dtype tolerances, scaled by the tensor's magnitude.

    In bf16/fp16 a near-tie in a max may be broken differently than in fp64, which reroutes one
    gradient entry; ``outlier_fraction`` allows that many elements to miss.
    """
    atol, rtol = TOL[dtype]
    actual = actual.detach().to(torch.float64)
    expected = expected.detach().to(torch.float64)
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = expected.abs().max().item() if expected.numel() else 0.0
    bad = (actual - expected).abs() > atol * max(1.0, scale) + rtol * expected.abs()
    bad |= torch.isnan(actual) != torch.isnan(expected)
    allowed = int(outlier_fraction * actual.numel())
    if int(bad.sum()) > allowed:
        err = (actual - expected).abs().max().item()
        raise AssertionError(f"{what}: {int(bad.sum())} of {actual.numel()} elements off (allowed {allowed}); "
                             f"max abs err {err:.3g}, scale {scale:.3g}, dtype {dtype}")
