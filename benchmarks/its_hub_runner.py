"""its_hub's particle filtering on one problem, run INSIDE its own venv (``make itshub-venv``:
``.venv-itshub`` with ``its-hub[lm]``), printing one JSON object. bench_its_hub.py starts it as
a subprocess with ``PYTHONPATH=<repo>/src`` so that the reward is the library's own, wrapped
in its_hub's ``AbstractProcessRewardModel`` interface (:class:`LibraryPRM`).

Input: one JSON object on stdin (see :func:`main`: ``url`` — the server's OpenAI root, e.g. a
counting proxy's ``http://127.0.0.1:PORT/v1`` —, ``model``, ``question``, ``system_prompt``,
``budget``, ``seed``, ``max_steps``, ``max_step_tokens``, ``temperature``, ``delimiter``,
``reward``, ``variant``). Output (stdout): ``{"text", "steps", "wall_s", "trimmed",
"error"}``.

Variants:

- ``out-of-box``: its_hub as a user gets it: ``OpenAICompatibleLanguageModel`` (chat
  completions with the steps so far as an assistant message to continue);
- ``echo-trim``: the same through :class:`EchoTrimmingLM`, which removes the assistant prefix
  when the server echoes it at the start of the reply (llama-server does; its_hub 1.2.0 would
  otherwise append prefix + new text as one new step, and the prompt doubles every step).

Usage (by hand): echo '{"url": ..., "question": ...}' | PYTHONPATH=src \\
    .venv-itshub/bin/python -m benchmarks.its_hub_runner
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections.abc import Sequence
from typing import Any

DEFAULTS: dict[str, Any] = {
    "model": "default", "system_prompt": None, "budget": 4, "seed": 0, "max_steps": 40,
    "max_step_tokens": 512, "temperature": 0.8, "delimiter": "\n\n", "reward": "arith",
    "variant": "out-of-box",
}
VARIANTS = ("out-of-box", "echo-trim")


def split_steps(text: str, delimiter: str) -> list[str]:
    """A response as its_hub joins it (steps joined by the delimiter) back into steps."""
    return [s for s in text.split(delimiter) if s.strip()]


def trim_echo(prefix: str | None, content: str) -> tuple[str, bool]:
    """``content`` without ``prefix`` when the server echoed it at the start: exactly, or with
    the prefix's trailing whitespace dropped (then the reply's leading newlines go too, as
    its_hub re-joins steps with the delimiter); (text, trimmed)."""
    if not prefix:
        return content, False
    if content.startswith(prefix):
        return content[len(prefix):], True
    head = prefix.rstrip()
    if head and content.startswith(head):
        return content[len(head):].lstrip("\n"), True
    return content, False


def make_prm(spec: str, question: str, delimiter: str) -> Any:
    """The library's reward ``spec`` as an its_hub process reward model: each response is split
    into steps, scored by the library's reward and aggregated as the library's particle filter
    does (``aggregation_for``: the reward's default), so both libraries weight the same way."""
    from its_hub.api import AbstractProcessRewardModel

    from particlescale.aggregation import aggregate
    from particlescale.algorithms.common import aggregation_for
    from particlescale.rewards.registry import make_reward
    from particlescale.types import Problem, Step, Usage

    reward = make_reward(spec)
    aggregation = aggregation_for(reward, None)
    problem = Problem(question)

    class LibraryPRM(AbstractProcessRewardModel):
        usage = Usage()

        async def ascore(self, prompt_or_messages: Any, steps: Sequence[str]) -> list[float]:
            trajs = [[Step(s) for s in split_steps(text, delimiter)] for text in steps]
            scores = await reward.score(problem, trajs, self.usage)
            return [aggregate(s, aggregation) for s in scores]

        def score(self, prompt_or_messages: Any, steps: Sequence[str]) -> list[float]:
            return asyncio.run(self.ascore(prompt_or_messages, steps))

    return LibraryPRM()


def make_lm(cfg: dict[str, Any]) -> Any:
    from its_hub.core.lms.openai_lm import OpenAICompatibleLanguageModel

    class EchoTrimmingLM(OpenAICompatibleLanguageModel):
        """its_hub's LM with the echoed assistant prefix removed from each reply."""

        trimmed = 0

        async def agenerate(self, messages_or_messages_lst: Any, *args: Any,
                            **kwargs: Any) -> Any:
            single = not isinstance(messages_or_messages_lst[0], list)
            lst = [messages_or_messages_lst] if single else messages_or_messages_lst
            out = await super().agenerate(lst, *args, **kwargs)
            for messages, reply in zip(lst, out, strict=True):
                last = messages[-1]
                role = last.get("role") if isinstance(last, dict) else last.role
                content = last.get("content") if isinstance(last, dict) else last.content
                if role == "assistant" and isinstance(reply.get("content"), str):
                    reply["content"], cut = trim_echo(content, reply["content"])
                    self.trimmed += cut
            return out[0] if single else out

    cls = EchoTrimmingLM if cfg["variant"] == "echo-trim" else OpenAICompatibleLanguageModel
    return cls(endpoint=cfg["url"], api_key="none", model_name=cfg["model"],
               system_prompt=cfg["system_prompt"], temperature=cfg["temperature"],
               max_completion_tokens=cfg["max_step_tokens"])


async def run(cfg: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    from its_hub.algorithms import ParticleFiltering
    from its_hub.core.lms.step_generation import StepGeneration

    random.seed(cfg["seed"])  # its_hub resamples with random.choices
    np.random.seed(cfg["seed"])
    sg = StepGeneration(max_steps=cfg["max_steps"], step_token=cfg["delimiter"],
                        stop_token=r"\boxed", temperature=cfg["temperature"])
    pf = ParticleFiltering(sg, make_prm(cfg["reward"], cfg["question"], cfg["delimiter"]))
    lm = make_lm(cfg)
    t0 = time.perf_counter()
    out: dict[str, Any] = {"text": None, "steps": None, "error": None}
    try:
        result = await pf.ainfer(lm, cfg["question"], budget=cfg["budget"],
                                 return_response_only=False)
        out["text"] = result.the_one["content"]
        out["steps"] = result.steps_used_lst[result.selected_index]
    except Exception as e:  # a context overflow, a server error: reported, not raised
        out["error"] = f"{type(e).__name__}: {e}"[:500]
    out["wall_s"] = time.perf_counter() - t0
    out["trimmed"] = getattr(lm, "trimmed", 0)
    await lm.close()
    return out


def main() -> int:
    if "--help" in sys.argv or "-h" in sys.argv:
        print("usage: python -m benchmarks.its_hub_runner < config.json\n\n" + __doc__)
        return 0
    cfg = {**DEFAULTS, **json.loads(sys.stdin.read())}
    for key in ("url", "question"):
        if not cfg.get(key):
            print(f"its_hub_runner: {key}: missing from the JSON on stdin", file=sys.stderr)
            return 2
    if cfg["variant"] not in VARIANTS:
        print(f"its_hub_runner: variant: unknown {cfg['variant']!r}; choose "
              f"{', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    print(json.dumps(asyncio.run(run(cfg))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
