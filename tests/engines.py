"""Real llama.cpp engines for tests: skipped, with the command that fixes it, when the
binding or the model is missing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


def need(model: str) -> None:
    pytest.importorskip("llama_cpp")
    from particlescale.models import is_pulled

    if not is_pulled(model):
        pytest.skip(f"run: particlescale models pull {model}")


def engine_for(model: str, **kwargs: Any) -> Iterator[Any]:
    """``yield from`` this in a fixture: a LlamaEngine, closed afterwards."""
    need(model)
    from particlescale.backends.llamacpp import LlamaEngine

    eng = LlamaEngine(model, **kwargs)
    try:
        yield eng
    finally:
        eng.close()
