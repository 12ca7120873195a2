"""The errors of :mod:`resnet_backbones.weights`; each message names the file or URL at fault.

Every one is a :class:`WeightsError`, and also the built-in type that callers of a loader
already catch: a bad file or config is a ``ValueError``, a missing file a ``FileNotFoundError``,
a failed download an ``OSError``.

* :class:`WeightsError`
    * :class:`WeightsNotFoundError` (``FileNotFoundError``): no such file.
    * :class:`UnknownWeightsError` (``ValueError``): no such name in the model-zoo catalog, or
      a malformed ``hf-hub:`` path.
    * :class:`UnsafeWeightsError` (``ValueError``): the file would run code.
    * :class:`WeightsFormatError` (``ValueError``): unreadable, or of no known format.
    * :class:`IncompatibleWeightsError` (``ValueError``): the weights do not fit
        * :class:`MetadataMismatchError`: ... the config (input format, pixel statistics,
          stride placement);
        * :class:`BackboneMismatchError`: ... the model's backbone (missing, misshapen or
          foreign parameters).
    * :class:`UnsafeURLError` (``ValueError``): a URL weights may not be fetched from.
    * :class:`DownloadError` (``OSError``): a download failed
        * :class:`ChecksumError`: ... its SHA-256 is not the published one.
    * :class:`NonFiniteWeightsError` (``ValueError``): a model or file whose weights hold NaN
      or Inf (training diverged); nothing is saved or loaded.
    * :class:`NoGoodCheckpointError` (``ValueError``): ``--resume`` or ``--eval-only`` found no
      checkpoint in OUTPUT_DIR that loads (all torn or non-finite, or ``last_checkpoint``
      empty or dangling and nothing else there).
    * :class:`MissingDependencyError` (``ImportError``): an optional package that the file or
      path needs is not installed (safetensors, huggingface_hub).
"""

from __future__ import annotations

__all__ = [
    "BackboneMismatchError",
    "ChecksumError",
    "DownloadError",
    "IncompatibleWeightsError",
    "MetadataMismatchError",
    "MissingDependencyError",
    "NoGoodCheckpointError",
    "NonFiniteWeightsError",
    "UnknownWeightsError",
    "UnsafeURLError",
    "UnsafeWeightsError",
    "WeightsError",
    "WeightsFormatError",
    "WeightsNotFoundError",
]


class WeightsError(Exception):
    """Base of every error of resnet_backbones.weights."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """No weights file at a path."""


class UnknownWeightsError(WeightsError, ValueError):
    """A ``resnet_backbones://`` name that the model-zoo catalog does not have, or an
    ``hf-hub:`` path that names no repository."""


class UnsafeWeightsError(WeightsError, ValueError):
    """A weights file asks to import or call something that plain arrays never need."""


class WeightsFormatError(WeightsError, ValueError):
    """A weights file is unreadable (empty, truncated, garbage) or of no known format, or holds
    names its mapping table does not know."""


class IncompatibleWeightsError(WeightsError, ValueError):
    """Weights that do not fit the model or its config."""


class MetadataMismatchError(IncompatibleWeightsError):
    """The config contradicts what the weights record or imply about their input format, pixel
    statistics or stride placement."""


class BackboneMismatchError(IncompatibleWeightsError):
    """The weights miss backbone parameters of the model, have them in another shape, or hold
    modules the model lacks (a deeper or different network)."""


class UnsafeURLError(WeightsError, ValueError):
    """A URL that weights may not be fetched from (plain http to a non-loopback host, ftp ...)."""


class DownloadError(WeightsError, OSError):
    """A download failed: HTTP error, unreachable host, or a connection closed early."""


class ChecksumError(DownloadError):
    """A downloaded file's SHA-256 differs from the one it was published with."""


class NonFiniteWeightsError(WeightsError, ValueError):
    """Weights that hold NaN or Inf: a diverged model is not saved, and such a file not loaded."""


class NoGoodCheckpointError(WeightsError, ValueError):
    """No checkpoint of a run's OUTPUT_DIR can be loaded (each one's problem is named)."""


class MissingDependencyError(WeightsError, ImportError):
    """An optional package that a weights file or path needs is not installed."""


def missing_dependency(package: str, needed_for: str) -> MissingDependencyError:
    """The error for ``import package`` failing where ``needed_for`` needs it (both extras of
    ``pip install 'resnet_backbones[hub]'``)."""
    return MissingDependencyError(
        f"{needed_for} needs the {package} package, which is not installed; install it with "
        f"pip install 'resnet_backbones[hub]' (or pip install {package})"
    )
