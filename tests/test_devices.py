"""Devices with no fused backend: the default backend is the stock-op path there,
and a ``NoFusedBackendWarning`` says so once per process.

No such device is at hand, so the backend choice is checked on tensors whose device type has no
fused kernels ("meta"), and ROCm (whose devices torch calls "cuda") through ``torch.version.hip``.
"""
import json
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch

import cbam_fused as cf
from cbam_fused import backends, ops

ROOT = Path(__file__).resolve().parents[1]

FRESH_PROCESS = """
import json, warnings, torch
import cbam_fused as cf
from cbam_fused import ops
meta = torch.empty(2, 8, 4, 4, device="meta")
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")  # Python's own once-per-place filter must not hide a second one
    chosen = [ops.resolve_backend(None, meta) for _ in range(3)]
    chosen.append(ops.resolve_backend("auto", torch.empty(1, 3, 2, 2, device="meta")))
    chosen.append(ops.resolve_backend(None, torch.empty(1, 3, 2, 2)))  # a CPU tensor: no warning
print(json.dumps({"chosen": chosen, "warnings": [[w.category.__name__, str(w.message)] for w in seen],
                  "subclass": issubclass(cf.NoFusedBackendWarning, UserWarning)}))
"""


def test_warns_once_per_process_and_takes_the_stock_path():
    proc = subprocess.run([sys.executable, "-c", FRESH_PROCESS], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    cpu = "cpu" if "cpu" in cf.available_backends() else "torch"
    assert got["chosen"] == ["torch"] * 4 + [cpu]
    assert got["subclass"]
    assert len(got["warnings"]) == 1, got["warnings"]
    category, message = got["warnings"][0]
    assert category == "NoFusedBackendWarning"
    assert "'meta'" in message and "backend='torch'" in message and "once per process" in message


def _fresh_flag(monkeypatch):
    monkeypatch.setattr(backends, "_NO_FUSED_WARNED", False)


def test_rocm_takes_the_stock_path(monkeypatch):
    _fresh_flag(monkeypatch)
    monkeypatch.setattr(torch.version, "hip", "6.2.0")
    x = types.SimpleNamespace(device=torch.device("cuda"))  # resolve_backend reads only the device
    with pytest.warns(cf.NoFusedBackendWarning, match="ROCm"):
        assert ops.resolve_backend(None, x) == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ops.resolve_backend(None, x) == "torch"  # once per process: silent now


def test_supported_devices_and_named_backends_do_not_warn(monkeypatch):
    _fresh_flag(monkeypatch)
    monkeypatch.setattr(torch.version, "hip", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops.resolve_backend(None, torch.empty(1, 1, 1, 1))
        ops.resolve_backend(None, types.SimpleNamespace(device=torch.device("cuda")))
        assert ops.resolve_backend("torch", torch.empty(1, 1, 1, 1, device="meta")) == "torch"
    assert backends._NO_FUSED_WARNED is False
