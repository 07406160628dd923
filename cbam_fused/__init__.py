"""cbam_fused: fused CBAM (channel + spatial attention) for PyTorch, with CPU, CUDA and Triton kernels."""
from . import _build

_build.check()  # before anything loads the extensions: a clear error if they belong to another torch

from . import reference  # noqa: E402
from .functional import cbam, channel_attention, spatial_attention  # noqa: E402
from .convert import ConvertReport, convert  # noqa: E402
from .modules import CBAM, ECA, SE, ChannelAttention, SpatialAttention  # noqa: E402
from .ops import attention, available_backends  # noqa: E402

__version__ = "0.1.0"


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
]
