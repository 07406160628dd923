"""What a bug report needs: versions, the build, the compiled CUDA architectures, the CPU kernels and the
backends. ``cbam_fused.info()`` and ``python -m cbam_fused.info`` print it (see ``info``).
"""
import importlib.metadata
import importlib.util
import json
import os
import platform
import struct
import sys
from typing import Optional

import torch

from . import __version__, _build, backends, ops

FATBIN_MAGIC = 0xBA55ED50
_KINDS = {1: "ptx", 2: "sass"}
# flag bits of a fatbin entry, read off nvcc 13 output: arch-specific (sm_90a) and family (sm_100f)
_FLAG_ARCH_SPECIFIC = 0x100000
_FLAG_FAMILY = 0x200000


def _elf_section(data: bytes, wanted: str) -> Optional[bytes]:
    """The contents of the section named ``wanted`` of a 64-bit little-endian ELF file, or None."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_at = headers[shstrndx][4]
    for name, _type, _flags, _addr, offset, size in headers:
        end = data.index(b"\0", names_at + name)
        if data[names_at + name:end].decode() == wanted:
            return data[offset:offset + size]
    return None


def fatbin_archs(data: bytes) -> list:
    """The (kind, arch) pairs of the CUDA fatbinaries in ELF ``data``: ``("sass", "sm_90")`` for machine
    code, ``("ptx", "compute_90")`` for PTX. Raises ValueError when there is no ``.nv_fatbin`` section.

    A fatbinary is a header (magic, version, header size, payload size) and entries, each with its own
    header: kind (1 PTX, 2 ELF machine code), header size, padded payload size, and at byte 28 the
    architecture times ten plus minor (90 for 9.0).
    """
    section = _elf_section(data, ".nv_fatbin")
    if section is None:
        raise ValueError("no .nv_fatbin section")
    found = []
    pos = 0
    while pos + 16 <= len(section):
        magic, _version, header_size, size = struct.unpack_from("<IHHQ", section, pos)
        if magic != FATBIN_MAGIC:  # containers are aligned; skip padding between them
            pos += 8
            continue
        entry, end = pos + header_size, pos + header_size + size
        while entry + 48 <= end:
            kind, _ev, entry_header, payload = struct.unpack_from("<HHIQ", section, entry)
            arch = struct.unpack_from("<I", section, entry + 28)[0]
            flags = struct.unpack_from("<Q", section, entry + 40)[0]
            suffix = "a" if flags & _FLAG_ARCH_SPECIFIC else "f" if flags & _FLAG_FAMILY else ""
            name = _KINDS.get(kind, f"kind{kind}")
            found.append((name, f"{'compute' if name == 'ptx' else 'sm'}_{arch}{suffix}"))
            if entry_header == 0:
                break
            entry += entry_header + payload
        pos = end
    return found


def cuda_archs() -> str:
    """The CUDA architectures compiled into ``cbam_fused._cuda``, read from the file (not loaded)."""
    spec = importlib.util.find_spec("cbam_fused._cuda")
    if spec is None or not spec.origin:
        return "not built"
    try:
        with open(spec.origin, "rb") as f:
            pairs = fatbin_archs(f.read())
    except (OSError, ValueError, struct.error) as e:  # struct.error: a truncated file
        return f"unknown ({spec.origin}: {e})"
    sass = sorted({a for k, a in pairs if k == "sass"}, key=_arch_key)
    ptx = sorted({a for k, a in pairs if k == "ptx"}, key=_arch_key)
    other = sorted({f"{k} {a}" for k, a in pairs if k not in ("sass", "ptx")})
    parts = [", ".join(sass) or "no machine code"]
    if ptx:
        parts.append("PTX " + ", ".join(ptx))
    return "; ".join(parts + other)


def _arch_key(name: str):
    digits = "".join(c for c in name.split("_", 1)[1] if c.isdigit())
    return int(digits), name


def _version_of(dist: str) -> Optional[str]:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_kernels() -> str:
    reason = backends.unavailable_reason("cpu")
    if reason is not None:
        return f"not loaded ({reason})"
    return torch.ops.cbam_fused.cpu_info()


def _gpus() -> list:
    if not torch.cuda.is_available():
        return []
    return [f"{torch.cuda.get_device_name(i)} (sm_{''.join(map(str, torch.cuda.get_device_capability(i)))})"
            for i in range(torch.cuda.device_count())]


def collect() -> dict:
    """The facts, as a dict of strings, lists and None (JSON-ready)."""
    record = _build.record()
    available = ops.available_backends()
    return {
        "cbam_fused": __version__,
        "location": os.path.dirname(os.path.abspath(ops.__file__)),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": _version_of("triton"),
        "built_against_torch": record.get("torch") if record else None,
        "cuda_archs": cuda_archs(),
        "cpu_kernels": _cpu_kernels(),
        "gpus": _gpus(),
        "backends": available,
        "unavailable": {name: ops.unavailable_reason(name) for name in ops.BACKENDS if name not in available},
    }


def format_report(facts: dict) -> str:
    lines = [
        f"cbam_fused      {facts['cbam_fused']} ({facts['location']})",
        f"python          {facts['python']} on {facts['platform']}",
        f"torch           {facts['torch']}",
        f"CUDA (torch)    {facts['cuda'] or 'none (CPU-only torch)'}",
        f"triton          {facts['triton'] or 'not installed'}",
        f"built against   torch {facts['built_against_torch'] or 'unknown (no build record)'}",
        f"CUDA archs      {facts['cuda_archs']}",
        f"CPU kernels     {facts['cpu_kernels']}",
        f"GPUs            {', '.join(facts['gpus']) or 'none'}",
        f"backends        {', '.join(facts['backends'])}",
    ]
    lines += [f"  no {name + ':':8}{why}" for name, why in facts["unavailable"].items()]
    return "\n".join(lines)


def info(file=sys.stdout) -> dict:
    """Print what a bug report needs to ``file`` (None: print nothing) and return it as a dict.

    The versions of cbam_fused, torch, CUDA (as torch was built) and Triton; the torch the extensions
    were built against; the CUDA architectures compiled into ``cbam_fused._cuda``; the CPU kernels'
    instruction set; the backends that work here, and why each other one does not.
    """
    facts = collect()
    if file is not None:
        print(format_report(facts), file=file)
    return facts


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print("usage: python -m cbam_fused.info [--json]\n\nPrints what a bug report needs.")
        return 0
    if argv == ["--json"]:
        print(json.dumps(collect(), indent=1))
        return 0
    if argv:
        print(f"unknown arguments {argv}; usage: python -m cbam_fused.info [--json]", file=sys.stderr)
        return 2
    info()
    return 0
