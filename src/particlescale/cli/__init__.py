"""Command-line interface: ``particlescale <command>``.

Each command lives in its own module and registers itself on :data:`app`. User errors
(:class:`~particlescale.errors.ParticlescaleError`) are printed as one line and exit with
status 2; Ctrl-C exits with 130 after the commands' own cleanup.
"""

from __future__ import annotations

import sys

from particlescale.cli.app import app
from particlescale.errors import ParticlescaleError

# Command modules (each registers its commands on `app` when imported).
from particlescale.cli import methods as _methods  # noqa: F401, E402

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
    except ParticlescaleError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
