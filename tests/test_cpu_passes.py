"""The C++ CPU pass kernels (``torch.ops.cbam_fused.*`` on CPU tensors) against ``TorchPasses``.

``TorchPasses`` (cbam_fused/passes.py) is the executable contract. Pooled maxima, argmax and counts
must match it exactly (they are comparisons of identical products); sums match to the accumulation
precision; full-size outputs to one rounding of their dtype.

Every ISA build (default, AVX2, AVX-512) is exercised: the choice is made once per process, so
``test_isa_variant`` reruns this file in a subprocess per build with ``CBAM_FUSED_CPU_ISA`` set.
"""
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from cbam_fused.passes import TorchPasses, acc_dtype

from .conftest import require_backend

SPEC = TorchPasses()
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
LAYOUTS = ["nchw", "channels_last"]
SHAPES = {
    "odd": (2, 37, 5, 7),
    "c1": (3, 1, 4, 5),
    "p1": (2, 19, 1, 1),
    "primes": (1, 17, 13, 11),
    "aligned": (2, 32, 4, 8),
    "wide_c": (2, 300, 3, 5),  # more channels than one NHWC channel block
    "threads": (3, 40, 37, 41),  # several NCHW pixel blocks and many NHWC pixel chunks per sample
}
ISA_ENV = "CBAM_FUSED_CPU_ISA"


@pytest.fixture(autouse=True)
def _cpu_kernels():
    require_backend("cpu")


def ops():
    return torch.ops.cbam_fused


def acc_tol(dtype):
    """(atol, rtol) for quantities accumulated in acc_dtype(dtype), relative to the operand scale."""
    return (1e-12, 1e-10) if dtype == torch.float64 else (2e-6, 2e-5)


def out_rtol(dtype):
    """One rounding of the output dtype (the spec and the kernel may round a hair apart)."""
    return {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3}[dtype]


def assert_acc_close(got, want, dtype, what, scale):
    atol, rtol = acc_tol(dtype)
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    torch.testing.assert_close(got, want, atol=atol * max(1.0, scale), rtol=rtol, equal_nan=True, msg=what)


def assert_out_close(got, want, dtype, what, scale):
    assert got.dtype == want.dtype and got.shape == want.shape, what
    strides = [(g, w) for g, w, size in zip(got.stride(), want.stride(), got.shape) if size > 1]
    assert all(g == w for g, w in strides), f"{what}: strides {got.stride()} != {want.stride()} (layout lost)"
    rtol = out_rtol(dtype)
    torch.testing.assert_close(got.double(), want.double(), atol=rtol * max(1.0, scale), rtol=rtol,
                               equal_nan=True, msg=what)


def make_x(shape, dtype, layout, seed=0, plant=True):
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    if plant and c > 2 and h * w > 2:
        x[0, 1] = 0.0  # dead channel: every pixel ties for the max over pixels
        x[-1, :, h // 2, w // 2] = 0.5  # constant pixel: every channel ties for the max over channels
        x[0, 2, 0, 0] = x[0, 2].max()  # an exact duplicate of a channel's max
    x = x.to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def small(n, m, dtype, seed, positive=False):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, m, generator=g, dtype=torch.float64) if positive else torch.randn(
        n, m, generator=g, dtype=torch.float64)
    return t.to(acc_dtype(dtype))


def check_pools(got, want, dtype, what):
    avg, mx, idx, cnt = got
    avg_w, mx_w, idx_w, cnt_w = want
    assert idx.dtype == torch.int32 and cnt.dtype == torch.int32, what
    torch.testing.assert_close(mx, mx_w, rtol=0, atol=0, equal_nan=True, msg=f"{what} max")
    assert torch.equal(idx, idx_w), f"{what} argmax: {(idx != idx_w).sum()} differ"
    assert torch.equal(cnt, cnt_w), f"{what} count: {(cnt != cnt_w).sum()} differ"
    assert_acc_close(avg, avg_w, dtype, f"{what} mean", mx_w.abs().nan_to_num(posinf=0, neginf=0).max().item())


