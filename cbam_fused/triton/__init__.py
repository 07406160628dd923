"""Triton kernels for the fused passes (see cbam_fused.passes for the contract)."""
try:
    import triton  # noqa: F401

    AVAILABLE = False  # set to True once the kernels land
except ImportError:
    AVAILABLE = False
