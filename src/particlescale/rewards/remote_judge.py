"""``judge:URL``: a generative model on an OpenAI-compatible server as a step judge.

For each new prefix the judge is asked, in one chat request, whether the last step is
correct, and the reward is P(yes) from the first answer token's log-probabilities::

    POST /v1/chat/completions {model, messages: [system, user], max_tokens: 1,
        temperature: 0.0, top_p: 1.0, n: 1, seed: 0, logprobs: true, top_logprobs: 20,
        stream: false}
    reward = sum_{yes-like t} e^{lp_t} / (sum_{yes-like t} e^{lp_t} + sum_{no-like t} e^{lp_t})

(yes-like: the token stripped and lower-cased is "yes"; likewise "no"; 0.5 when neither is
among the top 20). Only OpenAI-standard fields are sent, so vLLM, SGLang, llama-server and the
OpenAI API all accept it (20 is the OpenAI maximum and vLLM's default ``--max-logprobs``).
Each prefix is one request (prefixes are cached; concurrent prefixes run in parallel under
the endpoint's concurrency limit).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from particlescale.backends.http import HttpEndpoint, split_base_url
from particlescale.backends.openai.generator import gather_or_cancel
from particlescale.errors import BackendError
from particlescale.rewards.cache import Job, PrefixCache
from particlescale.types import STEP_SEPARATOR, Problem, Step, Usage

JUDGE_SYSTEM = ("You check solutions to math problems one step at a time. "
                "Answer with a single word: yes or no.")
JUDGE_USER = ("Problem:\n{question}\n\nSolution so far:\n{previous}\n\nNew step:\n{step}\n\n"
              "Is the new step correct? Answer yes or no.")


def p_yes(top_logprobs: Sequence[dict[str, Any]]) -> float:
    """P(yes) / (P(yes) + P(no)) from one token's ``top_logprobs`` list."""
    yes = no = 0.0
    for t in top_logprobs:
        word = str(t.get("token", "")).strip().lower()
        if word == "yes":
            yes += math.exp(float(t["logprob"]))
        elif word == "no":
            no += math.exp(float(t["logprob"]))
    return 0.5 if yes + no == 0 else yes / (yes + no)


class RemoteJudge:
    """A yes/no step judge served over ``/v1/chat/completions`` with ``logprobs``."""

    name = "judge"
    default_aggregation = "last"

    def __init__(self, url: str, model: str | None = None, *, api_key: str | None = None,
                 timeout: float = 120.0, retries: int = 4, max_concurrency: int = 32,
                 system_prompt: str = JUDGE_SYSTEM,
                 cache: PrefixCache | None = None) -> None:
        root, api = split_base_url(url)
        self.api = api[len(root):]
        self.endpoint = HttpEndpoint(root, api_key=api_key, timeout=timeout, retries=retries,
                                     max_concurrency=max_concurrency)
        self.model = model
        self.system_prompt = system_prompt
        self.cache = cache if cache is not None else PrefixCache()
        self.namespace = f"judge|{url}|{model}"

    def messages(self, question: str, steps: Sequence[str]) -> list[dict[str, str]]:
        previous = STEP_SEPARATOR.join(steps[:-1]).strip() or "(nothing yet)"
        user = JUDGE_USER.format(question=question, previous=previous, step=steps[-1].strip())
        return [{"role": "system", "content": self.system_prompt},
                {"role": "user", "content": user}]

    def body(self, question: str, steps: Sequence[str]) -> dict[str, Any]:
        return {"model": self.model, "messages": self.messages(question, steps),
                "max_tokens": 1, "temperature": 0.0, "top_p": 1.0, "n": 1, "seed": 0,
                "logprobs": True, "top_logprobs": 20, "stream": False}

    async def _model(self) -> None:
        if self.model is None:
            listing = await self.endpoint.get(self.api + "/models")
            self.model = str(listing["data"][0]["id"])

    async def score(self, problem: Problem, trajectories: Sequence[Sequence[Step]],
                    usage: Usage) -> list[list[float]]:
        async def compute(jobs: list[Job]) -> list[float]:
            await self._model()
            return await gather_or_cancel(self._judge(problem.question, t, usage)
                                          for t, _ in jobs)

        return await self.cache.score(self.namespace, problem, trajectories, compute)

    async def _judge(self, question: str, steps: Sequence[str], usage: Usage) -> float:
        out = await self.endpoint.post(self.api + "/chat/completions",
                                       self.body(question, steps))
        usage.prm_calls += 1
        usage.prm_tokens += int((out.get("usage") or {}).get("prompt_tokens") or 0)
        try:
            content = out["choices"][0]["logprobs"]["content"]
            return p_yes(content[0]["top_logprobs"]) if content else 0.5
        except (KeyError, IndexError, TypeError) as e:
            raise BackendError(f"judge: answer has no logprobs ({e}); the server must support "
                               f"logprobs/top_logprobs: {str(out)[:200]}",
                               kind="protocol") from e

    async def aclose(self) -> None:
        await self.endpoint.aclose()
