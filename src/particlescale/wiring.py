"""Wiring: spec strings become a checked generator and reward that are closed together.

Every face builds its models here: ``particlescale solve``, ``particlescale eval`` (and each
Ray worker) and ``particlescale serve``. A spec therefore means the same thing, is checked the
same way and fails with the same one-line error on every face::

    setup = Setup(generator="llamacpp", model="smollm2-135m", reward="arith")
    setup.check()                   # milliseconds: kinds, URLs, options, model files, reward
    with setup.wire() as wired:     # loads the model; closes the reward, then the generator
        result = solve(question, generator=wired.generator, reward=wired.reward)

Generator specs (``--generator`` / ``-g``)::

    llamacpp                 the embedded llama.cpp engine running --model (default qwen2.5-0.5b)
    llamacpp:MODEL           ... running MODEL (a known name, a .gguf path, hf:OWNER/REPO/FILE)
    openai:URL[,URL...]      OpenAI-compatible server(s) (vLLM, SGLang, llama.cpp server, ...)
    py:MODULE:FACTORY        a plugin: FACTORY(model=...) returns a Generator
    py:path/to/file.py:FACTORY

``--model`` means the same on every face: with the embedded generator it is the model it runs
(``--model smollm2-135m`` = ``-g llamacpp:smollm2-135m``; naming two different models is an
error); with a server (``openai:URL``) it is the upstream model's name; a plugin receives it.

Reward specs are those of :mod:`particlescale.rewards.registry` (``arith``, ``judge+arith``,
``vllm-prm:URL``, ...) or a plugin ``py:MODULE:FACTORY`` (called with ``generator=``). The
default is ``arith*logprob``, or ``arith`` when a generator is a server (servers report no step
log-probabilities). Errors name the flag, what it accepts and the fix; a URL quoted in one has
its user info and query values masked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from particlescale.errors import ConfigError
from particlescale.models import DEFAULT_MODEL
from particlescale.protocols import Generator, RewardModel

DEFAULT_GENERATOR_SPEC = f"llamacpp:{DEFAULT_MODEL}"
"""The generator every face runs when none is named: the embedded engine, default model."""
PLUGIN = "py:"
GENERATOR_KINDS = "llamacpp[:MODEL], openai:URL[,URL...] or py:MODULE:FACTORY"


def redact(text: str) -> str:
    """``text`` with the user info and query values of every URL in it masked."""
    from particlescale.backends.http import redact_url

    return redact_url(text)


@contextlib.contextmanager
def _masked() -> Iterator[None]:
    """Re-raise a :class:`ConfigError` with the credentials of the URLs it quotes masked."""
    try:
        yield
    except ConfigError as e:
        text = redact(str(e))
        if text == str(e):
            raise
        raise ConfigError(text) from None


# ---------------------------------------------------------------------------------------------
# Checks (no model is loaded)


def resolve_generator(spec: str, model: str | None = None) -> tuple[str, str | None]:
    """``(full spec, model for its builder)`` after the ``--model`` rule (module docstring):
    ``("llamacpp", "smollm2-135m")`` -> ``("llamacpp:smollm2-135m", None)``;
    ``("openai:URL", "Qwen/X")`` -> ``("openai:URL", "Qwen/X")``. Raises :class:`ConfigError`
    for an unknown kind, a missing or malformed URL and two different models."""
    from particlescale.backends.registry import FALLBACK, GENERATORS

    s = spec.strip() if isinstance(spec, str) else ""
    if not s:
        raise ConfigError(f"--generator: empty; give {GENERATOR_KINDS}")
    if model is not None and not model.strip():
        raise ConfigError("--model: empty; give a model name (or leave --model out)")
    if s.startswith(PLUGIN):
        return s, model
    kind, sep, arg = (x.strip() for x in s.partition(":"))
    if kind == "llamacpp":
        if arg and model and arg != model:
            raise ConfigError(
                f"--model {model} and --generator llamacpp:{arg} name two different models; "
                f"name it once: --model {model} (with --generator llamacpp) or --generator "
                f"llamacpp:{arg} without --model")
        return f"llamacpp:{arg or model or DEFAULT_MODEL}", None
    if kind == "openai":
        urls = [u.strip() for u in arg.split(",")]
        if not arg or not all(urls):
            raise ConfigError("--generator: 'openai' needs the server's URL, e.g. "
                              "openai:http://localhost:8000/v1 (replicas: openai:URL,URL)")
        for url in urls:
            _check_url(url, "--generator")
        return f"openai:{','.join(urls)}", model
    if (sep and kind in GENERATORS) or FALLBACK is not None:  # registered by another package
        return s, model
    hint = f" (a URL? write openai:{redact(s)})" if kind in ("http", "https") else ""
    raise ConfigError(f"--generator: unknown kind {kind!r}{hint}; give {GENERATOR_KINDS}")


def _check_url(url: str, flag: str) -> None:
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"{flag}: {redact(url)!r} is not an http(s) URL; give e.g. "
                          "http://localhost:8000/v1")


def check_generator(spec: str, model: str | None = None,
                    options: Mapping[str, Any] | None = None, *,
                    files: bool = True) -> tuple[str, str | None]:
    """:func:`resolve_generator`, then its HTTP options (``timeout``, ``retries``,
    ``template``: only for servers) and (``files``) the embedded model's file (known, pulled,
    intact)."""
    full, model = resolve_generator(spec, model)
    if options:
        from particlescale.backends.registry import check_client_options

        check_client_options(full, options)
    if files and full.startswith("llamacpp:"):
        name = full.partition(":")[2]
        if not name.startswith("hf:"):  # hf: downloads: left to the build
            from particlescale import models

            models.resolve(name)  # unknown name, not pulled, missing or corrupt file
    return full, model


def check_reward(spec: str | None, generators: str | Sequence[str] = (), *,
                 answer_key: bool = True) -> str:
    """The reward spec to build (``spec``, or the default for ``generators``, which are full
    generator specs), checked without loading a model. ``answer_key=False`` (solve, serve:
    questions without worked solutions) refuses ``reference``."""
    from particlescale.rewards.checks import check_reward_spec, default_reward
    from particlescale.rewards.combine import parse_spec
    from particlescale.rewards.registry import make_one

    if spec is None:
        return default_reward(generators)
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("--reward: empty; give e.g. arith, arith*logprob or judge+arith")
    spec = spec.strip()
    if spec.startswith(PLUGIN):
        return spec
    with _masked():
        check_reward_spec(spec, generators, flag="--reward")
        parsed = parse_spec(spec)
    for _, name in parsed:
        if name.partition(":")[0].strip() == "reference":
            make_one(name)  # its options (noise >= 0, ...) first
            if not answer_key:
                raise ConfigError(
                    "--reward: 'reference' reads the answer key (a problem's worked solution), "
                    "which a question to solve or serve has none of; it is an instrument for "
                    "datasets that carry one: particlescale eval -d gsm8k --reward reference")
    return spec


WEAK_REWARDS = ("arith", "logprob", "value", "judge")
"""Built-in rewards that run on this machine, all measured to rank one problem's partial
solutions near chance (BENCHMARKS ``value-steps``; a served ``judge:URL`` is not one of them)."""
DEFAULT_METHOD_WEAK = "weighted-best-of-n"
DEFAULT_METHOD = "pf"


def default_method(reward_spec: str) -> tuple[str, str]:
    """The method ``solve`` runs when none is named, and why (issue 20, item 4).

    With a reward made only of :data:`WEAK_REWARDS`, particle filtering answered fewer GSM8K
    problems than majority voting at the same budget (resampling on scores that cannot rank
    partial solutions spends the population's diversity), while weighted majority voting with
    the same reward answered at least as many at every budget measured (BENCHMARKS
    ``reference-study`` tier C and ``value``): that is the default there. With any other reward
    (a served PRM, a plugin) the default is the paper's ``pf``."""
    from particlescale.rewards.combine import parse_spec

    names = [] if reward_spec.startswith(PLUGIN) else [n for _, n in parse_spec(reward_spec)]

    def weak(name: str) -> bool:
        prefix, _, arg = (x.strip() for x in name.partition(":"))
        return prefix in WEAK_REWARDS and not arg.startswith(("http://", "https://"))

    if names and all(weak(n) for n in names):
        return DEFAULT_METHOD_WEAK, (
            f"the reward {redact(reward_spec)} ranks partial solutions near chance, and pf "
            "with it answered fewer problems than majority voting (BENCHMARKS reference-study)")
    return DEFAULT_METHOD, (f"the reward {redact(reward_spec)} is not one of the CPU rewards "
                            "measured weak, so the paper's particle filtering")


# ---------------------------------------------------------------------------------------------
# Building


def load_plugin(spec: str, what: str) -> Any:
    """The object named by ``py:MODULE:ATTR`` or ``py:path/to/file.py:ATTR``."""
    body = spec[len(PLUGIN):]
    target, sep, attr = body.rpartition(":")
    if not sep or not target or not attr:
        raise ConfigError(f"--{what}: plugin spec {spec!r} must be py:MODULE:FACTORY or "
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
        raise ConfigError(f"--{what}: cannot import plugin {target!r} ({e})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"--{what}: plugin {target!r} has no {attr!r}") from None


def make_generator(spec: str, model: str | None = None, *, api_key: str | None = None,
                   features: bool = False, **options: Any) -> Generator:
    """A generator from ``spec`` (and ``--model``); ``features`` records the embedded engine's
    hidden states (the ``value`` reward reads them); ``options`` go to its builder."""
    full, model = resolve_generator(spec, model)
    if full.startswith(PLUGIN):
        return load_plugin(full, "generator")(model=model)
    from particlescale.backends import registry

    if features and full.startswith("llamacpp:"):
        options = {"embeddings": True, **options}
    with _masked():
        return registry.make_generator(full, model=model, api_key=api_key, **options)


def make_reward(spec: str, generator: Generator | None = None) -> RewardModel:
    """A reward from ``spec`` (a registry spec or a ``py:`` plugin) for ``generator``."""
    if spec.startswith(PLUGIN):
        return load_plugin(spec, "reward")(generator=generator)
    from particlescale.rewards.registry import make_reward as make

    with _masked():
        return make(spec, generator)


def reads_features(reward_spec: str) -> bool:
    """Whether the reward reads the generator's hidden states (``value``)."""
    from particlescale.rewards.combine import parse_spec

    if reward_spec.startswith(PLUGIN):
        return False
    return any(n.partition(":")[0].strip() == "value" for _, n in parse_spec(reward_spec))


async def aclose_all(objs: Iterable[Any]) -> None:
    """Close each object once, in order: ``aclose()`` (connections, sessions), then
    ``close()`` (an owned engine); either may be absent, sync or async."""
    seen: set[int] = set()
    for obj in objs:
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        for name in ("aclose", "close"):
            fn = getattr(obj, name, None)
            if callable(fn):
                out = fn()
                if inspect.isawaitable(out):
                    await out


def close_all(objs: Iterable[Any]) -> None:
    """:func:`aclose_all` from synchronous code. Inside a running event loop only the
    synchronous ``close()`` methods run (there, ``await aclose_all(...)`` instead)."""
    import asyncio

    objs = list(objs)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(aclose_all(objs))
        return
    seen: set[int] = set()
    for obj in objs:
        fn = getattr(obj, "close", None)
        if obj is not None and id(obj) not in seen and callable(fn) \
                and not inspect.iscoroutinefunction(fn):
            seen.add(id(obj))
            fn()


class Wired:
    """Generators (by id; the first is the default) and one reward, used and closed together.

    ``owned``: closed by :meth:`aclose` / ``with`` (True when :func:`wire` built them; objects
    a caller builds and hands in stay the caller's to close). Closing twice is a no-op.
    """

    def __init__(self, generators: Mapping[str, Generator] | Generator, reward: RewardModel,
                 specs: Mapping[str, str] | None = None, *, owned: bool = False) -> None:
        if not isinstance(generators, Mapping):
            generators = {getattr(generators, "name", "generator"): generators}
        if not generators:
            raise ConfigError("generators: none given; give at least one")
        self.generators: dict[str, Generator] = dict(generators)
        self.reward = reward
        self.specs: dict[str, str] = dict(specs or {})
        """Spec per part (``generator:<id>``, ``reward``), for readiness probes."""
        self.owned = owned
        self.closed = False

    @property
    def generator(self) -> Generator:
        return next(iter(self.generators.values()))

    async def aclose(self) -> None:
        if self.owned and not self.closed:
            self.closed = True
            await aclose_all([self.reward, *self.generators.values()])

    def close(self) -> None:
        if self.owned and not self.closed:
            self.closed = True
            close_all([self.reward, *self.generators.values()])

    async def __aenter__(self) -> Wired:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __enter__(self) -> Wired:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class GeneratorSetting:
    """One generator to build: spec, ``--model``, key and builder options, plus the id
    clients route by (the server's; default: the model, else the spec's argument)."""

    spec: str = "llamacpp"
    model: str | None = None
    api_key: str | None = dataclasses.field(default=None, repr=False)
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    id: str | None = None


def check(generators: Sequence[GeneratorSetting], reward: str | None, *,
          answer_key: bool = True, files: bool = True) -> tuple[list[str], str]:
    """Check every generator and the reward; return the full generator specs and the reward
    spec to build. Spellings come first, then files (``files=False``: not the embedded
    model's), so that a typo is named before a missing download."""
    full = [check_generator(g.spec, g.model, g.options, files=False)[0] for g in generators]
    reward_spec = check_reward(reward, full, answer_key=answer_key)
    if files:
        for spec in full:
            check_generator(spec)
    return full, reward_spec


def wire(generators: Sequence[GeneratorSetting], reward: str | None, *,
         answer_key: bool = True) -> Wired:
    """Check, then build every generator and the reward (may load models: seconds). What was
    built is closed again when a later part fails. Ids default to the setting's ``id``, else
    its position (``"0"``, ``"1"``...)."""
    full, reward_spec = check(generators, reward, answer_key=answer_key)
    features = reads_features(reward_spec)
    built: dict[str, Generator] = {}
    specs: dict[str, str] = {}
    try:
        for i, (g, spec) in enumerate(zip(generators, full, strict=True)):
            key = g.id or str(i)
            built[key] = make_generator(spec, g.model, api_key=g.api_key, features=features,
                                        **g.options)
            specs[f"generator:{key}"] = spec
        rew = make_reward(reward_spec, next(iter(built.values()), None))
    except BaseException:
        close_all(built.values())
        raise
    specs["reward"] = reward_spec
    return Wired(built, rew, specs, owned=True)


@dataclass(frozen=True)
class Setup:
    """One generator and a reward as plain strings: picklable (Ray workers build from it) and
    hashed into a sweep's configuration (:meth:`describe`).

    ``timeout``, ``retries``, ``template``, ``step_boundary`` are options of a server
    generator (``openai:URL``).
    """

    generator: str = "llamacpp"
    model: str | None = None
    reward: str | None = None
    api_key: str | None = dataclasses.field(default=None, repr=False)
    timeout: float | None = None
    retries: int | None = None
    template: str | None = None
    step_boundary: str | None = None

    def options(self) -> dict[str, Any]:
        out = {k: v for k in ("timeout", "retries", "template")
               if (v := getattr(self, k)) is not None}
        if self.step_boundary is not None:
            out["boundary"] = self.step_boundary
        return out

    def setting(self) -> GeneratorSetting:
        return GeneratorSetting(self.generator, self.model, self.api_key, self.options())

    def check(self, *, answer_key: bool = True) -> str:
        """Check everything without loading a model; return the reward spec to build."""
        return check([self.setting()], self.reward, answer_key=answer_key)[1]

    def wire(self, *, answer_key: bool = True) -> Wired:
        return wire([self.setting()], self.reward, answer_key=answer_key)

    def describe(self) -> dict[str, Any]:
        """What a sweep's configuration hash holds: never the API key, nor the timeout and
        retries (they change no result); the template and the step boundary only when set (so
        the hashes of sweeps from before they existed stay the same); URL credentials masked."""
        d = dataclasses.asdict(self)
        for key in ("api_key", "timeout", "retries"):
            d.pop(key)
        for key in ("template", "step_boundary"):
            if d[key] is None:
                d.pop(key)
        for key in ("generator", "reward"):
            if d[key] is not None:
                d[key] = redact(d[key])
        return d
