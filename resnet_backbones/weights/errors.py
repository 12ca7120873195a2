"""The errors of :mod:`resnet_backbones.weights`; each message names the file or URL at fault."""

from __future__ import annotations

__all__ = [
    "ChecksumError",
    "DownloadError",
    "IncompatibleWeightsError",
    "UnsafeURLError",
    "UnsafeWeightsError",
    "WeightsFormatError",
]


class UnsafeWeightsError(ValueError):
    """A weights file asks to import or call something that plain arrays never need."""


class WeightsFormatError(ValueError):
    """A weights file is unreadable (empty, truncated, garbage) or of no known format."""


class IncompatibleWeightsError(ValueError):
    """Weights that do not fit the model or its config: missing or misshapen backbone
    parameters, or metadata (input format, pixel statistics, stride placement) that the config
    contradicts."""


class UnsafeURLError(ValueError):
    """A URL that weights may not be fetched from (plain http to a non-loopback host, ftp ...)."""


class DownloadError(OSError):
    """A download failed: HTTP error, unreachable host, or a connection closed early."""


class ChecksumError(DownloadError):
    """A downloaded file's SHA-256 differs from the one it was published with."""
