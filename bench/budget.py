"""The byte budget of docs/design.md §3 and the CPU "roof" built from measured plain passes.

Bytes are counted in units of |x| (the bytes of the input); the small tensors are ignored. Everything
here derives from ``PASS_TRAFFIC``, the full-size tensors each pass of the contract reads and writes.
"""
from __future__ import annotations

import torch

from .measure import time_interleaved

# "forward+backward" takes a fixed random upstream gradient; "forward+backward_sum" the one of
# y.sum(): ones broadcast with stride 0, as a sum or mean head delivers. Both move the same bytes in
# the plan below. The sweep runs DEFAULT_MODES unless asked.
MODES = ("forward", "forward+backward", "forward+backward_sum")
DEFAULT_MODES = ("forward", "forward+backward")


def has_backward(mode: str) -> bool:
    return mode != "forward"

# The pass contract (docs/design.md §3.1, §4.3): (full-size tensors read, full-size tensors written),
# with index-style ties (split-style ties also read x in input_grad). x, gy, y and gx share x's size.
PASS_TRAFFIC = {
    "pool_hw": (("x",), ()),
    "pool_c": (("x",), ()),
    "apply_gates": (("x",), ("y",)),
    "gate_grads": (("gy", "x"), ()),
    "pool_c_grad_a": (("x",), ()),
    "input_grad": (("gy",), ("gx",)),
}
PASSES = {"forward": ("pool_hw", "pool_c", "apply_gates"),
          "backward": ("gate_grads", "pool_c_grad_a", "input_grad")}

# Plain passes that move a given (reads, writes) of full-size tensors: the yardstick of each pass.
# read: x.sum((2, 3)); read_write: x * a[:, :, None, None] into a fresh tensor; two_reads: torch.dot(x, gy).
YARDSTICK_TRAFFIC = {"read": (1, 0), "read_write": (1, 1), "two_reads": (2, 0)}


def pass_units(name: str) -> int:
    """Full-size tensors a pass moves (reads + writes), in |x|."""
    reads, writes = PASS_TRAFFIC[name]
    return len(reads) + len(writes)


def pass_bytes(name: str, x_bytes: int) -> int:
    return pass_units(name) * x_bytes


def yardstick_of(name: str) -> str:
    """The plain pass that moves the same bytes as pass ``name``."""
    reads, writes = PASS_TRAFFIC[name]
    traffic = (len(reads), len(writes))
    return next(k for k, v in YARDSTICK_TRAFFIC.items() if v == traffic)


def _mode_passes(mode: str) -> tuple[str, ...]:
    return PASSES["forward"] + (PASSES["backward"] if has_backward(mode) else ())


# Full-size passes over |x|. Fused: forward 4, forward+backward 4 + 5. Eager PyTorch per
# docs/design.md §3.4: about 8 forward, 25 backward (a count, not derived from a plan).
FUSED_PASSES = {mode: sum(pass_units(p) for p in _mode_passes(mode)) for mode in MODES}
EAGER_PASSES = {mode: 8 + (25 if has_backward(mode) else 0) for mode in MODES}

# The fused plan as plain passes: (read-only reductions, read+write elementwise passes). A pass that
# writes counts as one read+write pass; one that only reads, as one reduction per tensor it reads.
ROOF_PLAN = {mode: (sum(len(PASS_TRAFFIC[p][0]) for p in _mode_passes(mode) if not PASS_TRAFFIC[p][1]),
                    sum(1 for p in _mode_passes(mode) if PASS_TRAFFIC[p][1]))
             for mode in MODES}


def bytes_moved(impl_kind: str, mode: str, x_bytes: int) -> int | None:
    """Bytes moved by the plan of ``impl_kind`` ("fused", "eager"); None where no model exists."""
    table = {"fused": FUSED_PASSES, "eager": EAGER_PASSES}.get(impl_kind)
    return None if table is None else table[mode] * x_bytes


def plain_passes(x: torch.Tensor, repeats: int, warmup: int) -> dict:
    """Measured times of the plain passes: ``x.clone()``, a read-only reduction and ``x * a``.

    Per docs/design.md §3.5 the clone is a yardstick, not a bound; the roof of a mode adds up the plain
    passes that the fused plan needs (``ROOF_PLAN``).
    """
    a = torch.rand(x.shape[0], x.shape[1], 1, 1, dtype=x.dtype, device=x.device)
    with torch.no_grad():
        t = time_interleaved({"clone": lambda: x.clone(), "read": lambda: x.sum((2, 3)),
                              "read_write": lambda: x * a}, x.device, repeats, warmup)
    out = {"clone_s": t["clone"].median_s, "read_s": t["read"].median_s, "read_write_s": t["read_write"].median_s}
    read, read_write = t["read"], t["read_write"]
    for mode, (reads, read_writes) in ROOF_PLAN.items():
        out[f"roof_{mode}_s"] = reads * read.median_s + read_writes * read_write.median_s
    return out
