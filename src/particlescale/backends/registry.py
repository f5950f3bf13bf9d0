"""Building a generator from a spec string (``--generator`` on the CLI, the server's config).

A spec is ``PREFIX:ARGUMENT``. Each backend registers a builder for its prefix in
:data:`GENERATORS`; a builder gets the argument and the keyword options (``model``,
``api_key``, ...)::

    openai:http://host:8000/v1[,http://host2:8000/v1]   OpenAI-compatible server(s)

Another backend adds itself with one line: ``GENERATORS["llamacpp"] = build_llamacpp``.
``FALLBACK``, when set, builds specs without a registered prefix (e.g. a bare model name).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any

from particlescale.errors import ConfigError
from particlescale.protocols import Generator

Builder = Callable[..., Generator]


def api_key_from_env(api_key: str | None) -> str | None:
    """``api_key`` if given, else ``PARTICLESCALE_API_KEY``, else ``OPENAI_API_KEY``."""
    return api_key or os.environ.get("PARTICLESCALE_API_KEY") or os.environ.get("OPENAI_API_KEY")


def build_openai(arg: str, *, model: str | None = None, api_key: str | None = None,
                 **kw: Any) -> Generator:
    from particlescale.backends.openai import OpenAIGenerator

    urls = [u.strip() for u in arg.split(",") if u.strip()]
    if not urls:
        raise ConfigError("generator: 'openai:' needs a server URL, e.g. "
                          "openai:http://localhost:8000/v1")
    return OpenAIGenerator(urls, model, api_key=api_key_from_env(api_key), **kw)


def build_llamacpp(arg: str, *, model: str | None = None, api_key: str | None = None,
                   **kw: Any) -> Generator:
    """``llamacpp:MODEL`` (or ``llamacpp:`` with ``model=``): the embedded batched engine."""
    from particlescale.backends.llamacpp import LlamaCppGenerator
    from particlescale.models import DEFAULT_MODEL

    return LlamaCppGenerator(arg or model or DEFAULT_MODEL, **kw)


GENERATORS: dict[str, Builder] = {"openai": build_openai, "llamacpp": build_llamacpp}
HTTP_GENERATORS = ("openai",)
"""Prefixes whose generators talk HTTP (and take ``timeout``, ``retries``, ``template``)."""


FLAGS = {"timeout": "--timeout", "retries": "--retries", "template": "--template",
         "boundary": "--step-boundary"}


def client_options(spec: str, *, timeout: float | None = None, retries: int | None = None,
                   template: str | None = None,
                   step_boundary: str | None = None) -> dict[str, Any]:
    """The keyword options the CLI flags ``--timeout``, ``--retries``, ``--template`` and
    ``--step-boundary`` give the generator of ``spec`` (only those given), checked: a flag the
    generator cannot use is a :class:`ConfigError` naming it, not an ignored setting."""
    given: dict[str, Any] = {k: v for k, v in (("timeout", timeout), ("retries", retries),
                                                ("template", template),
                                                ("boundary", step_boundary)) if v is not None}
    if not given:
        return {}
    prefix = spec.strip().partition(":")[0]
    if prefix not in HTTP_GENERATORS:
        flags = ", ".join(FLAGS[k] for k in given)
        raise ConfigError(f"{flags}: only for generators on a server (openai:URL); generator "
                          f"{prefix!r} sends no requests")
    if timeout is not None and not 0 < timeout < math.inf:  # also refuses NaN
        raise ConfigError(f"--timeout: must be a number of seconds > 0, got {timeout}")
    if retries is not None and retries < 0:
        raise ConfigError(f"--retries: must be >= 0, got {retries}")
    if template is not None:
        from particlescale.backends.openai import templates

        names = ("auto", "server", "hf", *templates.BUILTIN)
        if template not in names:
            raise ConfigError(f"--template: unknown {template!r}; choose one of "
                              f"{', '.join(names)}")
    if step_boundary is not None:
        from particlescale.backends.openai.boundary import BOUNDARIES

        if step_boundary not in BOUNDARIES:
            raise ConfigError(f"--step-boundary: unknown {step_boundary!r}; choose one of "
                              f"{', '.join(BOUNDARIES)}")
    return given


def check_client_options(spec: str, options: Mapping[str, Any]) -> None:
    """:func:`client_options` for options already in the generator's keywords (``boundary``
    is the flag ``--step-boundary``); other keys are not client options and are ignored."""
    client_options(spec, **{("step_boundary" if k == "boundary" else k): v
                            for k, v in options.items() if k in FLAGS})


FALLBACK: Builder | None = None


def make_generator(spec: str, *, model: str | None = None, api_key: str | None = None,
                   **kw: Any) -> Generator:
    """A generator from ``spec``; unknown prefixes raise :class:`ConfigError` listing the known."""
    prefix, sep, arg = spec.partition(":")
    if sep and prefix in GENERATORS:
        return GENERATORS[prefix](arg, model=model, api_key=api_key, **kw)
    if FALLBACK is not None:
        return FALLBACK(spec, model=model, api_key=api_key, **kw)
    raise ConfigError(f"generator: unknown spec {spec!r}; use one of "
                      f"{', '.join(p + ':...' for p in GENERATORS)}")
