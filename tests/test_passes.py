"""The six full-size passes of every pass set (C++ CPU kernels, CUDA kernels on the cudacpu emulator
and on a GPU, Triton) against the spec ``TorchPasses``, through tests/pass_harness.py.

``test_pass_matches_spec`` runs pass set x shape x data x dtype x layout x pass. The shapes of a pass
set are the awkward ones for any blocking plus those that make its own reductions span several
blocks; the slow pass sets (the emulator, the Triton interpreter) keep theirs few and small. The
emulator also runs with 8-row reduction tiles, so that small shapes span several tiles. Each pass
runs with the patterns of optional operands that the orchestrations use, and on most cases with every
pattern the contract allows; not on the emulator's one large shape (the other patterns run on its
small shapes in both tilings) nor under the Triton interpreter, at a fraction of a second per launch.
The other tests check contract rules with expectations written out, not taken from the spec.

Backend-specific checks stay in test_cpu_passes.py (ISA builds, thread counts, op checks),
test_cuda_emulator.py (ASan driver) and test_triton.py (compilation, tracing, strided inputs).
"""
import pytest
import torch

from .pass_harness import (DTYPES, FORWARD, LAYOUTS, PASSES, SHAPES, SPEC, Inputs, check_pass, check_pools,
                           dtype_id, interpreted, make_x, mean_abs, pass_set, small)

MARKS = {"cpu": (), "cudaemu": (pytest.mark.emulator,), "triton": (pytest.mark.triton,), "cuda": (pytest.mark.gpu,)}
BACKENDS = [pytest.param(name, id=name, marks=marks) for name, marks in MARKS.items()]

AWKWARD = ["odd", "primes", "c1", "c3", "hw1", "h1", "7x7"]


def _case(shape, kind="ties", passes=PASSES, rows=0, misaligned=False, every_pattern=True):
    return dict(shape=shape, kind=kind, passes=passes, rows=rows, misaligned=misaligned, every_pattern=every_pattern)


# every pass set: ties everywhere (small integers), and NaN / +-inf across tile and block boundaries
_COMMON = [_case("odd", "ints"), _case("tiles", "nan_inf")]
CASES = {
    "cpu": [_case(s) for s in AWKWARD + ["aligned", "wide_c", "threads"]]
    + [_case("cpu_tiles", passes=["gate_grads", "pool_c_grad_a"]), _case("cpu_pairs", passes=["pool_hw", "pool_c"])] + _COMMON + [_case("odd", misaligned=True)],
    "cudaemu": [_case(s, rows=rows) for s in AWKWARD for rows in (0, 8)] + [_case("multi_block", every_pattern=False)]
    + [_case(c["shape"], c["kind"], rows=8) for c in _COMMON] + [_case("odd", rows=8, misaligned=True)]
    + [_case("14x14")],
    "cuda": [_case(s) for s in AWKWARD + ["multi_block", "14x14"]] + _COMMON + [_case("odd", misaligned=True)],
    # the interpreter: ties everywhere on every shape, its own tiling shapes with random data too (NaN
    # and inf: test_nan_and_inf)
    "triton": [_case(s, "ints", FORWARD) for s in ("primes", "h1")]
    + [_case(s, "ints") for s in ("tiles", "long", "hw1", "c1")] + [_case("tiles", "ties", FORWARD)]
    + ([_case("odd", misaligned=True)] if torch.cuda.is_available() else []),  # alignment means nothing there
}


def _params():
    for backend, cases in CASES.items():
        for c in cases:
            variant = backend + (f"-rows{c['rows']}" if c["rows"] else "")
            data = c["kind"] + ("-misaligned" if c["misaligned"] else "")
            for dtype in DTYPES:
                for layout in LAYOUTS:
                    for name in c["passes"]:
                        yield pytest.param(backend, c["rows"], c["shape"], c["kind"], c["misaligned"],
                                           c["every_pattern"], dtype, layout, name, marks=MARKS[backend],
                                           id=f"{variant}-{c['shape']}-{data}-{dtype_id(dtype)}-{layout}-{name}")


