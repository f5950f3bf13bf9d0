"""The served PRM formats run locally with Hugging Face transformers (optional extra
``particlescale[transformers]``), for users with a GPU and no vLLM.

Same inputs, byte for byte, as the served versions (``vllm_prm.qwen_prm_text``,
``math_shepherd.shepherd_text``); one forward pass per trajectory scores all its steps (the
models are causal, so the reward at step i's tag depends on steps 1..i only), and every
prefix's reward is cached::

    ids    = tokenizer(render(question, steps)).input_ids
    logits = model(ids)                             # (1, T, C)
    qwen:          p = softmax(logits[tag positions])            -> [p_neg, p_pos] per step
    math-shepherd: p = softmax(logits[tag positions][:, [+, -]]) -> [P(+), P(-)] per step

Qwen2.5-Math-PRM loads with ``AutoModel`` (``trust_remote_code``; its head returns 2 logits
per token); Math-Shepherd with ``AutoModelForCausalLM``. The forward passes run in a worker
thread so the event loop keeps serving other problems.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np

from particlescale.errors import ConfigError, ModelError
from particlescale.rewards.cache import PrefixCache
from particlescale.rewards.math_shepherd import shepherd_text
from particlescale.rewards.vllm_prm import QWEN_PRM_SYSTEM, StepTagPRM, qwen_prm_text
from particlescale.types import Usage

KINDS = ("qwen", "math-shepherd")


class HFProcessPRM(StepTagPRM):
    """A Qwen-PRM- or Math-Shepherd-format PRM run in-process with transformers.

    ``model``: a repository id / path (loaded here) or a loaded model; ``tokenizer`` likewise
    (default: the model's). ``kind``: ``qwen`` or ``math-shepherd``. ``step_tag_id`` and (for
    Math-Shepherd) ``label_ids`` = ``[id of "+", id of "-"]`` default to the tokenizer's.
    """

    def __init__(self, model: Any, *, kind: str = "qwen", tokenizer: Any = None,
                 device: str | None = None, step_tag_id: int | None = None,
                 label_ids: Sequence[int] | None = None, system_prompt: str = QWEN_PRM_SYSTEM,
                 cache: PrefixCache | None = None) -> None:
        if kind not in KINDS:
            raise ConfigError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
        try:
            import torch
            import transformers
        except ImportError as e:
            raise ModelError("the local PRM needs torch and transformers: "
                             "pip install 'particlescale[transformers]'") from e
        self.kind = kind
        self.tag = "<extra_0>" if kind == "qwen" else "ки"
        self.positive = 1 if kind == "qwen" else 0
        self.name = "hf-prm" if kind == "qwen" else "hf-math-shepherd"
        self.default_aggregation = "model" if kind == "qwen" else "min"
        self.system_prompt = system_prompt
        name = model if isinstance(model, str) else type(model).__name__
        super().__init__(cache, f"{self.name}|{name}")
        try:
            if isinstance(model, str):
                auto = (transformers.AutoModel if kind == "qwen"
                        else transformers.AutoModelForCausalLM)
                tokenizer = tokenizer or transformers.AutoTokenizer.from_pretrained(
                    model, trust_remote_code=True)
                model = auto.from_pretrained(model, trust_remote_code=True)
            elif tokenizer is None:
                raise ConfigError("tokenizer: pass the tokenizer that goes with a loaded model")
        except OSError as e:
            raise ModelError(f"cannot load PRM {name!r} with transformers: {e}") from e
        self.torch = torch
        self.tokenizer = tokenizer
        self.model = model.eval()
        if device is not None:
            self.model.to(device)
        self.device = next(self.model.parameters()).device
        self.step_tag_id = (step_tag_id if step_tag_id is not None
                            else self._tag_id(tokenizer))
        if kind == "math-shepherd":
            self.label_ids = list(label_ids) if label_ids is not None else [
                int(tokenizer.encode(t, add_special_tokens=False)[-1]) for t in ("+", "-")]
            if len(self.label_ids) != 2:
                raise ConfigError("label_ids: give the token ids of '+' and '-'")
        self.forwards = 0

    def _tag_id(self, tokenizer: Any) -> int:
        ids = tokenizer.encode(self.tag, add_special_tokens=False)
        if not ids:
            raise ConfigError(f"step_tag_id: the tokenizer has no token for {self.tag!r}")
        return int(ids[-1])

    def render(self, question: str, steps: Sequence[str]) -> str:
        if self.kind == "qwen":
            return qwen_prm_text(question, steps, self.system_prompt)
        return shepherd_text(question, steps)

    def rows_for(self, text: str, n_steps: int) -> np.ndarray:
        """``(n_steps, 2)`` class probabilities at the step tags of ``text`` (one forward)."""
        return self._forward(text, n_steps)[0]

    def _forward(self, text: str, n_steps: int) -> tuple[np.ndarray, int]:
        torch = self.torch
        ids = self.tokenizer(text, return_tensors="pt")["input_ids"].to(self.device)
        with torch.no_grad():
            out = self.model(input_ids=ids)
        logits = (out.logits if hasattr(out, "logits") else out[0])[0].float()
        at = (ids[0] == self.step_tag_id).nonzero(as_tuple=True)[0]
        picked = logits[at]
        if self.kind == "math-shepherd":
            picked = picked[:, self.label_ids]
        probs = torch.softmax(picked, dim=-1).cpu().numpy().astype(np.float64)
        if probs.shape[0] != n_steps:
            raise ModelError(f"{self.name}: found {probs.shape[0]} step tags for {n_steps} "
                             "steps; the tokenizer splits the tag differently (set step_tag_id)")
        self.forwards += 1
        return probs, int(ids.shape[1])

    async def _rows(self, question: str, trajs: list[tuple[str, ...]],
                    usage: Usage) -> list[Any]:
        out = []
        for t in trajs:
            text = self.render(question, t)
            probs, n_tokens = await asyncio.to_thread(self._forward, text, len(t))
            out.append(probs)
            usage.prm_calls += 1
            usage.prm_tokens += n_tokens
        return out
