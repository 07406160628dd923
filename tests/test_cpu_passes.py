"""Checks of the C++ CPU pass kernels (``torch.ops.cbam_fused.*`` on CPU tensors) that only the CPU has:
results independent of the thread count, error messages, ``opcheck``, and the ISA builds. Their
comparison with the spec ``TorchPasses`` is the ``cpu`` pass set of tests/test_passes.py.

Every ISA build (default, AVX2, AVX-512) is exercised: the choice is made once per process, so
``test_isa_variant`` reruns the CPU spec comparisons in a subprocess per build with ``CBAM_FUSED_CPU_ISA`` set.
"""
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from .conftest import require_backend
from .pass_harness import SHAPES, SPEC, make_x, small

ISA_ENV = "CBAM_FUSED_CPU_ISA"


@pytest.fixture(autouse=True)
def _cpu_kernels():
    require_backend("cpu")


def ops():
    return torch.ops.cbam_fused


@pytest.mark.parametrize("shape", [SHAPES["threads"], (4, 601, 7, 5), SHAPES["cpu_tiles"]],
                         ids=["long_pixel_rows", "short_pixel_rows", "pixel_blocks_and_channel_groups"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_results_do_not_depend_on_thread_count(layout, shape):
    """Fixed blocking and fold order: bitwise the same with 1 thread and with several."""
    x = make_x(shape, torch.float32, layout)
    n, c, h, w = x.shape
    a, s = small(n, c, torch.float32, 1, "gate"), small(n, h * w, torch.float32, 2, "gate")
    gy = make_x(tuple(x.shape), torch.float32, layout, seed=5)
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
    x = make_x((2, 6, 3, 4), torch.float32, "nchw", kind="ties")
    a = small(2, 6, torch.float32, 1, "gate")
    with pytest.raises(RuntimeError, match=message):
        call(x, a)


def _opcheck_cases():
    x = make_x((2, 6, 3, 4), torch.float32, "nchw", kind="ties")
    a, s = small(2, 6, torch.float32, 1, "gate"), small(2, 12, torch.float32, 2, "gate")
    u, v = small(2, 12, torch.float32, 3), small(2, 12, torch.float32, 4)
    uh, vh = small(2, 6, torch.float32, 5), small(2, 6, torch.float32, 6)
    _, mx_c, am_c, _ = SPEC.pool_c(x, a)
    _, mx_hw, am_hw, _ = SPEC.pool_hw(x)
    gy = make_x((2, 6, 3, 4), torch.float32, "nchw", seed=3, kind="ties")
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
    """The CPU pass set's spec comparisons (tests/test_passes.py) and this file's thread-count check,
    rerun with the kernels of one ISA forced (a fresh process each, because the choice is made once
    per process)."""
    if not _cpu_has(ISA_FLAGS[isa]):
        pytest.skip(f"this CPU cannot run the {isa} kernels")
    env = dict(os.environ, **{ISA_ENV: isa})
    # the large "threads" shape runs once, in-process; thread_count covers multi-block inputs here
    keep = "(cpu and not threads and not test_cpu_passes) or thread_count or info_reports"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          os.path.join(here, "test_passes.py"), __file__, "-k", keep],
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
