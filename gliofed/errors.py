"""Exceptions raised for bad user input.

Every message is one sentence naming the subject or file and the problem; the CLI prints it without a
traceback and exits non-zero.
"""

from __future__ import annotations

__all__ = ["GliofedError", "ManifestError", "DataError", "CacheError", "CacheDamagedError", "CacheLockedError",
           "ConfigError", "PolicyError", "CheckpointError", "PayloadError", "FederationError", "RunLockedError",
           "TrainingError", "WriteError", "first_line"]


class GliofedError(Exception):
    """Base class of every error gliofed raises for bad input or configuration."""


class ManifestError(GliofedError):
    """A manifest file is missing, malformed or holds invalid values."""


class DataError(GliofedError):
    """An image or segmentation file is missing, unreadable or inconsistent."""


class CacheError(GliofedError):
    """The preprocessed case cache is missing, stale or inconsistent."""


class CacheDamagedError(CacheError):
    """A cached case's file is missing, truncated or altered (size or checksum differs from the index)."""


class CacheLockedError(CacheError):
    """Another live ``preprocess`` holds the cache's lock."""


class ConfigError(GliofedError):
    """A configuration value is invalid."""


class PolicyError(GliofedError):
    """A site refuses a server's request, or a reply it would send, under its operator's
    :class:`~gliofed.federated.site.policy.SitePolicy`. Lives here (not in ``federated/site``) so that the server can
    name a refusal without any import path to a site's cases."""


class CheckpointError(GliofedError):
    """A checkpoint or resume state is missing, unsafe to load (a pickle), damaged or does not fit the data."""


class PayloadError(GliofedError):
    """A payload holds undeclared fields, non-finite or out-of-range values, or exceeds its size limit."""


class FederationError(GliofedError):
    """A federated round could not proceed (too few sites answered, or a participant the strategy needs failed)."""


class RunLockedError(ConfigError):
    """Another live ``gliofed train`` is writing the same run folder."""


class TrainingError(GliofedError):
    """Training cannot go on: the loss of a batch is NaN or infinite (the message names the batch's subjects)."""


class WriteError(GliofedError):
    """A file could not be written because the disk (or the user's quota) is full; the earlier file is unchanged."""


def first_line(error: BaseException, limit: int = 200) -> str:
    """``"<ExceptionType>: <first non-blank line of its message>"`` (at most ``limit`` characters of the message), or
    the bare type name when the message is empty (``MemoryError()``): the cause inside a one-sentence error."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    name = type(error).__name__
    return f"{name}: {lines[0][:limit]}" if lines else name