def run_all_passes(x, dtype, with_gates=True, seed=1):
    """Every pass, every optional-operand pattern, against the spec."""
    n, c, h, w = x.shape
    p = h * w
    a = small(n, c, dtype, seed, positive=True) if with_gates else None
    s = small(n, p, dtype, seed + 1, positive=True) if with_gates else None
    scale = x.double().abs().nan_to_num(posinf=0, neginf=0).max().item()

    check_pools(ops().pool_hw(x), SPEC.pool_hw(x), dtype, "pool_hw")
    check_pools(ops().pool_c(x, a), SPEC.pool_c(x, a), dtype, "pool_c")
    check_pools(ops().pool_c(x, None), SPEC.pool_c(x, None), dtype, "pool_c(a=None)")
    for a_, s_ in ((a, s), (a, None), (None, s), (None, None)):
        assert_out_close(ops().apply_gates(x, a_, s_), SPEC.apply_gates(x, a_, s_), dtype, "apply_gates", scale)

    gy = make_x(tuple(x.shape), dtype, "channels_last" if not x.is_contiguous() else "nchw", seed=seed + 2,
                plant=False)
    for want_a, want_s in ((True, True), (True, False), (False, True)):
        for a_, s_ in ((a, s), (None, None)):
            got = ops().gate_grads(gy, x, a_, s_, want_a, want_s)
            want = SPEC.gate_grads(gy, x, a_, s_, want_a, want_s)
            for g_, w_, name in zip(got, want, ("ga", "gs")):
                assert_acc_close(g_, w_, dtype, f"gate_grads {name} want={want_a, want_s}", scale * scale * max(c, p) ** 0.5)

    a1 = a if a is not None else small(n, c, dtype, seed, positive=True)
    _, mx_c, am_c, _ = SPEC.pool_c(x, a1)
    _, mx_hw, am_hw, _ = SPEC.pool_hw(x)
    u_c, v_c = small(n, p, dtype, seed + 3), small(n, p, dtype, seed + 4)
    u_hw, v_hw = small(n, c, dtype, seed + 5), small(n, c, dtype, seed + 6)
    for split in (False, True):
        got = ops().pool_c_grad_a(x, a1, u_c, v_c, am_c, mx_c, split)
        want = SPEC.pool_c_grad_a(x, a1, u_c, v_c, am_c, mx_c, split)
        assert_acc_close(got, want, dtype, f"pool_c_grad_a split={split}", scale * 4 * p)
        _, mx_c0, am_c0, _ = SPEC.pool_c(x, None)
        for groups in ("both", "channel_only", "spatial_only"):
            c_on, hw_on = groups != "channel_only", groups != "spatial_only"
            gate_a = a1 if hw_on or groups == "both" else None
            args = (gy, x if split else None, gate_a, s,
                    u_c if c_on else None, v_c if c_on else None,
                    (am_c if gate_a is not None else am_c0) if c_on else None,
                    (mx_c if gate_a is not None else mx_c0) if c_on else None,
                    u_hw if hw_on else None, v_hw if hw_on else None,
                    am_hw if hw_on else None, mx_hw if hw_on else None, split)
            assert_out_close(ops().input_grad(*args), SPEC.input_grad(*args), dtype,
                             f"input_grad split={split} {groups}", scale * 8)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_passes_match_spec(shape_name, dtype, layout):
    x = make_x(SHAPES[shape_name], dtype, layout)
    run_all_passes(x, dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_nan_and_inf(dtype, layout):
    """NaN wins a max and the first NaN is the argmax; +-inf are ordinary values."""
    x = make_x((2, 21, 6, 5), dtype, "nchw", plant=False)
    x[0, 3, 1, 1] = float("nan")
    x[0, 3, 4, 2] = float("nan")  # the second NaN of channel 3 and pixel (4,2)
    x[0, 7, 2, 2] = float("inf")
    x[0, 8, 2, 2] = float("inf")  # two channels tie at +inf for pixel (2,2)
    x[1, 4] = float("-inf")  # a channel that is -inf everywhere: argmax 0, count P
    x[1, :, 0, 3] = float("-inf")  # a pixel that is -inf in every channel
    x = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
    n, c, h, w = x.shape
    check_pools(ops().pool_hw(x), SPEC.pool_hw(x), dtype, "pool_hw")
    a = small(n, c, dtype, 9, positive=True)
    check_pools(ops().pool_c(x, a), SPEC.pool_c(x, a), dtype, "pool_c")
    check_pools(ops().pool_c(x, None), SPEC.pool_c(x, None), dtype, "pool_c(a=None)")
    y = ops().apply_gates(x, a, None)
    assert_out_close(y, SPEC.apply_gates(x, a, None), dtype, "apply_gates", 4.0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_all_equal_values(layout):
    """A constant tensor: every element ties; first index 0 and count = pool length."""
    x = torch.full((2, 5, 3, 4), 1.25)
    x = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
    avg, mx, idx, cnt = ops().pool_hw(x)
    assert torch.equal(idx, torch.zeros(2, 5, dtype=torch.int32))
    assert torch.equal(cnt, torch.full((2, 5), 12, dtype=torch.int32))
    avg, mx, idx, cnt = ops().pool_c(x, None)
    assert torch.equal(idx, torch.zeros(2, 12, dtype=torch.int32))
    assert torch.equal(cnt, torch.full((2, 12), 5, dtype=torch.int32))
    assert torch.all(avg == 1.25) and torch.all(mx == 1.25)


@pytest.mark.parametrize("shape", [(3, 40, 37, 41), (4, 601, 7, 5)], ids=["long_pixel_rows", "short_pixel_rows"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_results_do_not_depend_on_thread_count(layout, shape):
    """Fixed blocking and fold order: bitwise the same with 1 thread and with several."""
    x = make_x(shape, torch.float32, layout, plant=False)
    n, c, h, w = x.shape
    a, s = small(n, c, torch.float32, 1, True), small(n, h * w, torch.float32, 2, True)
    gy = make_x(tuple(x.shape), torch.float32, layout, seed=5, plant=False)
    _, mx_c, am_c, _ = ops().pool_c(x, a)
    u, v = small(n, h * w, torch.float32, 3), small(n, h * w, torch.float32, 4)

    def everything():
        return (*ops().pool_hw(x), *ops().pool_c(x, a), ops().apply_gates(x, a, s),
                *ops().gate_grads(gy, x, a, s, True, True), ops().pool_c_grad_a(x, a, u, v, am_c, mx_c, False))

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = everything()
        torch.set_num_threads(max(2, threads))
        many = everything()
    finally:
        torch.set_num_threads(threads)
    for i, (p, q) in enumerate(zip(one, many)):
        assert torch.equal(p, q), f"output {i} differs between 1 and {max(2, threads)} threads"


def test_noncontiguous_small_operands_are_accepted():
    x = make_x((2, 6, 3, 4), torch.float32, "nchw")
    a = small(6, 2, torch.float32, 1, True).t()  # [2, 6], not contiguous
    check_pools(ops().pool_c(x, a), SPEC.pool_c(x, a), torch.float32, "pool_c")


@pytest.mark.parametrize("call,message", [
    (lambda x, a: ops().pool_hw(x.to(torch.int32)), "must be float32, float64, bfloat16 or float16"),
    (lambda x, a: ops().pool_hw(x[:, :, :, ::2]), "NCHW-contiguous or channels_last"),
    (lambda x, a: ops().pool_hw(x[0]), "must be 4-D"),
    (lambda x, a: ops().pool_c(x, a.double()), "a must have dtype Float"),
    (lambda x, a: ops().pool_c(x, a[:, :3]), r"a must have shape \[2, 6\]"),
    (lambda x, a: ops().apply_gates(x.double(), a, None), "a must have dtype Double"),
    (lambda x, a: ops().gate_grads(x.contiguous(memory_format=torch.channels_last), x, a, None, True, True),
     "same memory format"),
    (lambda x, a: ops().gate_grads(x.double(), x, a, None, True, True), "gy has dtype Double"),
    (lambda x, a: ops().input_grad(x, None, a, None, None, None, None, None, None, None, None, None, True),
     "split-style ties need x"),
    (lambda x, a: ops().input_grad(x, None, a, None, None, None, None, None, a, a, None, None, False),
     "u_hw needs argmax_hw"),
    (lambda x, a: ops().pool_c_grad_a(x, a, a, a, a, a, False), r"u must have shape \[2, 12\]"),
])
def test_bad_input_raises_clear_error(call, message):
    x = make_x((2, 6, 3, 4), torch.float32, "nchw")
    a = small(2, 6, torch.float32, 1, True)
    with pytest.raises(RuntimeError, match=message):
        call(x, a)


def _opcheck_cases():
    x = make_x((2, 6, 3, 4), torch.float32, "nchw")
    a, s = small(2, 6, torch.float32, 1, True), small(2, 12, torch.float32, 2, True)
    u, v = small(2, 12, torch.float32, 3), small(2, 12, torch.float32, 4)
    uh, vh = small(2, 6, torch.float32, 5), small(2, 6, torch.float32, 6)
    _, mx_c, am_c, _ = SPEC.pool_c(x, a)
    _, mx_hw, am_hw, _ = SPEC.pool_hw(x)
    gy = make_x((2, 6, 3, 4), torch.float32, "nchw", seed=3)
    cl = x.contiguous(memory_format=torch.channels_last)
    return {
        "pool_hw": (x,),
        "pool_c": (x, a),
        "apply_gates": (cl, a, s),
        "gate_grads": (gy, x, a, s, True, False),
        "pool_c_grad_a": (x, a, u, v, am_c, mx_c, True),
        "input_grad": (gy, x, a, s, u, v, am_c, mx_c, uh, vh, am_hw, mx_hw, True),
    }


@pytest.mark.parametrize("name", ["pool_hw", "pool_c", "apply_gates", "gate_grads", "pool_c_grad_a", "input_grad"])
def test_opcheck(name):
    torch.library.opcheck(getattr(ops(), name).default, _opcheck_cases()[name])


def test_info_reports_threads():
    info = ops().cpu_info()
    assert re.fullmatch(r"isa=(default|avx2|avx512) threads=\d+", info), info
    assert f"threads={torch.get_num_threads()}" in info
    if ISA_ENV in os.environ:
        assert f"isa={os.environ[ISA_ENV]}" in info


def _cpu_has(flags):
    try:
        with open("/proc/cpuinfo") as f:
            have = set(next(line for line in f if line.startswith("flags")).split(":")[1].split())
    except (OSError, StopIteration):
        return False
    return all(flag in have for flag in flags)


ISA_FLAGS = {"default": [], "avx2": ["avx2", "fma", "f16c"],
             "avx512": ["avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"]}


@pytest.mark.skipif(ISA_ENV in os.environ, reason="already running one ISA variant")
@pytest.mark.parametrize("isa", list(ISA_FLAGS))
def test_isa_variant(isa):
    """This file's spec comparisons, rerun with the kernels of one ISA forced (a fresh process each,
    because the choice is made once per process)."""
    if not _cpu_has(ISA_FLAGS[isa]):
        pytest.skip(f"this CPU cannot run the {isa} kernels")
    env = dict(os.environ, **{ISA_ENV: isa})
    # the large "threads" shape runs once, in-process; thread_count covers multi-block inputs here
    keep = "(passes_match_spec and not threads) or nan_and_inf or all_equal or thread_count or info_reports"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__, "-k", keep],
                         env=env, cwd=root, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def test_unknown_isa_is_rejected():
    env = dict(os.environ, **{ISA_ENV: "sse9"})
    code = "import torch, cbam_fused; torch.ops.cbam_fused.pool_hw(torch.ones(1, 1, 1, 1))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "CBAM_FUSED_CPU_ISA must be one of" in out.stderr, out.stderr[-2000:]


@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump (binutils)")
def test_isa_code_stays_in_its_namespace():
    """No AVX instruction outside the AVX2/AVX-512 kernel builds: an inline function shared with the
    baseline code, or a static initialiser, compiled for AVX-512 would crash older CPUs."""
    from cbam_fused import _C

    dis = subprocess.run(["objdump", "-d", "--no-show-raw-insn", _C.__file__], capture_output=True, text=True,
                         timeout=300, check=True).stdout
    allowed = re.compile(r"(4AVX2|6AVX512|fill_table_avx2|fill_table_avx512)")
    leaks, function = set(), None
    for line in dis.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if header:
            function = header.group(1)
            continue
        fields = line.split("\t")
        if function is None or len(fields) < 2 or not fields[1].strip():
            continue
        insn = fields[1].split("#")[0]  # not objdump's trailing symbol comment ("symmetric" holds "ymm")
        mnemonic = insn.split()[0]
        if (mnemonic.startswith("v") or re.search(r"%[yz]mm", insn)) and not allowed.search(function):
            leaks.add(function)
    assert not leaks, f"AVX code outside the ISA builds: {sorted(leaks)[:10]}"
    assert any("6AVX512" in f for f in re.findall(r"<(.+)>:", dis)), "no AVX-512 build found in the library"
