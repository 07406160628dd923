"""cbam_fused._compat: the shortcuts it takes around torch still behave as torch's own helpers do."""
import subprocess
import sys

import torch

from cbam_fused import _compat

from .test_bench_smoke import ROOT


def test_constant_result_mark_matches_dynamos():
    """_compat marks a function as dynamo's decorator does, without importing torch._dynamo first."""
    import torch._dynamo

    def ours():
        return 1

    def torchs():
        return 1

    _compat.assume_constant_result(ours)
    torch._dynamo.assume_constant_result(torchs)
    marks = {k: v for k, v in vars(torchs).items()}
    assert marks, "torch's decorator no longer marks the function with an attribute"
    assert vars(ours) == marks


def test_import_does_not_pull_in_dynamo_or_triton():
    """``import cbam_fused`` stays light: torch._dynamo (about 1 s) and triton load only when used."""
    code = ("import sys, torch\n"
            "before = set(sys.modules)\n"
            "import cbam_fused\n"
            "heavy = sorted(m for m in set(sys.modules) - before if m.split('.')[0] == 'triton'"
            " or m.startswith('torch._dynamo') or m.startswith('torch._inductor'))\n"
            "print(heavy)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]", f"import cbam_fused imported {proc.stdout.strip()}"


def test_triton_op_takes_the_given_schema():
    """A triton_op over ``fn(*args)`` gets the schema asked for (torch 2.11 would infer it and fail)."""
    def fn(*args):
        x, scale = args
        return x * scale, x + 1

    _compat.triton_op("cbam_fused_compat_test::scaled", fn, "(Tensor x, float scale) -> (Tensor a, Tensor b)")
    op = torch.ops.cbam_fused_compat_test.scaled.default
    assert [(a.name, str(a.type)) for a in op._schema.arguments] == [("x", "Tensor"), ("scale", "float")]
    assert [str(r.type) for r in op._schema.returns] == ["Tensor", "Tensor"]
    x = torch.arange(3.0)
    a, b = op(x, 2.0)
    assert torch.equal(a, torch.tensor([0.0, 2.0, 4.0])) and torch.equal(b, torch.tensor([1.0, 2.0, 3.0]))
