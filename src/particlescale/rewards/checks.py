"""Checks of a reward spec against the generators it will run with, made before any model
loads, and the default reward for those generators.

``check_reward_spec`` refuses, in milliseconds and with the fix in the message, what would
otherwise fail after a model load or in the middle of the first run: an unknown reward name,
a served reward without its URL, an argument to a reward that takes none, a ``value:PATH`` or
``judge:PATH.gguf`` file that is not there, a judge model that is not pulled, and ``logprob``
(``value``) with a generator that reports no step log-probabilities (hidden states).

``default_reward`` is :data:`~particlescale.rewards.registry.DEFAULT_REWARD`
(``arith*logprob``) when every generator reports step log-probabilities (the embedded
llama.cpp engine does) and ``arith`` otherwise (OpenAI-compatible servers are not asked for
them), so that the default always works.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from particlescale.errors import ConfigError

FALLBACK_REWARD = "arith"
"""The default reward for generators without step log-probabilities."""
_LOGPROBS = {"llamacpp": True, "openai": False}
_SERVED = ("vllm-prm", "math-shepherd")
"""Rewards that are a model on a server: ``PREFIX:URL``."""
_NO_ARG = ("arith", "logprob")


def reports_step_logprobs(generator_spec: str) -> bool | None:
    """Whether the generator of ``generator_spec`` fills ``Step.logprob`` (None: unknown, e.g.
    a ``py:`` plugin)."""
    prefix, _, _ = generator_spec.strip().partition(":")
    return _LOGPROBS.get(prefix)


def _specs(generator_specs: str | Sequence[str]) -> list[str]:
    return [generator_specs] if isinstance(generator_specs, str) else list(generator_specs)


def default_reward(generator_specs: str | Sequence[str]) -> str:
    """The default reward spec for a run over ``generator_specs`` (see the module docstring)."""
    from particlescale.rewards.registry import DEFAULT_REWARD

    if any(reports_step_logprobs(g) is False for g in _specs(generator_specs)):
        return FALLBACK_REWARD
    return DEFAULT_REWARD


def check_reward_spec(spec: str, generator_specs: str | Sequence[str] = (), *,
                      flag: str = "--reward") -> None:
    """Raise :class:`ConfigError` (naming ``flag``) for what can be known wrong about ``spec``
    without loading a model."""
    from particlescale.rewards.combine import parse_spec
    from particlescale.rewards.registry import REWARDS

    for _, name in parse_spec(spec):
        prefix, _, arg = (x.strip() for x in name.partition(":"))
        if prefix not in REWARDS:
            raise ConfigError(f"{flag}: unknown {prefix!r}; choose one of {', '.join(REWARDS)} "
                              "or combine them, e.g. 'judge+arith'")
        if prefix in _SERVED and not arg.startswith(("http://", "https://")):
            raise ConfigError(f"{flag}: {prefix!r} needs its server's URL, e.g. "
                              f"{prefix}:http://localhost:8001")
        if prefix in _NO_ARG and arg:
            raise ConfigError(f"{flag}: {prefix!r} takes no argument, got {prefix}:{arg}; "
                              f"write {prefix}")
        if prefix == "value":
            for g in _specs(generator_specs):
                kind = g.strip().partition(":")[0]
                if kind in _LOGPROBS and kind != "llamacpp":
                    raise ConfigError(f"{flag}: 'value' reads the embedded generator's hidden "
                                      f"states; generator {kind!r} has none: use the embedded "
                                      "llamacpp generator or another reward")
        if prefix == "value" and arg:
            path = Path(arg).expanduser()
            if not path.is_file():
                raise ConfigError(f"{flag}: value head {arg!r} does not exist; pass the .npz "
                                  "that `particlescale train-prm --out` wrote, or 'value' for "
                                  "the packaged head")
        if prefix == "judge" and arg and not arg.startswith(("http://", "https://", "hf:")):
            from particlescale import models

            models.resolve(arg)  # unknown name, not pulled, missing or corrupt file
        if prefix == "logprob":
            for g in _specs(generator_specs):
                if reports_step_logprobs(g) is False:
                    raise ConfigError(
                        f"{flag}: 'logprob' needs step log-probabilities, which generator "
                        f"{g.partition(':')[0]!r} does not report (OpenAI-compatible servers "
                        f"are not asked for them); set {flag} to {FALLBACK_REWARD!r} (or another "
                        "reward without 'logprob'), or use the embedded llamacpp generator")
