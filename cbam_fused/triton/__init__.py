"""Triton kernels for the fused passes (see cbam_fused.passes for the contract).

``TritonPasses`` implements the six passes with Triton kernels launched through
``torch.library.wrap_triton``, so that ``torch.compile`` traces into them from the ``triton_op``
twins defined in ``cbam_fused.ops``. Files: ``channel.py`` (reductions over pixels), ``spatial.py``
(reductions over channels), ``gates.py`` (elementwise passes), ``common.py`` (shared helpers).
"""
try:
    import triton  # noqa: F401
except ImportError:
    AVAILABLE = False
else:
    from .backend import TritonPasses  # noqa: F401

    AVAILABLE = True

__all__ = ["AVAILABLE", "TritonPasses"]
