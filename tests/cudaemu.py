"""The CUDA kernels of csrc/cuda/passes.cuh run on the CPU by the cudacpu emulator.

``unavailable_reason()`` says why the emulator backend cannot run (or None); ``register()`` adds the
pass set "cudaemu" to ``cbam_fused.ops`` so that the shared orchestration (pass order, small steps)
drives the emulated kernels exactly as it drives the compiled ones.

The library is built with ``cucc`` from tests/cudaemu/emu_shim.cu, whose ``extern "C"`` entry points
call through the CUDA PassTable that the ATen glue calls (csrc/cuda/pass_table.cuh), into
build/cudaemu/ (cached by a hash of the sources and the compiler). ``pass_table_address()`` gives the
table itself (a ``const cbam_fused::PassTable*``). ``training_step_launches()`` counts what a training
step launches, CUDA kernels from the emulator's launch log included, and ``pass_runs()`` gives the
launches, partials and small operands of single full-size passes on a device of a given SM count,
in a child process (``pass_launches()``: the launches alone).
The emulator is the project's own copy in third_party/cudacpu; ``$CUDACPU_HOME`` overrides it.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import torch

from bench.launches import Launch, launch_log
from cbam_fused import backends, ops
from cbam_fused.passes import acc_dtype

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "csrc" / "pass_args.h", ROOT / "csrc" / "cuda" / "passes.cuh",
           ROOT / "csrc" / "cuda" / "spatial_conv.cuh", ROOT / "csrc" / "cuda" / "channel_mlp.cuh",
           ROOT / "csrc" / "cuda" / "pass_table.cuh",
           ROOT / "tests" / "cudaemu" / "emu_shim.cu"]
BUILD_DIR = ROOT / "build" / "cudaemu"
# csrc/pass_args.h: DType, Layout and Pass numbering
DTYPE_CODE = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}
NCHW, NHWC = 0, 1
POOL_HW, POOL_C, APPLY_GATES, GATE_GRADS, POOL_C_GRAD_A, INPUT_GRAD = range(6)

_LIB = None
_REASON = None
_TRIED = False


EMULATOR_DIR = ROOT / "third_party" / "cudacpu"


def emulator_dir() -> Path:
    """Where the emulator should be: $CUDACPU_HOME when set (and only it), else third_party/cudacpu."""
    env = os.environ.get("CUDACPU_HOME")
    return Path(env) if env else EMULATOR_DIR


def emulator_home() -> Path | None:
    """The emulator's folder if it holds a ``cucc``, else None."""
    home = emulator_dir()
    return home if (home / "cucc").is_file() else None


def torch_includes() -> list[str]:
    inc = Path(torch.__file__).resolve().parent / "include"
    return [f"-I{inc}", f"-I{inc / 'torch' / 'csrc' / 'api' / 'include'}"]


# -fno-strict-aliasing: c10::BFloat16::operator float() under __CUDACC__ reads its uint16 through a
# `const __nv_bfloat16*`; the emulator's __nv_bfloat16 is an ordinary struct, so g++ -O2 may reorder
# that read before the store that produced the value (observed: bf16 16-byte loads read as 0).
# -fno-gnu-unique: the function-local static table of cuda_pass_table() (an inline function) would
# otherwise be a GNU_UNIQUE symbol, which the dynamic linker unifies with the same object in the real
# CUDA module (cbam_fused._cuda) when both are loaded: the emulator's table then pointed at the real
# launchers ("CUDA driver version is insufficient", observed).
# -fno-tree-slp-vectorize: load_words (csrc/cuda/passes.cuh) reads a chunk through a uint4 when the
# caller found it 16-byte aligned, else element by element; g++ 12's SLP vectorizer joined the two
# 8-byte element loads of a double chunk into one aligned 16-byte load (movdqa), as if the uint4
# branch's alignment held on the other branch too: a segfault on odd rows (observed, pool_c fp64
# channels_last with 37 channels).
EMU_FLAGS = ("-O2", "-fno-strict-aliasing", "-fno-gnu-unique", "-fno-tree-slp-vectorize")


