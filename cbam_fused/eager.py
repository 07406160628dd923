"""The "torch" backend: the fused block's math with stock ops and autograd. It is also the path taken
while exporting (ONNX, ``torch.export``), and the one that supports second derivatives."""
import functools

from . import small_steps as ss
from .attention_op import no_autocast
from .passes import acc_dtype

__all__ = ["eager_attention"]


def _autocast_off(fn):
    """Run ``fn(x, ...)`` with autocast off on x's device."""
    @functools.wraps(fn)
    def run(x, *args, **kwargs):
        with no_autocast(x):
            return fn(x, *args, **kwargs)
    return run


@_autocast_off
def eager_attention(x, cw, pools, cgate, sw, sgate, ties):
    """``(y, bn_batch_stats)`` for channel weights ``cw`` and spatial weights ``sw`` (either may be None)."""
    n, c, h, w = x.shape
    acc = acc_dtype(x.dtype)
    v = x.to(acc)
    stats = None

    def vmax(t, dim):
        if ties == "split":
            return t.amax(dim=dim)
        return t.max(dim=dim).values

    if cw is not None:
        flat = v.reshape(n, c, h * w)
        m = ss.channel_logits(cw, pools, flat.mean(dim=2), vmax(flat, 2))
        v = v * ss.gate_forward(cgate, m)[:, :, None, None]
    if sw is not None:
        l, stats = ss.spatial_logits(sw, v.mean(dim=1).reshape(n, h * w), vmax(v, 1).reshape(n, h * w), (n, h, w))
        v = v * ss.gate_forward(sgate, l).reshape(n, 1, h, w)
    return v.to(x.dtype), stats