@pytest.mark.parametrize("backend,rows,shape,kind,misaligned,every_pattern,dtype,layout,name", list(_params()))
def test_pass_matches_spec(backend, rows, shape, kind, misaligned, every_pattern, dtype, layout, name):
    passes = pass_set(backend, rows=rows)
    check_pass(passes, name, Inputs(SHAPES[shape], dtype, layout, kind, misaligned),
               every_pattern and not interpreted(backend))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_and_inf(backend, dtype, layout):
    """The pools with NaN and +-inf against the spec, and the rules written out: NaN wins a max, the
    first NaN is the argmax and the count is 1; +-inf are ordinary values."""
    passes = pass_set(backend)
    x = make_x(SHAPES["tiles"], dtype, layout, kind="nan_inf")  # positions: pass_harness._plant_nan_inf
    n, c, h, w = x.shape
    hw, pc = passes.pool_hw(x), passes.pool_c(x, None)
    check_pools(hw, SPEC.pool_hw(x), mean_abs(x), "pool_hw")
    check_pools(pc, SPEC.pool_c(x, None), mean_abs(x, over_channels=True), "pool_c")
    _, mx, idx, count = hw
    assert torch.isnan(mx[0, 3]) and (idx[0, 3], count[0, 3]) == (1 * w + 1, 1)  # first NaN of channel 3
    assert (mx[1, 4], idx[1, 4], count[1, 4]) == (float("-inf"), 0, h * w)  # a channel of -inf
    _, mx, idx, count = pc
    px = lambda i, j: i * w + j  # noqa: E731
    assert torch.isnan(mx[1, px(2, 2)]) and (idx[1, px(2, 2)], count[1, px(2, 2)]) == (2, 1)
    assert (mx[0, px(2, 2)], idx[0, px(2, 2)], count[0, px(2, 2)]) == (float("inf"), 7, 2)
    assert (mx[1, px(0, 3)], idx[1, px(0, 3)], count[1, px(0, 3)]) == (float("-inf"), 0, c)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_take_the_first_index_and_count_all(backend):
    """Equal maxima in different pixel tiles and channel blocks (of the Triton interpreter's 16-wide
    blocks and of the 8-row emulator tiles)."""
    passes = pass_set(backend, rows=8)
    x = torch.zeros(1, 40, 7, 9)
    x[0, 5].view(-1)[[10, 40, 62]] = 2.0  # three maxima of channel 5
    x[0, [9, 25, 39], 3, 3] = 4.0  # three maxima of pixel 30
    _, mx, idx, count = passes.pool_hw(x)
    assert (mx[0, 5], idx[0, 5], count[0, 5]) == (2.0, 10, 3)
    assert (mx[0, 6], idx[0, 6], count[0, 6]) == (0.0, 0, 63)  # an all-zero channel
    _, mx, idx, count = passes.pool_c(x, None)
    assert (mx[0, 30], idx[0, 30], count[0, 30]) == (4.0, 9, 3)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_constant_tensor(backend, layout):
    """Every element ties: first index 0, count = pool length, mean and max the constant."""
    passes = pass_set(backend)
    x = torch.full((2, 5, 3, 4), 1.25)
    x = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
    avg, mx, idx, cnt = passes.pool_hw(x)
    assert torch.equal(idx, torch.zeros(2, 5, dtype=torch.int32))
    assert torch.equal(cnt, torch.full((2, 5), 12, dtype=torch.int32))
    assert torch.all(avg == 1.25) and torch.all(mx == 1.25)
    avg, mx, idx, cnt = passes.pool_c(x, None)
    assert torch.equal(idx, torch.zeros(2, 12, dtype=torch.int32))
    assert torch.equal(cnt, torch.full((2, 12), 5, dtype=torch.int32))
    assert torch.all(avg == 1.25) and torch.all(mx == 1.25)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp16_sums_do_not_saturate(backend):
    """576 pixels of 60000 (several tiles or blocks on every backend): an fp16 accumulator would
    overflow at 65504 (sums are in acc, docs/design.md §4.1)."""
    passes = pass_set(backend)
    x = torch.full((1, 2, 24, 24), 60000.0, dtype=torch.float16)
    mean, mx, arg, cnt = passes.pool_hw(x)
    assert torch.equal(mean, torch.full((1, 2), 60000.0))
    assert torch.equal(cnt, torch.full((1, 2), 576, dtype=torch.int32))
    ga, gs = passes.gate_grads(x, torch.ones_like(x), None, None, True, True)
    assert torch.equal(ga, torch.full((1, 2), 60000.0 * 576))
    assert torch.equal(gs, torch.full((1, 576), 120000.0))


