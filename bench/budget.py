"""The byte budget of docs/design.md §3 and the CPU "roof" built from measured plain passes.

Bytes are counted in units of |x| (the bytes of the input); the small tensors are ignored.
"""
from __future__ import annotations

import torch

from .measure import time_interleaved

MODES = ("forward", "forward+backward")

# Full-size passes over |x|. Fused: forward 4 (read x twice for the two pools, read x + write y);
# backward 5 (gy and x, x, gy + gx). Eager PyTorch per docs/design.md §3.4: about 8 forward, 25 backward.
FUSED_PASSES = {"forward": 4, "forward+backward": 4 + 5}
EAGER_PASSES = {"forward": 8, "forward+backward": 8 + 25}

# The fused plan as plain passes: (read-only reductions, read+write elementwise passes).
# forward: pool_hw, pool_c | apply_gates; backward: gate_grads (reads gy and x), pool_c_grad_a | input_grad.
ROOF_PLAN = {"forward": (2, 1), "forward+backward": (2 + 3, 1 + 1)}


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
