"""Building a sweep's generator and reward from plain, picklable settings.

A sweep (or each Ray worker) builds its backends from a :class:`BackendSpec` — strings only, so
it can be hashed into the sweep's configuration and shipped to other machines:

* ``generator``: a spec for :func:`particlescale.backends.registry.make_generator`
  (``llamacpp`` = the embedded engine, ``openai:URL``, ...), with ``model`` and ``api_key``;
* ``reward``: a spec for :func:`particlescale.rewards.registry.make_reward` (default:
  :func:`particlescale.rewards.checks.default_reward` of the generator: ``arith*logprob``,
  or ``arith`` for a server generator, which reports no step log-probabilities);
* ``timeout``, ``retries``, ``template``, ``step_boundary``: options of an ``openai:URL``
  generator (the first two change no result and are not part of the configuration hash);
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
    timeout: float | None = None
    retries: int | None = None
    template: str | None = None
    step_boundary: str | None = None

    def describe(self) -> dict[str, Any]:
        """What goes into the configuration hash: never the API key, nor the timeout and
        retries (they change no result); the template and the step boundary only when set
        (so the hashes of sweeps from before they existed stay the same)."""
        d = asdict(self)
        for key in ("api_key", "timeout", "retries"):
            d.pop(key)
        for key in ("template", "step_boundary"):
            if d[key] is None:
                d.pop(key)
        return d

    def client_options(self) -> dict[str, Any]:
        """The generator's HTTP options (checked; see backends.registry.client_options)."""
        from particlescale.backends.registry import client_options

        return client_options(generator_spec(self.generator), timeout=self.timeout,
                              retries=self.retries, template=self.template,
                              step_boundary=self.step_boundary)


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

    return make_generator(generator_spec(spec.generator), model=spec.model, api_key=spec.api_key,
                          **spec.client_options())


def generator_spec(spec: str) -> str:
    """``llamacpp`` means ``llamacpp:`` (the model comes from ``--model``), as in ``solve``."""
    from particlescale.backends.registry import GENERATORS

    return f"{spec}:" if ":" not in spec and spec in GENERATORS else spec


def validate(spec: BackendSpec) -> None:
    """Check the generator prefix, its HTTP options and the reward (names, the files it
    names, whether it suits the generator) now, before any model is loaded."""
    from particlescale.backends.registry import FALLBACK, GENERATORS

    if not spec.generator.startswith(PLUGIN):
        prefix, sep, _ = generator_spec(spec.generator).partition(":")
        if not (sep and prefix in GENERATORS) and FALLBACK is None:
            raise ConfigError(f"generator: unknown spec {spec.generator!r}; use one of "
                              f"{', '.join(GENERATORS)} (e.g. llamacpp, openai:URL) or "
                              "py:MODULE:FACTORY")
    spec.client_options()
    if spec.reward is not None and not spec.reward.startswith(PLUGIN):
        from particlescale.rewards.checks import check_reward_spec

        check_reward_spec(spec.reward, generator_spec(spec.generator), flag="reward")


def build_reward(spec: BackendSpec, generator: Generator | None) -> RewardModel:
    from particlescale.rewards.checks import default_reward
    from particlescale.rewards.registry import make_reward

    name = spec.reward or default_reward(generator_spec(spec.generator))
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
