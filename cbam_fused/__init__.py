"""cbam_fused: fused CBAM (channel + spatial attention) for PyTorch, with CPU, CUDA and Triton kernels."""
import sys as _sys

from . import _build

_build.check()  # before anything loads the extensions: a clear error if they belong to another torch

from . import reference  # noqa: E402
from .functional import cbam, channel_attention, spatial_attention  # noqa: E402
from .convert import ConvertReport, convert  # noqa: E402
from .modules import CBAM, ECA, SE, ChannelAttention, SpatialAttention  # noqa: E402
from .ops import NoFusedBackendWarning, attention, available_backends, unavailable_reason  # noqa: E402

# The one place the version is written (pyproject.toml reads it). It moves with every change to
# the public API or an op schema: tests/test_api_lock.py checks that, and CHANGELOG.md says what changed.
__version__ = "0.5.0"



def info(file="stdout") -> dict:
    """Print what a bug report needs to ``file`` (a text stream; "stdout", the default, is
    ``sys.stdout`` at call time; None prints nothing) and return it as a dict: the versions of
    cbam_fused, torch, CUDA and Triton, the torch the extensions were built against, the CUDA
    architectures compiled in, the CPU instruction set and the backends (and why others are
    missing). ``python -m cbam_fused.info`` prints the same."""
    from ._info import info as _info  # not at import time: it is only needed for reports

    return _info(_sys.stdout if file == "stdout" else file)


__all__ = [
    "reference",
    "attention",
    "available_backends",
    "unavailable_reason",
    "info",
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
