"""Checks of the Triton passes that only Triton has, and the torch.compile path of the Triton backend.
The passes' comparison with the spec is the ``triton`` pass set of tests/test_passes.py.

Without a GPU the passes run under TRITON_INTERPRET=1 on CPU tensors (tests/conftest.py sets it),
where one small config is used (BLOCK_C = BLOCK_P = 16), so the harness's Triton shapes spread each
reduction over several programs. Two checks run in subprocesses with the interpreter off: every kernel
variant compiles to a cubin for sm_80, and torch.compile(fullgraph=True) of a CBAM module traces into
the Triton kernels (forward and backward graphs) without launching anything.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cbam_fused as cf
from cbam_fused import ops
from cbam_fused import reference as R

from .conftest import require_backend
from .pass_harness import (SHAPES, SPEC, Inputs, assert_input_grad_close, assert_sums_close, check_pools, make_x,
                           mean_abs, pass_set, tie)

pytestmark = pytest.mark.triton

ROOT = Path(__file__).resolve().parents[1]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def tp():
    require_backend("triton")
    from cbam_fused.triton import TritonPasses

    return TritonPasses()


def test_small_test_shapes_use_several_programs_per_reduction():
    if not torch.cuda.is_available():
        from cbam_fused.triton import common

        assert common.INTERPRET and common.BLOCK_P == 16 and common.TILES_PER_PROGRAM == 2
        assert [c.kwargs["BLOCK_C"] for c in common.block_c_configs()] == [16]
    from cbam_fused.triton.common import BLOCK_P, FOLD_BLOCK, num_pixel_chunks, num_pixel_tiles

    n, c, h, w = SHAPES["tiles"]
    assert num_pixel_tiles(h * w) >= 3 and num_pixel_chunks(h * w) >= 2 and h * w > BLOCK_P
    n, c, h, w = SHAPES["long"]
    assert num_pixel_chunks(h * w) > 2 * FOLD_BLOCK  # the fold kernel loops over several blocks of partials


def test_mixed_layouts():
    """gy and x may come in different layouts; each is read through its own strides."""
    passes = pass_set("triton")
    inp = Inputs(SHAPES["tiles"], torch.float32, "channels_last", "ints")
    x, a, s = inp.x, inp.a, inp.s
    gy = make_x(SHAPES["tiles"], torch.float32, "nchw", seed=2)
    got, want = passes.gate_grads(gy, x, a, s, True, True), SPEC.gate_grads(gy, x, a, s, True, True)
    magnitude = SPEC.gate_grads(gy.abs(), x.abs(), a, s, True, True)
    for g_, w_, m_, out in zip(got, want, magnitude, ("ga", "gs")):
        assert_sums_close(g_, w_, m_, f"gate_grads {out} mixed layouts")
    args = (gy, x, a, s, inp.u_c, inp.v_c, *tie(SPEC.pool_c(x, a), True),
            inp.u_hw, inp.v_hw, *tie(SPEC.pool_hw(x), True), True)
    assert_input_grad_close(passes.input_grad(*args), SPEC.input_grad(*args), args, "input_grad mixed layouts")


def test_strided_view_is_read_correctly():
    passes = pass_set("triton")
    x = make_x((2, 20, 9, 20), torch.float32, kind="ties")[:, :, :, ::2]  # pixels do not flatten
    check_pools(passes.pool_hw(x), SPEC.pool_hw(x), mean_abs(x), "pool_hw strided")
    check_pools(passes.pool_c(x, None), SPEC.pool_c(x, None), mean_abs(x, over_channels=True), "pool_c strided")


def test_bad_inputs_raise_clear_errors(tp):
    x = make_x((2, 4, 3, 3), torch.float32).to(DEVICE)
    with pytest.raises(TypeError, match="float16, bfloat16, float32 or float64"):
        tp.pool_hw(x.to(torch.int32))
    with pytest.raises(ValueError, match="4-D"):
        tp.pool_hw(x[0])
    with pytest.raises(ValueError, match="empty"):
        tp.pool_hw(x[:0])
    with pytest.raises(ValueError, match="batch size 65536"):
        tp.pool_hw(x[:1, :1, :1, :1].expand(65536, 1, 1, 1))
    with pytest.raises(ValueError, match="a must be a torch.float32 tensor of 8 elements"):
        tp.pool_c(x, torch.ones(2, 5, device=DEVICE))
    with pytest.raises(ValueError, match="a must be a torch.float32"):
        tp.pool_c(x, torch.ones(2, 4, dtype=torch.float64, device=DEVICE))
    with pytest.raises(ValueError, match="needs x"):
        tp.input_grad(x, None, None, None, None, None, None, None, torch.zeros(2, 4), torch.zeros(2, 4),
                      None, torch.zeros(2, 4), True)


def test_auto_backend_never_picks_triton_for_cpu_tensors():
    x = torch.randn(1, 4, 3, 3)
    assert ops.resolve_backend(None, x) in ("cpu", "torch")
    assert ops.resolve_backend("auto", x) in ("cpu", "torch")


def _run_script(name):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, str(ROOT / "tests" / name)], env=env, capture_output=True, text=True,
                          timeout=900)


def test_every_kernel_compiles_for_a_gpu_target():
    """The interpreter runs kernel bodies as Python; the real compiler is stricter (docs/design.md §7)."""
    require_backend("triton")
    proc = _run_script("triton_gpu_compile.py")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "compiled" in proc.stdout.splitlines()[-1]


def test_torch_compile_traces_into_the_triton_kernels():
    """torch.compile(fullgraph=True) of a CBAM module with backend="triton" yields forward and backward
    graphs holding the Triton kernel calls, traced with the interpreter off and nothing launched."""
    require_backend("triton")
    proc = _run_script("triton_trace_check.py")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # the kernel analysis (which arguments a kernel writes) must have worked, not fallen back
    assert "identify_accessed_tensors" not in proc.stderr, proc.stderr[-3000:]
    graphs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert graphs["forward"] == ["_pool_hw_tiles", "_fold_pool_partials", "_pool_c_kernel", "_apply_gates_kernel"]
    assert graphs["backward"] == ["_gate_grads_kernel", "_pool_c_grad_a_tiles", "_input_grad_kernel"]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_torch_compile_fullgraph_on_gpu(dtype):
    require_backend("triton")
    torch._dynamo.reset()
    torch.manual_seed(0)
    ref = R.CBAM(64).cuda()
    fused = cf.CBAM(64, backend="triton").cuda()
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(4, 64, 28, 28, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
    gy = torch.randn_like(x)
    explanation = torch._dynamo.explain(fused.to(dtype))(x)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    compiled = torch.compile(fused.to(dtype), fullgraph=True)
    xc = x.detach().requires_grad_()
    y = compiled(xc)
    (gx,) = torch.autograd.grad(y, xc, gy)
    xr = x.detach().double().requires_grad_()
    ref64 = ref.double()
    yr = ref64(xr)
    (gxr,) = torch.autograd.grad(yr, xr, gy.double())
    from .oracle import assert_close

    assert_close(y, yr, dtype, "compiled y")
    assert_close(gx, gxr, dtype, "compiled gx", outlier_fraction=0.002 if dtype != torch.float32 else 0.0)
