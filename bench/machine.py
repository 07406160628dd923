"""A description of the machine and software the benchmark ran on."""
from __future__ import annotations

import os
import platform
import subprocess

import torch


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "avx512_fp16", "amx_bf16")
                    return [w for w in wanted if w in flags]
    except OSError:
        pass
    return []


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except ImportError:
        return None
    return getattr(mod, "__version__", "unknown")


def _git_commit() -> str | None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _cbam_cpu_info() -> str | None:
    """The CPU kernels' own report (kernel ISA in use, threads), when the extension provides one."""
    try:
        return str(torch.ops.cbam_fused.cpu_info())
    except (AttributeError, RuntimeError):
        return None


def describe(device: torch.device) -> dict:
    import cbam_fused

    info = {
        "hostname": platform.node(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_flags": _cpu_flags(),
        # the ISA that ATen's CPU kernels dispatch to in this process (ATEN_CPU_CAPABILITY may cap it)
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _version("triton"),
        "cbam_fused": cbam_fused.__version__,
        "cbam_fused_backends": cbam_fused.available_backends(),
        "cbam_fused_cpu_info": _cbam_cpu_info(),
        "cbam_fused_cpu_isa_env": os.environ.get("CBAM_FUSED_CPU_ISA"),
        "git_commit": _git_commit(),
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu_name=props.name, gpu_capability=f"{props.major}.{props.minor}",
                    gpu_memory_bytes=props.total_memory, gpu_sm_count=props.multi_processor_count)
    return info


def one_line(info: dict) -> str:
    if info.get("gpu_name"):
        return f"{info['gpu_name']} (CUDA {info['torch_cuda']}), torch {info['torch']}"
    return (f"{info['cpu_model']}, {info['torch_threads']} threads, ATen ISA {info['aten_cpu_capability']}, "
            f"torch {info['torch']}")
