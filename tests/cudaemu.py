"""The CUDA kernels of csrc/cuda/passes.cuh run on the CPU by the cudacpu emulator.

``unavailable_reason()`` says why the emulator backend cannot run (or None); ``register()`` adds the
pass set "cudaemu" to ``cbam_fused.ops`` so that the shared orchestration (pass order, small steps)
drives the emulated kernels exactly as it drives the compiled ones.

The library is built with ``cucc`` from tests/cudaemu/emu_shim.cu, whose ``extern "C"`` entry points
call the same launchers as the ATen glue, into build/cudaemu/ (cached by a hash of the sources and
the compiler). The emulator is the project's own copy in third_party/cudacpu; ``$CUDACPU_HOME`` overrides it.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import torch

from cbam_fused import backends, ops
from cbam_fused.passes import acc_dtype

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "csrc" / "cuda" / "passes.cuh", ROOT / "tests" / "cudaemu" / "emu_shim.cu"]
BUILD_DIR = ROOT / "build" / "cudaemu"
DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}

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
EMU_FLAGS = ("-O2", "-fno-strict-aliasing")


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
    sig = {
        "pool_workspace": (L, [I, L, L, L, I, I, L]),
        "gate_grads_workspace": (L, [I, L, L, L, I, L]),
        "pool_c_grad_a_workspace": (L, [I, L, L, L, I, L]),
        "pool_hw": (I, [I, V, L, L, L, I, V, V, V, V, V, L]),
        "pool_c": (I, [I, V, V, L, L, L, I, V, V, V, V, V, L]),
        "apply_gates": (I, [I, V, V, V, L, L, L, I, V]),
        "gate_grads": (I, [I, V, V, V, V, L, L, L, I, V, V, V, L]),
        "pool_c_grad_a": (I, [I, V, V, V, V, V, V, I, L, L, L, I, V, V, L]),
        "input_grad": (I, [I, V, V, V, V, V, V, V, V, V, V, V, V, I, L, L, L, I, V]),
    }
    for name, (res, args) in sig.items():
        fn = getattr(lib, "cbam_emu_" + name)
        fn.restype, fn.argtypes = res, args


def _ptr(t):
    return None if t is None else t.data_ptr()


def _layout(x) -> tuple[bool, tuple[int, int, int]]:
    n, c, h, w = x.shape
    if x.is_contiguous():
        return False, (n, c, h * w)
    if x.is_contiguous(memory_format=torch.channels_last):
        return True, (n, c, h * w)
    raise ValueError("the CUDA passes need an NCHW-contiguous or channels_last-contiguous tensor")


def _small(t, x, shape, name, dtype=None):
    """Check a small operand the way the ATen glue does; small tensors are made contiguous."""
    if t is None:
        return None
    want = dtype or acc_dtype(x.dtype)
    if t.dtype != want or tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must be a {want} tensor of shape {tuple(shape)}, got {t.dtype} {tuple(t.shape)}")
    return t.contiguous()


def _check(rc, what):
    if rc != 0:
        raise RuntimeError(f"emulated CUDA launch of {what} failed with cudaError_t {rc}")


class EmuPasses:
    """The pass contract on CPU tensors, computed by the emulated CUDA kernels.

    ``rows`` is the reduction tile height (0: the launcher's choice); tests use small values to force
    several blocks per reduction on small shapes.
    """

    name = "cudaemu"

    def __init__(self, rows: int = 0):
        self.lib = _load()
        if self.lib is None:
            raise RuntimeError(_REASON)
        self.rows = rows

    def _ws(self, nbytes):
        return torch.empty(int(nbytes), dtype=torch.uint8)

    def _pools(self, x, per_channel, a):
        cl, (n, c, p) = _layout(x)
        acc = acc_dtype(x.dtype)
        size = (n, c) if per_channel else (n, p)
        mean, mx = torch.empty(size, dtype=acc), torch.empty(size, dtype=acc)
        arg, cnt = torch.empty(size, dtype=torch.int32), torch.empty(size, dtype=torch.int32)
        d = DTYPE_CODE[x.dtype]
        ws = self._ws(self.lib.cbam_emu_pool_workspace(d, n, c, p, cl, per_channel, self.rows))
        if per_channel:
            rc = self.lib.cbam_emu_pool_hw(d, x.data_ptr(), n, c, p, cl, mean.data_ptr(), mx.data_ptr(),
                                           arg.data_ptr(), cnt.data_ptr(), ws.data_ptr(), self.rows)
        else:
            a = _small(a, x, (n, c), "a")
            rc = self.lib.cbam_emu_pool_c(d, x.data_ptr(), _ptr(a), n, c, p, cl, mean.data_ptr(), mx.data_ptr(),
                                          arg.data_ptr(), cnt.data_ptr(), ws.data_ptr(), self.rows)
        _check(rc, "pool_hw" if per_channel else "pool_c")
        return mean, mx, arg, cnt

    def pool_hw(self, x):
        return self._pools(x, True, None)

    def pool_c(self, x, a):
        return self._pools(x, False, a)

    def apply_gates(self, x, a, s):
        cl, (n, c, p) = _layout(x)
        a, s = _small(a, x, (n, c), "a"), _small(s, x, (n, p), "s")
        y = torch.empty_like(x)
        _check(self.lib.cbam_emu_apply_gates(DTYPE_CODE[x.dtype], x.data_ptr(), _ptr(a), _ptr(s), n, c, p, cl,
                                             y.data_ptr()), "apply_gates")
        return y

    def gate_grads(self, gy, x, a, s, want_a, want_s):
        cl, (n, c, p) = _layout(x)
        if _layout(gy) != (cl, (n, c, p)) or gy.dtype != x.dtype:
            raise ValueError("gy must match x in shape, dtype and layout")
        a, s = _small(a, x, (n, c), "a"), _small(s, x, (n, p), "s")
        acc = acc_dtype(x.dtype)
        ga = torch.empty((n, c) if want_a else 0, dtype=acc)
        gs = torch.empty((n, p) if want_s else 0, dtype=acc)
        d = DTYPE_CODE[x.dtype]
        ws = self._ws(self.lib.cbam_emu_gate_grads_workspace(d, n, c, p, cl, self.rows))
        _check(self.lib.cbam_emu_gate_grads(d, gy.data_ptr(), x.data_ptr(), _ptr(a), _ptr(s), n, c, p, cl,
                                            ga.data_ptr() if want_a else None, gs.data_ptr() if want_s else None,
                                            ws.data_ptr(), self.rows), "gate_grads")
        return ga, gs

    def pool_c_grad_a(self, x, a, u, v, argmax, mx, split):
        cl, (n, c, p) = _layout(x)
        a = _small(a, x, (n, c), "a")
        u, v, mx = (_small(t, x, (n, p), nm) for t, nm in ((u, "u"), (v, "v"), (mx, "max")))
        argmax = _small(argmax, x, (n, p), "argmax", torch.int32)
        ga = torch.empty((n, c), dtype=acc_dtype(x.dtype))
        d = DTYPE_CODE[x.dtype]
        ws = self._ws(self.lib.cbam_emu_pool_c_grad_a_workspace(d, n, c, p, cl, self.rows))
        _check(self.lib.cbam_emu_pool_c_grad_a(d, x.data_ptr(), a.data_ptr(), u.data_ptr(), v.data_ptr(),
                                               argmax.data_ptr(), mx.data_ptr(), bool(split), n, c, p, cl,
                                               ga.data_ptr(), ws.data_ptr(), self.rows), "pool_c_grad_a")
        return ga

    def input_grad(self, gy, x, a, s, u_c, v_c, argmax_c, max_c, u_hw, v_hw, argmax_hw, max_hw, split):
        cl, (n, c, p) = _layout(gy)
        if split and (x is None or _layout(x) != (cl, (n, c, p))):
            raise ValueError("split-style ties need x with gy's shape and layout")
        a, s = _small(a, gy, (n, c), "a"), _small(s, gy, (n, p), "s")
        u_c, v_c, max_c = (_small(t, gy, (n, p), nm) for t, nm in ((u_c, "u_c"), (v_c, "v_c"), (max_c, "max_c")))
        u_hw, v_hw, max_hw = (_small(t, gy, (n, c), nm)
                              for t, nm in ((u_hw, "u_hw"), (v_hw, "v_hw"), (max_hw, "max_hw")))
        argmax_c = _small(argmax_c, gy, (n, p), "argmax_c", torch.int32)
        argmax_hw = _small(argmax_hw, gy, (n, c), "argmax_hw", torch.int32)
        gx = torch.empty_like(gy)
        _check(self.lib.cbam_emu_input_grad(
            DTYPE_CODE[gy.dtype], gy.data_ptr(), _ptr(x) if split else None, _ptr(a), _ptr(s), _ptr(u_c), _ptr(v_c),
            _ptr(argmax_c), _ptr(max_c), _ptr(u_hw), _ptr(v_hw), _ptr(argmax_hw), _ptr(max_hw), bool(split),
            n, c, p, cl, gx.data_ptr()), "input_grad")
        return gx


def register() -> None:
    backends.register_passes("cudaemu", EmuPasses())
