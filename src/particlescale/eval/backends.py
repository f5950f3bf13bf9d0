"""Building a sweep's generator and reward from plain, picklable settings.

A sweep (or each Ray worker) builds its backends from a :class:`BackendSpec` — strings only, so
it can be hashed into the sweep's configuration and shipped to other machines:

* ``generator``: a spec for :func:`particlescale.backends.registry.make_generator`
  (``llamacpp`` = the embedded engine, ``openai:URL``, ...), with ``model`` and ``api_key``;
* ``reward``: a spec for :func:`particlescale.rewards.registry.make_reward` (default
  :data:`~particlescale.rewards.registry.DEFAULT_REWARD`);
* either may be a **plugin** ``py:MODULE:FACTORY`` or ``py:path/to/file.py:FACTORY``: the
  factory is imported and called (the generator factory with ``model=``, the reward factory with
  ``generator=``). This is how tests run the real CLI over scripted backends, and how users plug
  in their own models without touching particlescale.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from particlescale.errors import ConfigError
from particlescale.protocols import Generator, RewardModel

DEFAULT_GENERATOR = "llamacpp"
PLUGIN = "py:"


@dataclass(frozen=True)
class BackendSpec:
    generator: str = DEFAULT_GENERATOR
    model: str | None = None
    reward: str | None = None
    api_key: str | None = None

    def describe(self) -> dict[str, Any]:
        """What goes into the configuration hash (never the API key)."""
        d = asdict(self)
        d.pop("api_key")
        return d


def load_plugin(spec: str, what: str) -> Any:
    """The object named by ``py:MODULE:ATTR`` or ``py:FILE.py:ATTR``."""
    body = spec[len(PLUGIN):]
    target, sep, attr = body.rpartition(":")
    if not sep or not target or not attr:
        raise ConfigError(f"{what}: plugin spec {spec!r} must be py:MODULE:FACTORY or "
                          "py:path/to/file.py:FACTORY")
    try:
        if target.endswith(".py"):
            path = Path(target).expanduser().resolve()
            name = f"particlescale_plugin_{abs(hash(str(path)))}"
            module = sys.modules.get(name)
            if module is None:
                mspec = importlib.util.spec_from_file_location(name, path)
                if mspec is None or mspec.loader is None:
                    raise ImportError(f"cannot load {path}")
                module = importlib.util.module_from_spec(mspec)
                sys.modules[name] = module
                mspec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except (ImportError, OSError) as e:
        raise ConfigError(f"{what}: cannot import plugin {target!r} ({e})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{what}: plugin {target!r} has no {attr!r}") from None


def build_generator(spec: BackendSpec) -> Generator:
    if spec.generator.startswith(PLUGIN):
        return load_plugin(spec.generator, "generator")(model=spec.model)
    from particlescale.backends.registry import make_generator

    return make_generator(generator_spec(spec.generator), model=spec.model, api_key=spec.api_key)


def generator_spec(spec: str) -> str:
    """``llamacpp`` means ``llamacpp:`` (the model comes from ``--model``), as in ``solve``."""
    from particlescale.backends.registry import GENERATORS

    return f"{spec}:" if ":" not in spec and spec in GENERATORS else spec


def validate(spec: BackendSpec) -> None:
    """Check the generator prefix and every reward name now, before any model is loaded."""
    from particlescale.backends.registry import FALLBACK, GENERATORS

    if not spec.generator.startswith(PLUGIN):
        prefix, sep, _ = generator_spec(spec.generator).partition(":")
        if not (sep and prefix in GENERATORS) and FALLBACK is None:
            raise ConfigError(f"generator: unknown spec {spec.generator!r}; use one of "
                              f"{', '.join(GENERATORS)} (e.g. llamacpp, openai:URL) or "
                              "py:MODULE:FACTORY")
    if spec.reward is not None and not spec.reward.startswith(PLUGIN):
        from particlescale.rewards.combine import parse_spec
        from particlescale.rewards.registry import REWARDS

        for _, name in parse_spec(spec.reward):
            prefix = name.partition(":")[0].strip()
            if prefix not in REWARDS:
                raise ConfigError(f"reward: unknown {prefix!r}; choose one of "
                                  f"{', '.join(REWARDS)} or combine them, e.g. 'judge+arith'")


def build_reward(spec: BackendSpec, generator: Generator | None) -> RewardModel:
    from particlescale.rewards.registry import DEFAULT_REWARD, make_reward

    name = spec.reward or DEFAULT_REWARD
    if name.startswith(PLUGIN):
        return load_plugin(name, "reward")(generator=generator)
    return make_reward(name, generator)


def build_backends(spec: BackendSpec) -> tuple[Generator, RewardModel]:
    generator = build_generator(spec)
    try:
        reward = build_reward(spec, generator)
    except BaseException:
        close_sync(generator)
        raise
    return generator, reward


async def aclose_backends(*objs: Any) -> None:
    """Close whatever the backends offer (``aclose`` or ``close``), reward before generator."""
    for obj in objs:
        fn = getattr(obj, "aclose", None) or getattr(obj, "close", None)
        if fn is None:
            continue
        out = fn()
        if inspect.isawaitable(out):
            await out


def close_sync(obj: Any) -> None:
    fn = getattr(obj, "close", None)
    if fn is not None and not inspect.iscoroutinefunction(fn):
        fn()
