"""``vllm-prm``: Qwen2.5-Math-PRM served by vLLM's ``/pooling`` endpoint.

The format is the model card's (Qwen/Qwen2.5-Math-PRM-7B): system "Please reason step by
step, and put your final answer within \\boxed{}.", user = the question, assistant = the steps
joined by ``<extra_0>`` with a trailing ``<extra_0>``; the reward of step i is P(positive) at
the i-th ``<extra_0>``. The conversation is rendered client-side with Qwen's ChatML template
and sent as ``input`` (so many trajectories go in one request), byte for byte::

    <|im_start|>system\\nPlease reason step by step, and put your final answer within
    \\boxed{}.<|im_end|>\\n<|im_start|>user\\n{question}<|im_end|>\\n<|im_start|>assistant\\n
    {step 1}<extra_0>{step 2}<extra_0><|im_end|>\\n

(no line breaks inside the first two lines above; steps are stripped of surrounding
whitespace, the ``\\n\\n`` delimiter included). ``request_format="messages"`` sends the chat
form instead and lets the server apply the template (one request per trajectory).

The PRM is causal, so the rows of a trajectory score all its prefixes at once: a trajectory
is sent once and every prefix's reward is cached (``rewards.cache.PrefixCache``). With the
``model`` aggregation (the default, as in the paper) the algorithm scores each prefix as one
merged step, i.e. one ``<extra_0>`` after the whole partial solution.
See ``rewards/vllm_pooling.py`` for the vLLM versions and serving flags.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from particlescale.errors import BackendError, ConfigError
from particlescale.rewards.cache import Job, PrefixCache
from particlescale.rewards.vllm_pooling import PoolingClient, rows_of
from particlescale.types import Problem, Step, Usage

QWEN_PRM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


def qwen_prm_messages(question: str, steps: Sequence[str],
                      system: str = QWEN_PRM_SYSTEM) -> list[dict[str, str]]:
    """The Qwen2.5-Math-PRM conversation: steps each followed by ``<extra_0>``."""
    return [{"role": "system", "content": system}, {"role": "user", "content": question},
            {"role": "assistant", "content": "".join(f"{s}<extra_0>" for s in steps)}]


def qwen_prm_text(question: str, steps: Sequence[str], system: str = QWEN_PRM_SYSTEM) -> str:
    """The conversation rendered by Qwen's ChatML template (no generation prompt)."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
                   for m in qwen_prm_messages(question, steps, system))


class StepTagPRM:
    """A process reward model whose input marks the end of each step with a tag token and
    which returns class probabilities at each tag; causal, so one pass over a trajectory
    scores all its prefixes.

    Subclasses define ``tag``, ``positive`` (the column of the positive class),
    ``render(question, step_texts)`` and ``_rows`` (one ``(n_steps, classes)`` array per
    trajectory). Scores are cached per prefix (``rewards.cache.PrefixCache``).
    """

    name = "step-tag-prm"
    tag = ""
    positive = 1
    default_aggregation = "last"

    def __init__(self, cache: PrefixCache | None, namespace: str) -> None:
        self.cache = cache if cache is not None else PrefixCache()
        self.namespace = namespace

    def clean(self, text: str) -> str:
        """A step as the PRM sees it: stripped, and without stray step tags."""
        return text.replace(self.tag, "").strip()

    def render(self, question: str, steps: Sequence[str]) -> str:
        raise NotImplementedError

    async def _rows(self, question: str, trajs: list[tuple[str, ...]],
                    usage: Usage) -> list[Any]:
        raise NotImplementedError

    async def score(self, problem: Problem, trajectories: Sequence[Sequence[Step]],
                    usage: Usage) -> list[list[float]]:
        async def compute(jobs: list[Job]) -> list[float]:
            return await self._compute(problem, jobs, usage)

        return await self.cache.score(self.namespace, problem, trajectories, compute)

    async def _compute(self, problem: Problem, jobs: list[Job], usage: Usage) -> list[float]:
        # A job that is a prefix of another job is read off that job's rows: send only the
        # maximal prefixes, once each.
        texts = [tuple(self.clean(t) for t in texts) for texts, _ in jobs]
        maximal: list[tuple[str, ...]] = []
        owner: dict[tuple[str, ...], tuple[str, ...]] = {}
        for t in sorted(set(texts), key=len, reverse=True):
            m = next((m for m in maximal if m[: len(t)] == t), None)
            if m is None:
                maximal.append(t)
                m = t
            owner[t] = m
        rows = dict(zip(maximal, await self._rows(problem.question, maximal, usage), strict=True))
        return [float(rows[owner[t]][len(t) - 1, self.positive]) for t in texts]


class ServedStepPRM(StepTagPRM):
    """A :class:`StepTagPRM` behind vLLM's ``/pooling`` (see ``rewards/vllm_pooling.py``)."""

    request_formats: tuple[str, ...] = ("input",)

    def __init__(self, url: str, model: str | None = None, *, api_key: str | None = None,
                 request_format: str = "input", timeout: float = 120.0, retries: int = 4,
                 max_concurrency: int = 16, max_batch: int = 64,
                 cache: PrefixCache | None = None) -> None:
        if request_format not in self.request_formats:
            raise ConfigError(f"request_format: {request_format!r} is not one of "
                              f"{', '.join(self.request_formats)}")
        super().__init__(cache, f"{self.name}|{url}|{model}")
        self.request_format = request_format
        self.client = PoolingClient(url, model, api_key=api_key, timeout=timeout,
                                    retries=retries, max_concurrency=max_concurrency,
                                    max_batch=max_batch)

    def messages(self, question: str, steps: Sequence[str]) -> list[dict[str, str]]:
        raise NotImplementedError

    async def _rows(self, question: str, trajs: list[tuple[str, ...]],
                    usage: Usage) -> list[Any]:
        if self.request_format == "messages":
            datas = await asyncio.gather(*(
                self.client.pool_messages(self.messages(question, t), usage) for t in trajs))
        else:
            datas = await self.client.pool_texts([self.render(question, t) for t in trajs],
                                                 usage)
        out = []
        for t, data in zip(trajs, datas, strict=True):
            try:
                out.append(rows_of(data, len(t)))
            except BackendError as e:
                raise BackendError(f"{self.name}: {e}", kind=e.kind, status=e.status) from e
        return out

    async def aclose(self) -> None:
        await self.client.aclose()


class VllmPRM(ServedStepPRM):
    """Qwen2.5-Math-PRM (7B/72B) over vLLM ``/pooling``; reward = P(positive) per step."""

    name = "vllm-prm"
    tag = "<extra_0>"
    positive = 1  # rows are [p_negative, p_positive]
    default_aggregation = "model"  # as in the paper (Puri et al., 2025)
    request_formats = ("input", "messages")

    def __init__(self, url: str, model: str | None = None, *,
                 system_prompt: str = QWEN_PRM_SYSTEM, **kwargs: Any) -> None:
        super().__init__(url, model, **kwargs)
        self.system_prompt = system_prompt

    def messages(self, question: str, steps: Sequence[str]) -> list[dict[str, str]]:
        return qwen_prm_messages(question, steps, self.system_prompt)

    def render(self, question: str, steps: Sequence[str]) -> str:
        return qwen_prm_text(question, steps, self.system_prompt)
