"""What nvcc makes of the CUDA kernels, without a GPU: ptxas resource usage and the SASS.

``compile_kernels`` compiles the kernel translation unit (tests/cudaemu/emu_shim.cu: the CUDA
PassTable of csrc/cuda/pass_table.cuh, so every launcher of passes.cuh, spatial_conv.cuh and
channel_mlp.cuh instantiated for every dtype and layout, with no ATen) with ``-Xptxas -v`` and the
extension build's flags; ``parse_ptxas`` reads the registers, shared memory, stack and spills per
kernel; ``sass_functions`` disassembles the object with ``cuobjdump -sass`` and
``loads_before_first_use`` counts a kernel's 16-byte global loads issued before one of them is used
(``loop_loads_in_flight``: within its row loops); ``innermost_loop`` and ``is_load_32`` find a row
loop and its 32-bit loads.
Used by tests/test_cuda_build.py and scripts/cuda_model.py.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
KERNEL_TU = ROOT / "tests" / "cudaemu" / "emu_shim.cu"
CHECKED_ARCHS = ("sm_80", "sm_90", "sm_120")  # ptxas register targets differ; sm_80 and sm_120 spilled first
# the extension build's nvcc defines (torch.utils.cpp_extension) so the code is the one that ships
TORCH_NVCC_DEFINES = ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                      "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__", "--expt-relaxed-constexpr"]

ENTRY = re.compile(r"Compiling entry function '(?P<name>[^']+)' for '(?P<arch>sm_\d+)'")
FRAME = re.compile(r"(?P<stack>\d+) bytes stack frame, (?P<st>\d+) bytes spill stores, (?P<ld>\d+) bytes spill loads")
REGS = re.compile(r"Used (?P<regs>\d+) registers")
SMEM = re.compile(r"(?P<smem>\d+) bytes smem")


def find_nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME")
    if home and (Path(home) / "bin" / "nvcc").is_file():
        return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def nvcc_version(nvcc: str) -> str:
    """The toolkit's full version ("13.0.88") from ``nvcc --version``."""
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"release [\d.]+, V(?P<version>[\d.]+)", out)
    return m["version"] if m else out.strip().splitlines()[-1]


def find_cuobjdump() -> str | None:
    """cuobjdump of the CUDA toolkit, else the copy that Triton ships (a toolkit may lack it)."""
    nvcc = find_nvcc()
    beside_nvcc = Path(nvcc).resolve().parent / "cuobjdump" if nvcc else None
    if beside_nvcc is not None and beside_nvcc.is_file():
        return str(beside_nvcc)
    found = shutil.which("cuobjdump")
    if found:
        return found
    try:
        import triton
    except ImportError:
        return None
    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(bundled) if bundled.is_file() else None


_OBJECTS = tempfile.TemporaryDirectory(prefix="cbam-kernels-")  # removed when the process exits


@functools.lru_cache(maxsize=None)
def compile_kernels(archs: tuple[str, ...], nvcc: str) -> tuple[subprocess.CompletedProcess, Path]:
    """(nvcc's completed process, the object) of the kernel translation unit for ``archs`` (sm_90, ...);
    compiled once per process, so that the tests that read it share one compile."""
    inc = Path(torch.__file__).resolve().parent / "include"
    obj = Path(_OBJECTS.name) / f"kernels-{'-'.join(archs)}.o"
    cmd = [nvcc, "-std=c++20", "-O3", "-c", "-Xptxas", "-v", *TORCH_NVCC_DEFINES, f"-I{ROOT / 'csrc'}", f"-I{inc}",
           *[f"-gencode=arch=compute_{a[3:]},code={a}" for a in archs], str(KERNEL_TU), "-o", str(obj)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1200), obj


def parse_ptxas(text: str) -> dict:
    """{(kernel, arch): {"stack", "spill_stores", "spill_loads", "registers"[, "smem"]}} from ptxas -v
    output; "smem" (static shared memory bytes) only for kernels that use some."""
    out, current = {}, None
    for line in text.splitlines():
        m = ENTRY.search(line)
        if m:
            current = (m["name"], m["arch"])
            out[current] = {}
            continue
        if current is None:
            continue
        m = FRAME.search(line)
        if m:
            out[current].update(stack=int(m["stack"]), spill_stores=int(m["st"]), spill_loads=int(m["ld"]))
        m = REGS.search(line)
        if m:
            out[current]["registers"] = int(m["regs"])
            m = SMEM.search(line)
            if m:
                out[current]["smem"] = int(m["smem"])
    return out


def demangle(names: list[str]) -> dict[str, str]:
    """{mangled: demangled} by c++filt (the Itanium ABI of nvcc's host compiler); names unchanged without it."""
    tool = shutil.which("c++filt")
    if tool is None or not names:
        return {n: n for n in names}
    proc = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True, check=True)
    return dict(zip(names, proc.stdout.splitlines()))


