"""``particlescale serve``: the OpenAI-compatible scaling server (extra ``server``).

Settings come from ``--config FILE`` (TOML or YAML, see :mod:`particlescale.server.config`)
and flags, flags winning. API keys are best passed in ``PARTICLESCALE_API_KEYS``
(comma-separated): flags show in ``ps``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from particlescale.cli.app import app
from particlescale.errors import ConfigError


@app.command()
def serve(
    config: Path | None = typer.Option(None, "--config", "-c",
                                       help="TOML or YAML file with the server settings."),
    host: str | None = typer.Option(None, help="Interface to bind (default 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port (default 8000; 0 = any free port)."),
    generator: list[str] | None = typer.Option(
        None, "--generator", "-g",
        help="Generator spec, repeatable; the first is the default (default: embedded "
             "llamacpp:qwen2.5-0.5b). E.g. openai:http://host:8000/v1"),
    model: str | None = typer.Option(None, help="Upstream model name for openai: generators."),
    reward: str | None = typer.Option(None, "--reward", "-r", help="Reward spec, e.g. arith."),
    method: str | None = typer.Option(None, "--method", "-m",
                                      help="Method of requests that name none (default pf)."),
    budget: int | None = typer.Option(None, "--budget", "-b",
                                      help="Budget of requests that name none (default 8)."),
    max_budget: int | None = typer.Option(None, help="Largest budget a request may ask for."),
    max_concurrent: int | None = typer.Option(None, help="Runs in flight at once (more: 429)."),
    request_timeout: float | None = typer.Option(None, help="Seconds a run may take (504)."),
    max_body_bytes: int | None = typer.Option(None, help="Largest request body (413)."),
    api_key: list[str] | None = typer.Option(
        None, "--api-key", help="Accepted bearer key, repeatable (prefer the environment "
                                "variable PARTICLESCALE_API_KEYS)."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
) -> None:
    """Serve OpenAI-compatible chat completions that scale inference-time compute."""
    try:
        import uvicorn

        from particlescale.server import create_app, load_config
        from particlescale.server.backends import build_backends
    except ImportError as e:
        raise ConfigError(f"serve: the server needs the 'server' extra ({e.name} is missing); "
                          "run: pip install 'particlescale[server]'") from None
    generators = None
    if generator:
        generators = [{"spec": g, "model": model} for g in generator]
    elif model is not None:
        raise ConfigError("--model: give it with --generator openai:URL (the upstream model)")
    cfg = load_config(
        config, host=host, port=port, generators=generators, reward=reward, method=method,
        budget=budget, max_budget=max_budget, max_concurrent=max_concurrent,
        request_timeout=request_timeout, max_body_bytes=max_body_bytes,
        api_keys=tuple(api_key) if api_key else None,
    )
    backends = build_backends(cfg)  # model errors surface here as one 'error:' line
    uvicorn.run(create_app(cfg, backends=backends), host=cfg.host, port=cfg.port,
                log_level=log_level, timeout_graceful_shutdown=5)
