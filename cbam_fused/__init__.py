"""cbam_fused: fused CBAM (channel + spatial attention) for PyTorch, with CPU, CUDA and Triton kernels."""
from . import reference
from .functional import cbam, channel_attention, spatial_attention
from .convert import ConvertReport, convert
from .modules import CBAM, ECA, SE, ChannelAttention, SpatialAttention
from .ops import NoFusedBackendWarning, attention, available_backends

# The one place the version is written (pyproject.toml reads it). It moves with every change to
# the public API or an op schema: tests/test_api_lock.py checks that, and CHANGELOG.md says what changed.
__version__ = "0.2.0"

__all__ = [
    "reference",
    "attention",
    "available_backends",
    "cbam",
    "channel_attention",
    "spatial_attention",
    "CBAM",
    "ChannelAttention",
    "SpatialAttention",
    "SE",
    "ECA",
    "convert",
    "ConvertReport",
    "NoFusedBackendWarning",
]
