"""``judge``: a generative verifier on the embedded llama.cpp engine.

For each new prefix ``x_{1:t}`` the judge model is asked, with its own chat template::

    system: You check solutions to math problems one step at a time. Answer with a single
            word: yes or no.
    user:   Problem: ... Solution so far: x_{1:t-1} ... New step: x_t ...
            Is the new step correct? Answer yes or no.

and the reward is read from the logits of the first answer token (computed by the engine as
``log softmax`` at temperature 1, not from llama-cpp-python's ``echo`` log-probabilities,
which are off by one for Qwen)::

    P(yes) = sum_{t in YES} p(t) / (sum_{t in YES} p(t) + sum_{t in NO} p(t))

where YES / NO are the single-token spellings ``yes Yes YES`` (with and without a leading
space) and likewise for no. All new prefixes of a ``score`` call are judged in one engine job:
their prompts share the system text and the question, which the engine decodes once and forks
(``LlamaEngine.next_token_logprobs``). Scores are cached per prefix (:mod:`.cache`), so each
step is judged once.

The default judge model is ``qwen2.5-1.5b`` when it has been pulled, else the generator's own
model (sharing its engine: no second copy in memory). Measured here (MODELS.md,
BENCHMARKS.md): the 1.5B judge costs about a second per step on 2 cores and tells correct
from wrong solutions by its last-step score only moderately; the 0.5B is near chance.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from particlescale.errors import ConfigError
from particlescale.protocols import Generator
from particlescale.rewards.cache import Job, PrefixCache
from particlescale.types import Problem, Step, Usage

JUDGE_MODEL = "qwen2.5-1.5b"
JUDGE_SYSTEM = ("You check solutions to math problems one step at a time. "
                "Answer with a single word: yes or no.")
JUDGE_USER = ("Problem:\n{question}\n\nSolution so far:\n{previous}\n\nNew step:\n{step}\n\n"
              "Is the new step correct? Answer yes or no.")
YES = ("yes", "Yes", "YES", " yes", " Yes", " YES")
NO = ("no", "No", "NO", " no", " No", " NO")


def judge_messages(question: str, steps: Sequence[str],
                   system: str = JUDGE_SYSTEM) -> list[dict[str, str]]:
    """The chat asking whether ``steps[-1]`` is correct given the earlier steps."""
    previous = "\n\n".join(s.strip() for s in steps[:-1]).strip() or "(nothing yet)"
    user = JUDGE_USER.format(question=question.strip(), previous=previous, step=steps[-1].strip())
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def single_token_ids(engine: Any, words: Sequence[str]) -> list[int]:
    """Token ids of the spellings that are one token in this vocabulary (deduplicated)."""
    ids: list[int] = []
    for w in words:
        toks = engine.tokenize(w)
        if len(toks) == 1 and toks[0] not in ids:
            ids.append(int(toks[0]))
    return ids


class LlamaJudge:
    """A yes/no step judge on a :class:`~particlescale.backends.llamacpp.LlamaEngine`.

    ``engine`` is shared (e.g. with the generator) unless ``owns_engine``; :meth:`close`
    frees an owned engine.
    """

    default_aggregation = "last"

    def __init__(self, engine: Any, *, owns_engine: bool = False, system_prompt: str = JUDGE_SYSTEM,
                 cache: PrefixCache | None = None) -> None:
        self.engine = engine
        self.owns_engine = owns_engine
        self.system_prompt = system_prompt
        self.cache = cache if cache is not None else PrefixCache()
        self.name = f"judge:{engine.model_name}"
        self.yes_ids = single_token_ids(engine, YES)
        self.no_ids = single_token_ids(engine, NO)
        if not self.yes_ids or not self.no_ids:
            raise ConfigError(f"judge: the vocabulary of {engine.model_name!r} has no single "
                              "token for 'yes'/'no'; choose another judge model")

    def prompt_tokens(self, question: str, steps: Sequence[str]) -> list[int]:
        return self.engine.chat_tokens(judge_messages(question, steps, self.system_prompt))

    async def p_yes(self, question: str, prefixes: Sequence[Sequence[str]],
                    usage: Usage | None = None) -> list[float]:
        """P(yes) for each prefix (its last step judged), in one batched engine job."""
        if not prefixes:
            return []
        prompts = [self.prompt_tokens(question, p) for p in prefixes]
        ids = self.yes_ids + self.no_ids
        lp = await self.engine.next_token_logprobs(prompts, ids)
        k = len(self.yes_ids)
        # log-sum-exp within each group, then a two-way softmax: exact, no underflow.
        yes = np.logaddexp.reduce(lp[:, :k], axis=1)
        no = np.logaddexp.reduce(lp[:, k:], axis=1)
        p = 1.0 / (1.0 + np.exp(no - yes))
        if usage is not None:
            usage.prm_calls += 1
            usage.prm_tokens += sum(len(t) for t in prompts)
        return [float(x) for x in p]

    async def score(self, problem: Problem, trajectories: Sequence[Sequence[Step]],
                    usage: Usage) -> list[list[float]]:
        async def compute(jobs: list[Job]) -> list[float]:
            return await self.p_yes(problem.question, [texts for texts, _ in jobs], usage)

        return await self.cache.score(self.name, problem, trajectories, compute)

    def close(self) -> None:
        if self.owns_engine:
            self.engine.close()


def _same_file(a: os.PathLike[str] | str, b: os.PathLike[str] | str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def make_local_judge(model: str | None, generator: Generator | None) -> LlamaJudge:
    """``judge`` / ``judge:MODEL``: the judge model is ``model``, else ``qwen2.5-1.5b`` when
    pulled, else the generator's model. A judge on the generator's model shares its engine."""
    from particlescale import models

    engine = getattr(generator, "engine", None)
    gen_path = getattr(engine, "path", None)
    if model is None:
        if models.is_pulled(JUDGE_MODEL):
            model = JUDGE_MODEL
        elif engine is not None:
            return LlamaJudge(engine)
        else:
            raise ConfigError(
                f"reward 'judge': no judge model: run `particlescale models pull {JUDGE_MODEL}`, "
                "or name one with judge:MODEL (or judge:URL for a served model)"
            )
    path = models.resolve(model)
    if engine is not None and gen_path is not None and _same_file(path, gen_path):
        return LlamaJudge(engine)
    from particlescale.backends.llamacpp import LlamaEngine

    # Judge prompts share the question and, step after step, each particle's earlier text:
    # the engine keeps up to score_cache_size scored prompts so that judging step t+1 decodes
    # only what follows step t-1 (forked KV cells are shared, so the context stays small).
    return LlamaJudge(LlamaEngine(model, n_ctx=16384, n_seq_max=64, score_cache_size=48),
                      owns_engine=True)