def _bits(t):
    """The bit patterns of a float tensor: equal bits, not equal values (-0.0 differs from 0.0)."""
    return t.view({torch.float64: torch.int64, torch.float32: torch.int32}[t.dtype])


# the pass set's reduction paths: short rows, middling ones, rows past the CPU's one-pass length
NO_TIES_SHAPES = {"cpu": ["odd", "7x7", "wide_c", "threads", "cpu_pairs"], "cudaemu": ["odd", "multi_block"],
                  "cuda": ["odd", "multi_block"], "triton": ["tiles"]}


@pytest.mark.parametrize("kind", ["ties", "nan_inf", "signed_zeros"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=dtype_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_pools_without_ties(backend, dtype, layout, kind):
    """ties=False (inference): argmax and count are None, and the mean and max are bitwise those of
    the pool that tracks them, signed zeros and NaN included."""
    passes = pass_set(backend)
    # NaN and inf are planted across the blocks of shapes with at least 2 x 40 x 6 x 7
    shapes = NO_TIES_SHAPES[backend] if kind != "nan_inf" else ["tiles"] + (["threads"] if backend == "cpu" else [])
    for shape in shapes:
        base = "ties" if kind == "signed_zeros" else kind
        inp = Inputs(SHAPES[shape], dtype, layout, base)
        x = inp.x
        if kind == "signed_zeros":  # maxima that are zeros of both signs, -0.0 first
            x = x.clamp(max=0.0)
            x[..., 0, 0] = -0.0
        for name, run in (("pool_hw", lambda t: passes.pool_hw(x, ties=t)),
                          ("pool_c", lambda t: passes.pool_c(x, inp.a, ties=t)),
                          ("pool_c a=None", lambda t: passes.pool_c(x, None, ties=t))):
            mean, mx, arg, cnt = run(False)
            assert arg is None and cnt is None, f"{name}: argmax/count returned without ties"
            want = run(True)
            for what, got, ref in (("mean", mean, want[0]), ("max", mx, want[1])):
                assert torch.equal(_bits(got), _bits(ref)), f"{shape} {name} {what}: not bitwise the tracking pool's"


# a shape whose reductions span several blocks of the pass set
DETERMINISM_SHAPE = {"cpu": (3, 40, 37, 41), "cudaemu": (2, 300, 17, 19), "cuda": (2, 300, 17, 19),
                     "triton": SHAPES["tiles"]}


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic_across_runs(backend):
    """A fixed reduction order and no atomics (§4.5): two runs are bitwise equal (on the emulator,
    under each thread order)."""
    passes = pass_set(backend)
    inp = Inputs(DETERMINISM_SHAPE[backend], torch.float32, "channels_last", "randn")
    pool = SPEC.pool_c(inp.x, inp.a)

    def run():
        return (*passes.pool_hw(inp.x), *passes.pool_c(inp.x, inp.a),
                *passes.gate_grads(inp.gy, inp.x, inp.a, inp.s, True, True),
                passes.pool_c_grad_a(inp.x, inp.a, inp.u_c, inp.v_c, pool[2], pool[1], False))

    for i, (u, v) in enumerate(zip(run(), run())):
        assert torch.equal(u, v), f"output {i} differs between two runs"


@pytest.mark.parametrize("backend", BACKENDS)
def test_noncontiguous_small_operands_are_accepted(backend):
    passes = pass_set(backend)
    x = make_x((2, 6, 3, 4), torch.float32, kind="ties")
    a = small(6, 2, torch.float32, 1, "gate").t()  # [2, 6], not contiguous
    assert not a.is_contiguous()
    check_pools(passes.pool_c(x, a), SPEC.pool_c(x, a), mean_abs(x, a, over_channels=True), "pool_c")


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    """N = 0 never reaches the passes (the op runs an empty batch eagerly); the CPU kernels return
    empty results, the others refuse it rather than launch an empty grid."""
    passes = pass_set(backend)
    inp = Inputs((0, 5, 3, 4), torch.float32, kind="randn")
    if backend != "cpu":
        with pytest.raises((ValueError, RuntimeError)):
            passes.pool_hw(inp.x)
        return
    for name in PASSES:
        check_pass(passes, name, inp)
