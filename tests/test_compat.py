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
