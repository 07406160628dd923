"""Checks of the Triton passes that only Triton has, and the torch.compile path of the Triton backend.
The passes' comparison with the spec is the ``triton`` pass set of tests/test_passes.py.

Without a GPU the passes run under TRITON_INTERPRET=1 on CPU tensors (tests/conftest.py sets it),
where one small config is used (BLOCK_C = BLOCK_P = 16), so the harness's Triton shapes spread each
reduction over several programs. Two checks run in subprocesses with the interpreter off: every kernel
variant compiles to a cubin for sm_80, and torch.compile(fullgraph=True) of a CBAM module traces into
the Triton kernels (forward and backward graphs) without launching anything.
"""
import contextlib
import functools
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
    from cbam_fused.triton import common
    from cbam_fused.triton.common import FOLD_BLOCK, channel_split, num_pixel_chunks, num_pixel_tiles

    if not torch.cuda.is_available():
        assert common.INTERPRET and common.TILING == common.INTERPRET_TILING
        assert [c.kwargs for c in common.autotune_configs()] == [{"BLOCK_C": 16}]
    n, c, h, w = SHAPES["tiles"]
    assert num_pixel_tiles(h * w) >= 3 and num_pixel_chunks(h * w) >= 2 and h * w > common.BLOCK_P
    n, c, h, w = SHAPES["long"]
    assert num_pixel_chunks(h * w) > 2 * FOLD_BLOCK  # the fold kernel loops over several blocks of partials
    if common.INTERPRET:  # the reductions over channels split over programs, the last chunk partly masked
        for name in ("tiles", "primes"):
            n, c, h, w = SHAPES[name]
            chunk, splits = channel_split(n, c, h * w)
            assert splits >= 2 and chunk % common.STEP_C == 0 and c < chunk * splits, (name, chunk, splits)


# the ResNet stage shapes at batch 8
STAGES = [(8, 256, 56, 56), (8, 512, 28, 28), (8, 1024, 14, 14), (8, 2048, 7, 7)]


@pytest.mark.parametrize("shape", STAGES, ids=lambda s: "x".join(map(str, s)))
def test_reductions_over_channels_fill_132_sms_on_a_gpu(shape):
    """With the GPU tiling, pool_c and gate_grads launch at least two programs per SM of a 132-SM GPU
    at batch 8, each program reducing at least two steps of channels, every channel in one chunk."""
    from cbam_fused.triton.common import GPU_TILING as T, channel_split, num_pixel_tiles

    n, c, h, w = shape
    chunk, splits = channel_split(n, c, h * w, T)
    assert num_pixel_tiles(h * w, T) * splits * n >= 2 * 132
    assert chunk % T.step_c == 0 and chunk >= T.min_steps * T.step_c
    assert chunk * (splits - 1) < c <= chunk * splits  # no empty chunk


def test_reduction_over_channels_not_split_when_the_grid_is_full():
    from cbam_fused.triton.common import GPU_TILING as T, channel_split

    assert channel_split(128, 256, 56 * 56, T) == (256, 1)
    assert channel_split(1, 8, 49, T) == (16, 1)  # fewer channels than two steps: one chunk


@functools.cache
def _tiles_of_each_chunk():
    """A kernel that writes chunk_tiles of each chunk (its globals must hold what it calls)."""
    global tl, chunk_tiles
    import triton
    import triton.language as tl
    from cbam_fused.triton.channel import chunk_tiles

    @triton.jit
    def kernel(out_ptr, P, BLOCK_P: tl.constexpr, TILES_PER_PROGRAM: tl.constexpr):
        chunk = tl.program_id(0)
        tl.store(out_ptr + chunk, chunk_tiles(chunk, P, BLOCK_P, TILES_PER_PROGRAM))

    return kernel


