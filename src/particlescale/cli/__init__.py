"""Command-line interface: ``particlescale <command>``.

Each command lives in its own module and registers itself on :data:`app`. User errors
(:class:`~particlescale.errors.ParticlescaleError`) are printed as one line and exit with
status 2; Ctrl-C exits with 130 after the commands' own cleanup.
"""

from __future__ import annotations

import sys

# Command modules (each registers its commands on `app` when imported).
from particlescale.cli import eval as _eval  # noqa: F401
from particlescale.cli import methods as _methods  # noqa: F401
from particlescale.cli import models as _models  # noqa: F401
from particlescale.cli import report as _report  # noqa: F401
from particlescale.cli import serve as _serve  # noqa: F401
from particlescale.cli import solve as _solve  # noqa: F401
from particlescale.cli import train_prm as _train_prm  # noqa: F401
from particlescale.cli import view as _view  # noqa: F401
from particlescale.cli.app import app
from particlescale.errors import ParticlescaleError

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
