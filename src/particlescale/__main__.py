"""``python -m particlescale``: the command-line interface (the same as ``particlescale``)."""

from particlescale.cli import main

if __name__ == "__main__":
    main()