SASS_ARCH = re.compile(r"^\s*code for (?P<arch>sm_\d+)")
SASS_FUNCTION = re.compile(r"^\s*Function : (?P<name>\S+)")
SASS_INSTRUCTION = re.compile(r"/\*(?P<addr>[0-9a-f]{4,})\*/\s+(?P<text>[^;]*);")


def sass_functions(obj: Path, cuobjdump: str, arch: str) -> dict[str, list[str]]:
    """{mangled kernel: its SASS instructions in address order} of ``obj``'s code for ``arch``."""
    proc = subprocess.run([cuobjdump, "-sass", str(obj)], capture_output=True, text=True, check=True, timeout=600)
    out, current, in_arch = {}, None, False
    for line in proc.stdout.splitlines():
        m = SASS_ARCH.match(line)
        if m:
            in_arch, current = m["arch"] == arch, None
            continue
        m = SASS_FUNCTION.match(line)
        if m:
            current = out.setdefault(m["name"], []) if in_arch else None
            continue
        m = SASS_INSTRUCTION.search(line)
        if m and current is not None:
            current.append(m["text"].strip())
    return out


REGISTER = re.compile(r"\bR(\d+)\b")
LOAD_128 = re.compile(r"^LDG\.E(\.\w+)*?\.128(\.\w+)*\s+R(?P<dst>\d+)")
# instructions whose first operand is read, not written
READS_FIRST = ("ST", "RED", "ATOM", "BRA", "BSSY", "BSYNC", "RET", "CALL", "EXIT", "BAR", "WARPSYNC")


def loads_before_first_use(instructions: list[str]) -> int:
    """The most 16-byte global loads (LDG.E.128) issued, in address order, before an instruction reads
    one of their destination registers: the loads a thread has in flight at once on the vector path.
    Straight-line reading of the code: a loop that the compiler did not unroll shows 1 per operand."""
    pending: set[int] = set()
    loads, most = 0, 0
    for text in instructions:
        body = re.sub(r"^@!?P\w+\s+", "", text)
        opcode, _, operands = body.partition(" ")
        parts = [p.strip() for p in operands.split(",")]
        sources = parts if opcode.startswith(READS_FIRST) else parts[1:]
        read = {int(r) for p in sources for r in REGISTER.findall(p)}
        if read & pending:
            pending.clear()
            loads = 0
        m = LOAD_128.match(body)
        if m:
            pending |= set(range(int(m["dst"]), int(m["dst"]) + 4))
            loads += 1
            most = max(most, loads)
    return most


BRANCH = re.compile(r"^(?:@!?U?P\w+\s+)?BRA\b.*?(?P<target>0x[0-9a-f]+)\s*$")
SASS_INSTRUCTION_BYTES = 16  # every instruction from sm_70 on; branch targets are byte offsets
NARROW_LOAD = {"U8", "S8", "U16", "S16", "64", "128"}


def opcode(text: str) -> str:
    """An instruction's opcode with its modifiers, without its predicate: "LDG.E.128"."""
    return re.sub(r"^@!?U?P\w+\s+", "", text).split(" ", 1)[0]


def is_load_32(text: str) -> bool:
    """A 32-bit global load: LDG without a size modifier (LDG.E, LDG.E.CONSTANT, ...)."""
    parts = opcode(text).split(".")
    return parts[0] == "LDG" and not NARROW_LOAD & set(parts[1:])


def loops(instructions: list[str]) -> list[tuple[int, int]]:
    """(first, last) instruction index of every loop: a backward branch and its target."""
    out = []
    for end, text in enumerate(instructions):
        m = BRANCH.match(text)
        if m and int(m["target"], 16) // SASS_INSTRUCTION_BYTES <= end:
            out.append((int(m["target"], 16) // SASS_INSTRUCTION_BYTES, end))
    return out


def loop_loads_in_flight(instructions: list[str]) -> int:
    """loads_before_first_use within each innermost loop (one that holds no other), the most of them:
    the 16-byte loads a row loop keeps in flight, leaving out loads issued once before the loop
    (the small operands of a column chunk). Code without loops is read whole."""
    spans = loops(instructions)
    inner = [(s, e) for s, e in spans if not any((s, e) != (s2, e2) and s <= s2 and e2 <= e for s2, e2 in spans)]
    if not inner:
        return loads_before_first_use(instructions)
    return max(loads_before_first_use(instructions[s:e + 1]) for s, e in inner)


def innermost_loop(instructions: list[str], marker: str) -> list[str]:
    """The body of the shortest loop holding an instruction whose opcode starts with ``marker``
    (STG.E.128: the row loop of an elementwise pass); [] when none does."""
    bodies = [instructions[s:e + 1] for s, e in loops(instructions)]
    bodies = [b for b in bodies if any(opcode(t).startswith(marker) for t in b)]
    return min(bodies, key=len, default=[])
