"""``particlescale serve``: the OpenAI-compatible scaling server (extra ``server``).

Settings come from ``--config FILE`` (TOML or YAML, see :mod:`particlescale.server.config`)
and flags, flags winning. API keys are best passed in ``PARTICLESCALE_API_KEYS``
(comma-separated): flags show in ``ps``.

``--generator``, ``--model`` and ``--reward`` mean what they mean in ``solve`` and ``eval``
(:mod:`particlescale.wiring`): ``--model NAME`` alone serves the embedded model NAME (flags win
over the file's generators); with ``-g openai:URL`` it is the upstream model's name, and it
applies to every ``-g``.

Start-up checks everything it can before a model loads: the settings, the reward against the
generators, the model files, and the address (a port in use or a host that cannot be bound is
one ``error:`` line and exit 2). Serving beyond the loopback interface without API keys prints
a warning.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import socket
import sys
from pathlib import Path
from typing import Any

import typer

from particlescale.cli.app import app
from particlescale.errors import ConfigError


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (uvicorn listens on it), or :class:`ConfigError`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except socket.gaierror as e:
        sock.close()
        raise ConfigError(f"--host: cannot bind {host!r} ({e.strerror}); give an address of "
                          "this machine, e.g. 127.0.0.1 or 0.0.0.0") from None
    except (OSError, OverflowError, UnicodeError) as e:
        sock.close()
        why = getattr(e, "strerror", None) or str(e)
        if isinstance(e, OSError) and e.errno == errno.EADDRINUSE:
            raise ConfigError(f"--port: {port} on {host} is in use ({why}); stop the other "
                              "server or choose another --port (0 = any free port)") from None
        raise ConfigError(f"--host/--port: cannot bind {host}:{port} ({why}); give an address "
                          "of this machine and a free port") from None
    sock.set_inheritable(True)
    return sock


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def with_client_options(generators: tuple[Any, ...], options: dict[str, Any]) -> list[Any]:
    """The generator settings with ``options`` (``--timeout``...) set on every server
    generator; a :class:`ConfigError` when none is a server (the one ``solve`` gives)."""
    from particlescale.backends.registry import HTTP_GENERATORS, check_client_options

    if not options:
        return list(generators)
    out = []
    for g in generators:
        if g.spec.partition(":")[0] in HTTP_GENERATORS:
            g = g.model_copy(update={"options": {**g.options, **options}})
        out.append(g)
    if out == list(generators):
        check_client_options(generators[0].spec, options)  # raises: names the flags, the fix
    return out


@app.command()
def serve(
    config: Path | None = typer.Option(None, "--config", "-c",
                                       help="TOML or YAML file with the server settings."),
    host: str | None = typer.Option(None, help="Interface to bind (default 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port (default 8000; 0 = any free port)."),
    generator: list[str] | None = typer.Option(
        None, "--generator", "-g",
        help="Generator spec, repeatable; the first is the default: llamacpp[:MODEL] "
             "(embedded; default llamacpp:qwen2.5-0.5b), openai:URL[,URL...] or "
             "py:MODULE:FACTORY."),
    model: str | None = typer.Option(
        None, help="The embedded model (known name, .gguf path, hf:REPO/FILE; default "
                   "qwen2.5-0.5b); with --generator openai:URL the served model's name."),
    reward: str | None = typer.Option(
        None, "--reward", "-r", help="Reward spec, e.g. arith (default arith*logprob; arith "
                                     "when a generator is a server)."),
    method: str | None = typer.Option(None, "--method", "-m",
                                      help="Method of requests that name none (default pf)."),
    budget: int | None = typer.Option(None, "--budget", "-b",
                                      help="Budget of requests that name none (default 8)."),
    max_budget: int | None = typer.Option(None, help="Largest budget a request may ask for."),
    max_concurrent: int | None = typer.Option(None, help="Runs in flight at once (more: 429)."),
    request_timeout: float | None = typer.Option(None, help="Seconds a run may take (504)."),
    max_body_bytes: int | None = typer.Option(None, help="Largest request body (413)."),
    timeout: float | None = typer.Option(
        None, help="openai: generators: seconds per upstream request (default 120); a "
                   "generation that times out is not sent again."),
    retries: int | None = typer.Option(
        None, help="openai: generators: extra attempts after a failed upstream request "
                   "(default 4)."),
    template: str | None = typer.Option(
        None, help="openai: generators: chat template of the served model (auto, server, hf, "
                   "qwen, llama3)."),
    step_boundary: str | None = typer.Option(
        None, "--step-boundary", help="openai: generators: how a step ends and the next "
                                      "resumes: auto, stop, stream, regenerate (docs/remote.md)."),
    api_key: list[str] | None = typer.Option(
        None, "--api-key", help="Accepted bearer key, repeatable (prefer the environment "
                                "variable PARTICLESCALE_API_KEYS)."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
) -> None:
    """Serve OpenAI-compatible chat completions that scale inference-time compute."""
    try:
        import uvicorn

        from particlescale.server import create_app, load_config
    except ImportError as e:
        raise ConfigError(f"serve: the server needs the 'server' extra ({e.name} is missing); "
                          "run: pip install 'particlescale[server]'") from None
    from particlescale.backends.registry import client_options

    generators = None
    if generator:
        generators = [{"spec": g, "model": model} for g in generator]
    elif model is not None:  # as in solve and eval: the embedded model
        generators = [{"spec": "llamacpp", "model": model}]
    cfg = load_config(
        config, host=host, port=port, generators=generators, reward=reward, method=method,
        budget=budget, max_budget=max_budget, max_concurrent=max_concurrent,
        request_timeout=request_timeout, max_body_bytes=max_body_bytes,
        api_keys=tuple(api_key) if api_key else None,
    )
    options = client_options("openai:", timeout=timeout, retries=retries, template=template,
                             step_boundary=step_boundary)
    cfg = cfg.model_copy(update={"generators": tuple(with_client_options(cfg.generators,
                                                                         options))})
    cfg.check()  # model files too, as solve and eval check them
    sock = bind(cfg.host, cfg.port)  # before any model loads
    try:
        if not cfg.keys() and not is_loopback(cfg.host):
            print(f"warning: serving on {cfg.host} without API keys: anyone who can reach this "
                  "machine can run generations on it; set PARTICLESCALE_API_KEYS (or "
                  "--api-key) or bind 127.0.0.1", file=sys.stderr)
        wired = cfg.wire()  # model errors surface here as one 'error:' line
        server = uvicorn.Server(uvicorn.Config(create_app(cfg, wired=wired),
                                               host=cfg.host, port=cfg.port,
                                               log_level=log_level,
                                               timeout_graceful_shutdown=5))
        sock.listen(2048)
        # uvicorn says where it listens only when it binds the socket itself.
        shown = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        logging.getLogger("uvicorn.error").info(
            "Uvicorn running on http://%s:%d (Press CTRL+C to quit)", shown,
            sock.getsockname()[1])
        # uvicorn re-raises the Ctrl-C it has already answered by shutting down gracefully.
        with contextlib.suppress(KeyboardInterrupt):
            server.run(sockets=[sock])
    finally:
        sock.close()
