"""User-facing errors. Each message names the field or thing at fault and the fix; the CLI
prints them as one line (no traceback) and exits non-zero, the server maps them to 4xx/5xx."""

from __future__ import annotations


class ParticlescaleError(Exception):
    """Base of every error meant for the user."""


class ConfigError(ParticlescaleError, ValueError):
    """A bad option, argument or input value."""


class ModelError(ParticlescaleError):
    """A model cannot be found, fetched, verified or loaded."""


class BackendError(ParticlescaleError):
    """A generator or reward backend failed (server down, timeout, bad response).

    ``kind`` is one of ``connect``, ``timeout``, ``http``, ``protocol``; ``status`` is the
    upstream HTTP status when there was one.
    """

    def __init__(self, message: str, *, kind: str = "http", status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status


class DatasetError(ParticlescaleError, ValueError):
    """A dataset cannot be read or mapped."""
