"""``make_reward(spec)``: a reward model from a short spec string.

A spec is one reward or a weighted product of rewards (see :mod:`particlescale.rewards.combine`)::

    arith                      model-free arithmetic check
    logprob                    the generator's own mean token log-probability
    judge                      yes/no step judge on the embedded engine (qwen2.5-1.5b if pulled,
                               else the generator's model)
    judge:MODEL                ... with MODEL (a known name, a .gguf path or hf:REPO/FILE)
    judge:URL                  ... a chat model on an OpenAI-compatible server (P(yes))
    value                      learned value head on the embedded generator's hidden states
    value:PATH                 ... a head trained with `particlescale train-prm`
    vllm-prm:URL               Qwen2.5-Math-PRM served by vLLM /pooling
    math-shepherd:URL          Math-Shepherd PRM served by vLLM STEP pooling
    reference                  answer-key PRM from the problem's worked solution (an instrument
                               for studying algorithms: it uses the answer key)
    reference:noise=S          ... with Gaussian noise of scale S in logit space (,seed=N)
    judge+arith, 0.5*arith+judge, arith*logprob     products of experts

Each name is ``PREFIX`` or ``PREFIX:ARG``; :data:`REWARDS` maps a prefix to a builder
``(arg, generator) -> RewardModel``. Builders import their backend lazily, so naming ``arith``
never loads llama.cpp.
"""

from __future__ import annotations

from collections.abc import Callable

from particlescale.errors import ConfigError
from particlescale.protocols import Generator, RewardModel
from particlescale.rewards.combine import Combined, parse_spec

DEFAULT_REWARD = "arith*logprob"
"""The default of ``solve`` and ``make demo``, chosen by measurement (BENCHMARKS.md,
``bench:rewards``): the best AUC and best-of-8 accuracy among the cheap rewards on GSM8K."""

Builder = Callable[[str | None, Generator | None], RewardModel]


def _arith(arg: str | None, generator: Generator | None) -> RewardModel:
    from particlescale.rewards.arith import ArithReward

    _no_arg("arith", arg)
    return ArithReward()


def _logprob(arg: str | None, generator: Generator | None) -> RewardModel:
    from particlescale.rewards.logprob import LogprobReward

    _no_arg("logprob", arg)
    return LogprobReward()


def _judge(arg: str | None, generator: Generator | None) -> RewardModel:
    if arg and arg.startswith(("http://", "https://")):
        from particlescale.backends.registry import api_key_from_env
        from particlescale.rewards.remote_judge import RemoteJudge

        return RemoteJudge(arg, api_key=api_key_from_env(None))
    from particlescale.rewards.judge import make_local_judge

    return make_local_judge(arg, generator)


def _reference(arg: str | None, generator: Generator | None) -> RewardModel:
    from particlescale.rewards.reference import ReferenceReward, parse_arg

    return ReferenceReward(**parse_arg(arg))  # type: ignore[arg-type]


def uses_answer_key(reward: object) -> bool:
    """Whether ``reward`` (or a part of a combination) reads the answer key (``reference``)."""
    parts = getattr(reward, "parts", None)
    if parts is not None:
        return any(uses_answer_key(r) for _, r in parts)
    return bool(getattr(reward, "uses_answer_key", False))


def spec_uses_answer_key(spec: str) -> bool:
    """Whether a reward spec names ``reference`` (without building it)."""
    try:
        terms = parse_spec(spec)
    except ConfigError:
        return False
    return any(name.partition(":")[0].strip() == "reference" for _, name in terms)


def _served(name: str, arg: str | None) -> str:
    if not arg or not arg.startswith(("http://", "https://")):
        raise ConfigError(f"reward {name!r} needs a server URL, e.g. {name}:http://host:8001")
    return arg


def _vllm_prm(arg: str | None, generator: Generator | None) -> RewardModel:
    from particlescale.backends.registry import api_key_from_env
    from particlescale.rewards.vllm_prm import VllmPRM

    return VllmPRM(_served("vllm-prm", arg), api_key=api_key_from_env(None))


def _math_shepherd(arg: str | None, generator: Generator | None) -> RewardModel:
    from particlescale.backends.registry import api_key_from_env
    from particlescale.rewards.math_shepherd import MathShepherdPRM

    return MathShepherdPRM(_served("math-shepherd", arg), api_key=api_key_from_env(None))


def _value(arg: str | None, generator: Generator | None) -> RewardModel:
    """``value`` = the head packaged for the generator's model; ``value:PATH`` = a trained one.
    The head's model hash must match the generator's model file."""
    from particlescale.rewards.value import ValueReward, packaged_head
    from particlescale.rewards.value_head import ValueHead, model_sha256

    engine = getattr(generator, "engine", None)
    if engine is None:
        raise ConfigError("reward 'value' needs the embedded llama.cpp generator (it reads the "
                          "generator's hidden states); it cannot score text from a server")
    if not getattr(engine, "embeddings", False):
        raise ConfigError("reward 'value': the generator was created without hidden states; "
                          "create it with LlamaCppGenerator(model, embeddings=True)")
    path = arg or str(packaged_head(engine.model_name))
    return ValueReward(ValueHead.load(path, model_sha256=model_sha256(engine.path,
                                                                      engine.model_name)))


REWARDS: dict[str, Builder] = {
    "arith": _arith,
    "value": _value,  # learned value head on the embedded generator's hidden states
    "logprob": _logprob,
    "judge": _judge,
    "vllm-prm": _vllm_prm,  # Qwen2.5-Math-PRM over vLLM /pooling (remote)
    "math-shepherd": _math_shepherd,  # Math-Shepherd over vLLM STEP pooling (remote)
    "reference": _reference,  # answer-key PRM: an instrument, never a default, not served
}


def _no_arg(name: str, arg: str | None) -> None:
    if arg:
        raise ConfigError(f"reward {name!r} takes no argument, got {name}:{arg}")


def make_one(name: str, generator: Generator | None = None) -> RewardModel:
    """One reward from ``PREFIX`` or ``PREFIX:ARG``."""
    prefix, _, arg = name.partition(":")
    builder = REWARDS.get(prefix.strip())
    if builder is None:
        raise ConfigError(
            f"reward: unknown {prefix!r}; choose one of {', '.join(REWARDS)}, or combine them "
            "as in 'judge+arith' or '0.5*arith+judge'"
        )
    return builder(arg.strip() or None, generator)


def make_reward(spec: str, generator: Generator | None = None) -> RewardModel:
    """A reward from ``spec`` (see the module docstring). ``generator`` is the run's generator:
    the ``judge`` falls back to its model and shares its engine when the models match."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"reward: expected a spec such as 'arith' or 'judge+arith', got {spec!r}")
    terms = parse_spec(spec)
    if len(terms) == 1 and terms[0][0] == 1.0:
        return make_one(terms[0][1], generator)
    return Combined([(w, make_one(n, generator)) for w, n in terms], name=spec.strip())