@pytest.mark.parametrize("pixels,want", [(49, [1]), (64, [1]), (65, [2]), (3136, [8] * 6 + [1]), (1000, [8, 8])])
def test_pixel_chunks_walk_only_tiles_that_hold_pixels(pixels, want):
    """A chunk of the reductions over pixels loops over its tiles up to the last pixel (at 7x7 one
    tile of 64, not 8), at the GPU tiling, run on the interpreter (or the GPU)."""
    require_backend("triton")
    from cbam_fused.triton.common import GPU_TILING as T, num_pixel_chunks

    chunks = num_pixel_chunks(pixels, T)
    out = torch.full((chunks,), -1, dtype=torch.int32, device=DEVICE)
    _tiles_of_each_chunk()[(chunks,)](out, pixels, BLOCK_P=T.block_p, TILES_PER_PROGRAM=T.tiles_per_program)
    assert out.tolist() == want
    assert sum(want) == -(-pixels // T.block_p)  # every tile with a pixel, once


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
    assert graphs["forward"] == ["_pool_hw_tiles", "_fold_pool_partials", "_pool_c_kernel", "_fold_pool_partials",
                                 "_apply_gates_kernel"]
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


@contextlib.contextmanager
def _only_config(kernel, config):
    """The autotuned ``kernel`` with ``config`` as its only choice (one config: no benchmarking)."""
    saved = kernel.configs
    kernel.configs = [config]
    try:
        yield
    finally:
        kernel.configs = saved


def _bits(t):
    return t.shape, t.contiguous().view(-1).view(torch.uint8)


def _run_pass(passes, name, inp, split):
    x, a, s, gy = inp.x, inp.a, inp.s, inp.gy
    if name in ("pool_hw", "pool_c"):
        return passes.pool_hw(x) if name == "pool_hw" else passes.pool_c(x, a)
    if name == "apply_gates":
        return (passes.apply_gates(x, a, s),)
    if name == "gate_grads":
        return passes.gate_grads(gy, x, a, s, True, True)
    ties_c = tie(SPEC.pool_c(x, a), split)
    if name == "pool_c_grad_a":
        return (passes.pool_c_grad_a(x, a, inp.u_c, inp.v_c, *ties_c, split),)
    ties_hw = tie(SPEC.pool_hw(x), split)
    return (passes.input_grad(gy, x, a, s, inp.u_c, inp.v_c, *ties_c, inp.u_hw, inp.v_hw, *ties_hw, split),)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_results_do_not_depend_on_the_autotuned_config(layout):
    """Every pass gives the same bits under each config the autotuner may choose on a GPU (BLOCK_C x
    warps). The interpreter ignores the warp count, so without a GPU this checks each BLOCK_C; on a
    GPU, every config. Random data, so that a change of summation order shows in the last bits."""
    passes = pass_set("triton")
    from cbam_fused.triton import channel, common, gates, spatial

    inp = Inputs(SHAPES["tiles"], torch.float32, layout, "randn")
    split = layout == "nchw"  # both tie styles, one per layout
    tuned = {**channel.AUTOTUNED, **spatial.AUTOTUNED, **gates.AUTOTUNED}
    assert len(tuned) == 6
    for name, kernel in tuned.items():
        configs = common.gpu_configs("BLOCK_C" in kernel.fn.arg_names)
        if common.INTERPRET:  # one config per BLOCK_C: the interpreter runs every warp count alike
            configs = list({str(c.kwargs): c for c in configs}.values())
        first = None
        for config in configs:
            with _only_config(kernel, config):
                got = [_bits(t) for t in _run_pass(passes, name, inp, split)]
            first = first or got
            for i, (u, v) in enumerate(zip(got, first)):
                assert u[0] == v[0] and torch.equal(u[1], v[1]), f"{name} output {i} differs under {config}"


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape,kind", [("tiles", "nan_inf"), ("primes", "ints")])
def test_pools_without_ties(tp, shape, kind, dtype, layout):
    """ties=False: argmax and count come back as None (neither tracked nor written), and mean
    and max are bitwise those of the tracking pools, which match the spec (NaN, +-inf and ties
    across tiles, channel chunks and partials)."""
    x = make_x(SHAPES[shape], dtype, layout, kind=kind)
    a = Inputs(SHAPES[shape], dtype, layout, kind).a
    xd, ad = x.to(DEVICE), a.to(DEVICE)
    for name, tracked, untracked, want, magnitude in (
            ("pool_hw", tp.pool_hw(xd), tp.pool_hw(xd, False), SPEC.pool_hw(x), mean_abs(x)),
            ("pool_c", tp.pool_c(xd, ad), tp.pool_c(xd, ad, ties=False), SPEC.pool_c(x, a),
             mean_abs(x, a, over_channels=True))):
        check_pools([t.cpu() for t in tracked], want, magnitude, name)
        assert untracked[2] is None and untracked[3] is None, name
        for i in (0, 1):
            assert torch.equal(_bits(untracked[i])[1], _bits(tracked[i])[1]), f"{name} output {i}"


class _Entered(Exception):
    pass


@pytest.mark.parametrize("name,arity", [("pool_hw", 1), ("pool_c", 2), ("apply_gates", 3), ("gate_grads", 6),
                                        ("pool_c_grad_a", 7), ("input_grad", 13)])
def test_every_pass_launches_under_its_tensors_device(tp, monkeypatch, name, arity):
    """Triton launches on the current device: each pass makes its first tensor's GPU current before
    anything else (a fake tensor on cuda:1 stands in for a GPU here)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    entered = []

    class Recorder:
        def __init__(self, device):
            self.device = torch.device(device)

        def __enter__(self):
            entered.append(self.device)
            raise _Entered

        def __exit__(self, *exc):
            return False

    with FakeTensorMode():
        x = torch.empty(2, 4, 3, 3, device="cuda:1")
    monkeypatch.setattr(torch.cuda, "device", Recorder)
    with pytest.raises(_Entered):
        getattr(tp, name)(x, *([None] * (arity - 1)))
    assert entered == [torch.device("cuda:1")]


@pytest.mark.gpu
def test_tensor_on_a_second_gpu_is_pooled_on_its_device(tp):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    x = make_x(SHAPES["tiles"], torch.float32, "nchw", kind="ints")
    torch.cuda.set_device(0)
    got = tp.pool_hw(x.to("cuda:1"))
    assert torch.cuda.current_device() == 0 and all(t.device == torch.device("cuda:1") for t in got)
    check_pools([t.cpu() for t in got], SPEC.pool_hw(x), mean_abs(x), "pool_hw on cuda:1")
