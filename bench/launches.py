"""Counting what a fused call launches: the launch budget of docs/design.md ("The launch budget").

Counted inside the op only: the ATen ops that reach a kernel (profiler leaf events, not counting
allocations and views) and the kernels of the C++ orchestration's pass table, which it names
``cbam_fused::kernel::<name>`` for the profiler.

Under the CUDA emulator (third_party/cudacpu) a table entry may launch several kernels: there the
table's records are left out and the kernels come from the emulator's launch log instead
(``$CUDACPU_LAUNCH_LOG``, one line per launch). The emulator opens the log at its first launch, so
the variable must be set before the process launches anything (tests/cudaemu.py runs the count in a
child process).
"""
from __future__ import annotations

import os
from typing import Callable, NamedTuple

from torch.profiler import ProfilerActivity, profile

FORWARD_OP = "cbam_fused::attention_forward"
BACKWARD_OP = "cbam_fused::attention_backward"
KERNEL_PREFIX = "cbam_fused::kernel::"
# ATen ops that launch nothing: allocations, views and no-op conversions
NO_KERNEL = frozenset({
    "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::view", "aten::as_strided", "aten::detach",
    "aten::resize_", "aten::select", "aten::slice", "aten::narrow", "aten::t", "aten::transpose",
    "aten::unsqueeze", "aten::squeeze", "aten::reshape", "aten::_reshape_alias", "aten::alias", "aten::expand",
    "aten::lift_fresh", "aten::unflatten", "aten::permute", "aten::numpy_T", "aten::contiguous", "aten::to",
})


def _launches(event, table_kernels: bool) -> list[str]:
    if event.name.startswith(KERNEL_PREFIX):
        return [event.name] if table_kernels else []
    if not event.cpu_children:
        return [event.name] if event.name.startswith("aten::") and event.name not in NO_KERNEL else []
    return [name for child in event.cpu_children for name in _launches(child, table_kernels)]


class Launch(NamedTuple):
    """One line of the emulator's launch log."""
    kernel: str  # without template arguments
    grid: tuple[int, int, int]
    block: tuple[int, int, int]

    @property
    def ctas(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]


def launch_log(path: str | os.PathLike, start: int = 0) -> list[Launch]:
    """The launches of the emulator's launch log from line ``start`` on. The log names each kernel as
    written at its launch (``pool_hw_tiles<T, true>``), then its grid and block, tab-separated
    (third_party/cudacpu/README.md)."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:  # nothing launched yet
        return []
    dims = lambda field: tuple(int(v) for v in field.split(","))  # noqa: E731
    out = []
    for line in lines[start:]:
        if line:
            name, grid, block = line.split("\t")[:3]
            out.append(Launch(name.split("<", 1)[0].strip(), dims(grid), dims(block)))
    return out


def launch_log_names(path: str | os.PathLike, start: int = 0) -> list[str]:
    """The kernels of the emulator's launch log from line ``start`` on, without template arguments."""
    return [launch.kernel for launch in launch_log(path, start)]


def launches_in(fn: Callable[[], object], op_name: str, table_kernels: bool = True,
                launch_log: str | os.PathLike | None = None) -> tuple[list[str], object]:
    """(launches inside the outermost calls of ``op_name`` while ``fn()`` runs, fn's result).

    ``table_kernels=False`` leaves out the table's records; ``launch_log`` adds the emulated CUDA
    kernels that the log gained meanwhile.
    """
    start = len(launch_log_names(launch_log)) if launch_log is not None else 0
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        result = fn()
    out = []
    for ev in prof.events():
        if ev.name == op_name and (ev.cpu_parent is None or ev.cpu_parent.name != op_name):
            out += _launches(ev, table_kernels)
    if launch_log is not None:
        out += launch_log_names(launch_log, start)
    return out, result


def training_step_launches(module, x, gy,
                           launch_log: str | os.PathLike | None = None) -> tuple[list[str], list[str]]:
    """(forward launches, backward launches) of ``module(x).backward(gy)``; with ``launch_log``, the
    emulated CUDA kernels in place of the table's records."""
    kw = dict(table_kernels=launch_log is None, launch_log=launch_log)
    fwd, y = launches_in(lambda: module(x), FORWARD_OP, **kw)
    bwd, _ = launches_in(lambda: y.backward(gy), BACKWARD_OP, **kw)
    return fwd, bwd
