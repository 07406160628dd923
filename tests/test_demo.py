"""Smoke test of the training demo: convert keeps the function, a few steps track the reference run."""
import json

import torch

from cbam_fused import reference
from cbam_fused import convert
from cbam_fused.demo import CBAMResNet, main


def test_convert_keeps_the_function():
    torch.manual_seed(0)
    model = CBAMResNet(width=8, blocks=1).eval()
    x = torch.randn(4, 3, 12, 12)
    expected = model(x)
    report = convert(model)
    assert len(report.replaced) == 3 and not report.skipped
    assert not any(isinstance(m, reference.CBAM) for m in model.modules())
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-4)


def test_demo_runs_and_tracks_the_reference(tmp_path):
    assert main(["--steps", "5", "--width", "8", "--image-size", "8", "--batch-size", "16", "--samples", "64",
                 "--out", str(tmp_path)]) == 0
    with open(tmp_path / "demo.json") as f:
        result = json.load(f)
    ref, fused = result["runs"]["reference"]["losses"], result["runs"]["fused"]["losses"]
    assert len(ref) == len(fused) == 5
    # same init, same batches: the first loss agrees to fp32 rounding, a few steps later still closely
    assert abs(ref[0] - fused[0]) < 1e-5
    assert max(abs(a - b) for a, b in zip(ref, fused)) < 1e-3
    with open(tmp_path / "demo_loss.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