def build(extra_flags: tuple[str, ...] = EMU_FLAGS, source: Path | None = None, shared: bool = True,
          tag: str = "lib") -> Path:
    """Compile ``source`` (default: the shim) with cucc; cached by a hash of inputs. Raises on failure."""
    home = emulator_home()
    if home is None:
        raise FileNotFoundError(f"the cudacpu emulator was not found: no cucc in {emulator_dir()} "
                                "(set $CUDACPU_HOME)")
    source = source or SOURCES[-1]
    sources = sorted(set(SOURCES + [source]))
    cmd_tail = [*extra_flags, "-I" + str(ROOT / "csrc"), *torch_includes(), str(source)]
    if shared:
        cmd_tail = ["-fPIC", "-shared", *cmd_tail]
    h = hashlib.sha256()
    for s in sources + [home / "cucc", home / "cu2cpp.py", home / "include" / "cudacpu.h"]:
        h.update(s.read_bytes())
    h.update(" ".join(cmd_tail).encode())
    h.update(torch.__version__.encode())
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    out = BUILD_DIR / f"{tag}-{h.hexdigest()[:16]}{'.so' if shared else ''}"
    if out.exists():
        return out
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    proc = subprocess.run([str(home / "cucc"), *cmd_tail, "-o", str(tmp)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"cucc failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    os.replace(tmp, out)
    return out


def _load():
    global _LIB, _REASON, _TRIED
    if _TRIED:
        return _LIB
    _TRIED = True
    try:
        _LIB = ctypes.CDLL(str(build()))
    except FileNotFoundError as e:
        _REASON = str(e)
    except (RuntimeError, OSError) as e:
        _REASON = f"building the emulator library failed: {e}"
    if _LIB is not None:
        _declare(_LIB)
    return _LIB


def unavailable_reason() -> str | None:
    if sys.platform != "linux":
        return "the cudacpu emulator runs on x86-64 Linux only"
    _load()
    return _REASON


def _declare(lib):
    L, I, V = ctypes.c_longlong, ctypes.c_int, ctypes.c_void_p
    G = [I, I, L, L, L]  # dtype, layout, n, c, p
    conv = [L, L, L, L, I]  # n, h, w, k, f64
    sig = {
        "pass_table": (V, []),
        "set_reduce_rows": (None, [L]),
        "workspace": (L, [I, *G]),
        "conv_grad_workspace": (L, conv),
        "row_lanes": (I, [L, I]),
        "pool_hw": (I, [*G, V, V, V, V, V, V]),
        "pool_c": (I, [*G, V, V, V, V, V, V, V]),
        "apply_gates": (I, [*G, V, V, V, V]),
        "gate_grads": (I, [*G, V, V, V, V, V, V, V]),
        "pool_c_grad_a": (I, [*G, V, V, V, V, V, V, V, V]),
        "input_grad": (I, [*G, *[V] * 12, I, V]),
        "spatial_conv": (I, [*conv, V, V, V, V, V]),
        "spatial_conv_grad": (I, [*conv, *[V] * 9]),
        "channel_mlp": (I, [L, L, L, I, I, I, *[V] * 7]),
        "channel_mlp_grad": (I, [L, L, L, I, I, I, *[V] * 9, L, *[V] * 6]),
        "error_string": (ctypes.c_char_p, [I]),
    }
    for name, (res, args) in sig.items():
        fn = getattr(lib, "cbam_emu_" + name)
        fn.restype, fn.argtypes = res, args


def pass_table_address() -> int:
    """Address of the emulated CUDA PassTable (``const cbam_fused::PassTable*``), for C++ callers."""
    lib = _load()
    if lib is None:
        raise RuntimeError(_REASON)
    return lib.cbam_emu_pass_table()


def _ptr(t):
    return None if t is None else t.data_ptr()


def _geometry(x) -> tuple[int, int, int, int, int]:
    """(dtype, layout, n, c, p) of a full-size operand, as csrc/pass_args.h's Geometry."""
    n, c, h, w = x.shape
    if x.is_contiguous():
        layout = NCHW
    elif x.is_contiguous(memory_format=torch.channels_last):
        layout = NHWC
    else:
        raise ValueError("the CUDA passes need an NCHW-contiguous or channels_last-contiguous tensor")
    return DTYPE_CODE[x.dtype], layout, n, c, h * w


def _small(t, x, shape, name, dtype=None):
    """Check a small operand the way the ATen glue does; small tensors are made contiguous."""
    if t is None:
        return None
    want = dtype or acc_dtype(x.dtype)
    if t.dtype != want or tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must be a {want} tensor of shape {tuple(shape)}, got {t.dtype} {tuple(t.shape)}")
    return t.contiguous()


def _tie(argmax, mx, split):
    """The tie operand of the style (csrc/pass_args.h, TieOperand): argmax, or max for split-style ties."""
    return (None, _ptr(mx)) if split else (_ptr(argmax), None)


class EmuPasses:
    """The pass contract on CPU tensors, computed by the emulated CUDA kernels.

    ``rows`` is the reduction tile height (0: the launchers' choice); tests use small values to force
    several blocks per reduction on small shapes.
    """

    name = "cudaemu"

    def __init__(self, rows: int = 0):
        self.lib = _load()
        if self.lib is None:
            raise RuntimeError(_REASON)
        self.rows = rows

    def _check(self, rc, what):
        if rc != 0:
            msg = self.lib.cbam_emu_error_string(rc).decode()
            raise RuntimeError(f"emulated CUDA launch of {what} failed with cudaError_t {rc} ({msg})")

    def _ws(self, pass_id, geo):
        self.lib.cbam_emu_set_reduce_rows(self.rows)  # workspace size and launch use the same tiles
        return torch.empty(int(self.lib.cbam_emu_workspace(pass_id, *geo)), dtype=torch.uint8)

    def _pools(self, x, per_channel, a, ties):
        geo = _geometry(x)
        n, c, p = geo[2:]
        acc = acc_dtype(x.dtype)
        size = (n, c) if per_channel else (n, p)
        mean, mx = torch.empty(size, dtype=acc), torch.empty(size, dtype=acc)
        arg, cnt = (torch.empty(size, dtype=torch.int32) if ties else None for _ in range(2))
        outs = (mean.data_ptr(), mx.data_ptr(), _ptr(arg), _ptr(cnt))  # null pointers without ties
        if per_channel:
            ws = self._ws(POOL_HW, geo)
            rc = self.lib.cbam_emu_pool_hw(*geo, x.data_ptr(), *outs, ws.data_ptr())
        else:
            a = _small(a, x, (n, c), "a")
            ws = self._ws(POOL_C, geo)
            rc = self.lib.cbam_emu_pool_c(*geo, x.data_ptr(), _ptr(a), *outs, ws.data_ptr())
        self._check(rc, "pool_hw" if per_channel else "pool_c")
        return mean, mx, arg, cnt

    def pool_hw(self, x, ties=True):
        return self._pools(x, True, None, ties)

    def pool_c(self, x, a, ties=True):
        return self._pools(x, False, a, ties)

    def apply_gates(self, x, a, s):
        geo = _geometry(x)
        n, c, p = geo[2:]
        a, s = _small(a, x, (n, c), "a"), _small(s, x, (n, p), "s")
        y = torch.empty_like(x)
        self._check(self.lib.cbam_emu_apply_gates(*geo, x.data_ptr(), _ptr(a), _ptr(s), y.data_ptr()), "apply_gates")
        return y

    def gate_grads(self, gy, x, a, s, want_a, want_s):
        geo = _geometry(x)
        n, c, p = geo[2:]
        if _geometry(gy) != geo:
            raise ValueError("gy must match x in shape, dtype and layout")
        a, s = _small(a, x, (n, c), "a"), _small(s, x, (n, p), "s")
        acc = acc_dtype(x.dtype)
        ga = torch.empty((n, c) if want_a else 0, dtype=acc)
        gs = torch.empty((n, p) if want_s else 0, dtype=acc)
        ws = self._ws(GATE_GRADS, geo)
        self._check(self.lib.cbam_emu_gate_grads(*geo, gy.data_ptr(), x.data_ptr(), _ptr(a), _ptr(s),
                                                 ga.data_ptr() if want_a else None, gs.data_ptr() if want_s else None,
                                                 ws.data_ptr()), "gate_grads")
        return ga, gs

    def pool_c_grad_a(self, x, a, u, v, argmax, mx, split):
        geo = _geometry(x)
        n, c, p = geo[2:]
        a = _small(a, x, (n, c), "a")
        u, v, mx = (_small(t, x, (n, p), nm) for t, nm in ((u, "u"), (v, "v"), (mx, "max")))
        argmax = _small(argmax, x, (n, p), "argmax", torch.int32)
        ga = torch.zeros((n, c), dtype=acc_dtype(x.dtype))  # the table's pass adds to ga
        ws = self._ws(POOL_C_GRAD_A, geo)
        self._check(self.lib.cbam_emu_pool_c_grad_a(*geo, x.data_ptr(), a.data_ptr(), u.data_ptr(), v.data_ptr(),
                                                    *_tie(argmax, mx, split), ga.data_ptr(), ws.data_ptr()),
                    "pool_c_grad_a")
        return ga

    def input_grad(self, gy, x, a, s, u_c, v_c, argmax_c, max_c, u_hw, v_hw, argmax_hw, max_hw, split):
        geo = _geometry(gy)
        n, c, p = geo[2:]
        if split and (x is None or _geometry(x) != geo):
            raise ValueError("split-style ties need x with gy's shape and layout")
        a, s = _small(a, gy, (n, c), "a"), _small(s, gy, (n, p), "s")
        u_c, v_c, max_c = (_small(t, gy, (n, p), nm) for t, nm in ((u_c, "u_c"), (v_c, "v_c"), (max_c, "max_c")))
        u_hw, v_hw, max_hw = (_small(t, gy, (n, c), nm)
                              for t, nm in ((u_hw, "u_hw"), (v_hw, "v_hw"), (max_hw, "max_hw")))
        argmax_c = _small(argmax_c, gy, (n, p), "argmax_c", torch.int32)
        argmax_hw = _small(argmax_hw, gy, (n, c), "argmax_hw", torch.int32)
        gx = torch.empty_like(gy)
        self._check(self.lib.cbam_emu_input_grad(
            *geo, gy.data_ptr(), _ptr(x) if split else None, _ptr(a), _ptr(s),
            _ptr(u_c), _ptr(v_c), *_tie(argmax_c, max_c, split),
            _ptr(u_hw), _ptr(v_hw), *_tie(argmax_hw, max_hw, split), bool(split), gx.data_ptr()), "input_grad")
        return gx

    @staticmethod
    def _conv_operands(in0, in1, weight, h, w, grad_out=None):
        """Checked like the ops' glue (csrc/spatial_conv_checks.h): [N, h*w] planes, weight [1, 2, K, K]."""
        if in0.dtype not in (torch.float32, torch.float64) or in0.dim() != 2 or in0.shape[1] != h * w:
            raise ValueError(f"in0 must be a float32/float64 [N, {h * w}] tensor, got {in0.dtype} {tuple(in0.shape)}")
        for t, name in ((in1, "in1"), (grad_out, "grad_out")):
            if t is not None and (t.dtype != in0.dtype or t.shape != in0.shape):
                raise ValueError(f"{name} must match in0 in dtype and shape")
        k = weight.shape[-1]
        if weight.dtype != in0.dtype or tuple(weight.shape) != (1, 2, k, k) or k % 2 == 0:
            raise ValueError(f"weight must be [1, 2, K, K] with K odd, got {tuple(weight.shape)}")
        return in0.shape[0], k, in0.dtype == torch.float64

    def spatial_conv(self, in0, in1, weight, bias, h, w):
        n, k, f64 = self._conv_operands(in0, in1, weight, h, w)
        in0, in1, weight = in0.contiguous(), in1.contiguous(), weight.contiguous()
        out = torch.empty_like(in0)
        self._check(self.lib.cbam_emu_spatial_conv(n, h, w, k, f64, in0.data_ptr(), in1.data_ptr(),
                                                   weight.data_ptr(), _ptr(bias), out.data_ptr()), "spatial_conv")
        return out

    def spatial_conv_backward(self, grad_out, in0, in1, weight, has_bias, h, w):
        n, k, f64 = self._conv_operands(in0, in1, weight, h, w, grad_out)
        grad_out, in0, in1, weight = (t.contiguous() for t in (grad_out, in0, in1, weight))
        g0, g1, gw = torch.empty_like(in0), torch.empty_like(in1), torch.empty_like(weight)
        gb = weight.new_empty(1 if has_bias else 0)
        ws = torch.empty(int(self.lib.cbam_emu_conv_grad_workspace(n, h, w, k, f64)), dtype=torch.uint8)
        self._check(self.lib.cbam_emu_spatial_conv_grad(
            n, h, w, k, f64, in0.data_ptr(), in1.data_ptr(), weight.data_ptr(), grad_out.data_ptr(),
            g0.data_ptr(), g1.data_ptr(), gw.data_ptr(), gb.data_ptr() if has_bias else None, ws.data_ptr()),
            "spatial_conv_backward")
        return g0, g1, gw, gb


# csrc/pass_args.h: ChannelPools and GateKind numbering
MLP_POOLS = {"avg+max": 0, "avg": 1, "max": 2, "light": 3}
MLP_GATES = {"sigmoid": 0, "hard_sigmoid": 1, "keras_hard_sigmoid": 2}


def _mlp_operands(pooled, w1, b1, w2, b2, pools, gate):
    """The leading arguments of both MLP entry points, checked like the orchestration does."""
    _, n, c = pooled.shape
    r = w1.shape[0]
    dt = pooled.dtype
    if dt not in (torch.float32, torch.float64) or tuple(w1.shape) != (r, c) or tuple(w2.shape) != (c, r):
        raise ValueError("pooled [2, N, C] float32/float64, w1 [R, C] and w2 [C, R] expected")
    for t in (pooled, w1, b1, w2, b2):
        if t is not None and (t.dtype != dt or not t.is_contiguous()):
            raise ValueError("the MLP operands must be contiguous and of one dtype")
    return (n, c, r, dt == torch.float64, MLP_POOLS[pools], MLP_GATES[gate], pooled.data_ptr(),
            w1.data_ptr(), _ptr(b1), w2.data_ptr(), _ptr(b2))


def _mlp_check(lib, rc, what):
    if rc != 0:
        raise RuntimeError(f"emulated CUDA launch of {what} failed with cudaError_t {rc} "
                           f"({lib.cbam_emu_error_string(rc).decode()})")


def channel_mlp(pooled, w1, b1, w2, b2, pools="avg+max", gate="sigmoid"):
    """(m, a) [N, C] from the CUDA table's channel_mlp, on CPU tensors."""
    lib = _load()
    head = _mlp_operands(pooled, w1, b1, w2, b2, pools, gate)
    m, a = pooled.new_empty(pooled.shape[1:]), pooled.new_empty(pooled.shape[1:])
    _mlp_check(lib, lib.cbam_emu_channel_mlp(*head, m.data_ptr(), a.data_ptr()), "channel_mlp")
    return m, a


def channel_mlp_grad(pooled, w1, b1, w2, b2, m, a, ga, count, pixels, pools="avg+max", gate="sigmoid"):
    """(u, v, gw1, gb1, gw2, gb2) from the CUDA table's channel_mlp_grad; count (int32) for split ties."""
    lib = _load()
    head = _mlp_operands(pooled, w1, b1, w2, b2, pools, gate)
    m, a, ga = (t.contiguous() for t in (m, a, ga))
    count = None if count is None else count.to(torch.int32).contiguous()
    u, v = torch.empty_like(m), torch.empty_like(m)
    gw1, gw2 = torch.empty_like(w1), torch.empty_like(w2)
    gb1 = None if b1 is None else torch.empty_like(b1)
    gb2 = None if b2 is None else torch.empty_like(b2)
    rc = lib.cbam_emu_channel_mlp_grad(*head, m.data_ptr(), a.data_ptr(), ga.data_ptr(), _ptr(count), pixels,
                                       u.data_ptr(), v.data_ptr(), gw1.data_ptr(), _ptr(gb1), gw2.data_ptr(),
                                       _ptr(gb2))
    _mlp_check(lib, rc, "channel_mlp_grad")
    return u, v, gw1, gb1, gw2, gb2


def register() -> None:
    """Run backend "cudaemu" through the C++ orchestration that ships, over the emulated CUDA table;
    orchestrations written in Python (the parallel arrangement) get the same kernels as a pass set."""
    backends.register_passes("cudaemu", EmuPasses())
    backends.register_pass_table("cudaemu", pass_table_address())


# The kernels each entry of the CUDA table launches (for the default CBAM), by their names in the
# emulator's launch log; csrc/attention.cpp names the entries after the keys.
PASS_KERNELS = {
    "pool_hw": ("pool_hw_tiles", "pool_hw_finish"),
    "pool_c": ("pool_c_tiles", "pool_c_finish"),
    "apply_gates": ("apply_gates_tiles",),
    "gate_grads": ("gate_grads_tiles", "gate_grads_finish"),
    "pool_c_grad_a": ("pool_c_grad_a_tiles", "pool_c_grad_a_finish"),
    "input_grad": ("input_grad_tiles",),
    "spatial_conv": ("spatial_conv_fwd",),
    "spatial_conv_grad": ("spatial_conv_grad_tiles", "spatial_conv_grad_finish"),
    "channel_mlp": ("channel_mlp_fwd",),
    "channel_mlp_grad": ("channel_mlp_bwd",),
}


def _in_child(command: str, spec, env: dict[str, str] | None = None):
    """Runs ``python -m tests.cudaemu COMMAND SPEC`` with a fresh $CUDACPU_LAUNCH_LOG (and ``env``);
    returns the JSON of its last line. The emulator opens the log at its first launch and reads its
    other variables once, so each such run needs a process of its own."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, **(env or {}), CUDACPU_LAUNCH_LOG=str(Path(tmp) / "launches.log"))
        proc = subprocess.run([sys.executable, "-m", "tests.cudaemu", command, json.dumps(spec)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"tests.cudaemu {command} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                           f"{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def training_step_launches(cbam: dict, shape: tuple[int, ...], seed: int = 0) -> tuple[list[str], list[str]]:
    """bench.launches.training_step_launches of ``cbam_fused.CBAM(**cbam)`` on backend "cudaemu" (after
    a warm-up step): the ATen ops from the profiler and the emulated CUDA kernels from the launch log."""
    fwd, bwd = _in_child("launches", dict(cbam=cbam, shape=list(shape), seed=seed))
    return fwd, bwd


def _launches_child(spec: dict) -> None:
    import cbam_fused as cf
    from bench.launches import training_step_launches as count

    register()
    torch.manual_seed(spec["seed"])
    m = cf.CBAM(**spec["cbam"], backend="cudaemu")
    x = torch.randn(*spec["shape"], requires_grad=True)
    gy = torch.randn(*spec["shape"])
    m(x).backward(gy)  # warm-up
    print(json.dumps(count(m, x, gy, launch_log=os.environ["CUDACPU_LAUNCH_LOG"])))


REDUCTION_PASSES = ("pool_hw", "pool_c", "gate_grads", "pool_c_grad_a")
PASS_IDS = dict(pool_hw=POOL_HW, pool_c=POOL_C, apply_gates=APPLY_GATES, gate_grads=GATE_GRADS,
                pool_c_grad_a=POOL_C_GRAD_A, input_grad=INPUT_GRAD)
FULL_SIZE_PASSES = tuple(PASS_IDS)


class PassRun(NamedTuple):
    """One call of a full-size pass on the emulator (``pass_runs``)."""
    launches: list[Launch]
    workspace_bytes: int  # the partials (csrc/cuda/passes.cuh, workspace_bytes), written then read back
    small_read_bytes: int  # the [N, C] and [N, P] operands handed to the pass (index-style ties)
    small_write_bytes: int  # its [N, C] and [N, P] results
    row_lanes: int  # lanes per row of its tiles (passes.cuh, row_lanes_for): a warp takes 32 / row_lanes rows at once


def pass_runs(cases: list[dict], sm_count: int, dry_run: bool = True) -> list[PassRun]:
    """One call of each case's pass on a device that reports ``sm_count`` multiprocessors. A case is
    a dict of ``name`` (one of FULL_SIZE_PASSES), ``shape`` [N, C, H, W], ``dtype`` ("float16", ...)
    and ``layout`` ("nchw" or "channels_last"); its inputs are zeros (unset in a dry run), with
    every gradient group and index-style ties (the default CBAM in training). ``dry_run`` launches
    without running the kernels, so full-size shapes cost next to nothing."""
    env = dict(CUDACPU_SM_COUNT=str(sm_count), CUDACPU_DRY_RUN="1" if dry_run else "0")
    found = _in_child("pass_runs", cases, env)
    return [PassRun([Launch(k, tuple(g), tuple(b)) for k, g, b in run["launches"]], run["workspace_bytes"],
                    run["small_read_bytes"], run["small_write_bytes"], run["row_lanes"]) for run in found]


def pass_launches(cases: list[dict], sm_count: int, dry_run: bool = True) -> list[list[Launch]]:
    """The CUDA launches (bench.launches.Launch: kernel, grid, block) of ``pass_runs``."""
    return [run.launches for run in pass_runs(cases, sm_count, dry_run)]


def _run_pass(passes: EmuPasses, name: str, shape, dtype: torch.dtype, layout: str):
    """Calls pass ``name`` once; returns (full-size x, the small operands it read, the small results)."""
    n, c, h, w = shape
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    # a dry run reads nothing: empty full-size tensors, whose pages are never touched
    full = torch.empty if os.environ.get("CUDACPU_DRY_RUN") == "1" else torch.zeros
    x = full(shape, dtype=dtype, memory_format=fmt)
    acc = acc_dtype(dtype)
    per_channel = lambda dt=acc: torch.zeros(n, c, dtype=dt)  # noqa: E731
    per_pixel = lambda dt=acc: torch.zeros(n, h * w, dtype=dt)  # noqa: E731
    if name == "pool_hw":
        return x, [], [t for t in passes.pool_hw(x) if t is not None]
    if name == "pool_c":
        a = per_channel()
        return x, [a], [t for t in passes.pool_c(x, a) if t is not None]
    if name == "apply_gates":
        a, s = per_channel(), per_pixel()
        passes.apply_gates(x, a, s)
        return x, [a, s], []
    if name == "gate_grads":
        a, s = per_channel(), per_pixel()
        return x, [a, s], list(passes.gate_grads(full(shape, dtype=dtype, memory_format=fmt), x, a, s, True, True))
    if name == "pool_c_grad_a":
        a, u, v, argmax = per_channel(), per_pixel(), per_pixel(), per_pixel(torch.int32)
        ga = passes.pool_c_grad_a(x, a, u, v, argmax, None, False)
        return x, [a, u, v, argmax], [ga]
    if name == "input_grad":
        a, s = per_channel(), per_pixel()
        c_group = (per_pixel(), per_pixel(), per_pixel(torch.int32))  # u_c, v_c, argmax_c
        hw_group = (per_channel(), per_channel(), per_channel(torch.int32))  # u_hw, v_hw, argmax_hw
        (u_c, v_c, arg_c), (u_hw, v_hw, arg_hw) = c_group, hw_group
        passes.input_grad(x, None, a, s, u_c, v_c, arg_c, None, u_hw, v_hw, arg_hw, None, False)
        return x, [a, s, *c_group, *hw_group], []
    raise ValueError(f"not a full-size pass: {name}")


def _pass_runs_child(cases: list[dict]) -> None:
    passes, log = EmuPasses(), os.environ["CUDACPU_LAUNCH_LOG"]
    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
    found = []
    for case in cases:
        start = len(launch_log(log))
        x, reads, writes = _run_pass(passes, case["name"], case["shape"], getattr(torch, case["dtype"]),
                                     case["layout"])
        workspace = int(passes.lib.cbam_emu_workspace(PASS_IDS[case["name"]], *_geometry(x)))
        n, c, h, w = x.shape
        cols_len = c if case["layout"] == "channels_last" else h * w
        found.append(dict(launches=launch_log(log, start), workspace_bytes=workspace,
                          small_read_bytes=nbytes(reads), small_write_bytes=nbytes(writes),
                          row_lanes=int(passes.lib.cbam_emu_row_lanes(cols_len, x.element_size()))))
    print(json.dumps(found))


if __name__ == "__main__":  # the child processes of _in_child
    {"launches": _launches_child, "pass_runs": _pass_runs_child}[sys.argv[1]](json.loads(sys.argv[2]))
