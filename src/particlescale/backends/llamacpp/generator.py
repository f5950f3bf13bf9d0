"""``LlamaCppGenerator``: the :class:`~particlescale.protocols.Generator` on the batched engine.

A session renders the problem with the model's chat template once (system prompt:
``Problem.system_prompt`` or the search-and-learn math prompt), and turns each
``extend(parents, children)`` into one engine job: every parent's KV sequence is forked into
its children (the last child takes the parent's own sequence), and the children's tokens of
all sessions sharing the engine are decoded together.

Reproducibility: for each child, in the order parent 0 child 0, parent 0 child 1, ..., the
session draws one 63-bit seed from its RNG; the child samples its tokens from its own stream.
A fresh engine given the same work in the same order gives the same tokens. Work shared
with other sessions is reproducible only up to floating point: llama.cpp's CPU kernels round
differently for different batch shapes, so a prompt read from the cache, or decoded beside
another session's tokens, can shift a logit by ~1e-3 and now and then change a sampled token.

Usage: ``prompt_tokens`` counts tokens decoded that the session did not just generate (the
prompt, once, plus any sequence rebuilt after a release or an eviction, plus the tokens
``continuation_logprob`` decodes for ancestor sampling);
``generated_tokens`` counts sampled tokens; ``lm_calls`` counts ``extend`` calls.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from particlescale.backends.llamacpp.engine import (
    ExtendOutcome,
    LlamaEngine,
    ParentSpec,
    SeqHandle,
)
from particlescale.models import DEFAULT_MODEL
from particlescale.prompts import DEFAULT_SYSTEM_PROMPT
from particlescale.protocols import SamplingParams
from particlescale.types import Particle, Problem, Step, Usage

SEED_HIGH = 2**63 - 1


class LlamaCppSession:
    """Generation state of one problem on a shared :class:`LlamaEngine`."""

    def __init__(self, gen: LlamaCppGenerator, problem: Problem, params: SamplingParams,
                 rng: np.random.Generator, usage: Usage) -> None:
        self.engine = gen.engine
        self.params = params
        self.rng = rng
        self.usage = usage
        system = problem.system_prompt if problem.system_prompt is not None else gen.system_prompt
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": problem.question}]
        self.prompt = self.engine.chat_tokens(messages)
        self.state = self.engine.open_session(self.prompt)
        self.closed = False
        # how steps are resumed (the runner puts it in Result.info; see backends/openai/
        # boundary.py for the HTTP side): exact while every parent is this session's own
        self.step_boundary: dict[str, Any] = {
            "mode": "kv-cache", "exact": True,
            "why": "the engine resumes each particle from the tokens the model wrote (its KV "
                   "sequence, or its tokens when the sequence was evicted)"}

    def _continuation_tokens(self, steps: Sequence[Step]) -> list[int]:
        """The tokens of a particle rebuilt from its text (its handle is foreign: another
        session's, or none). Not always the tokens the model wrote: a tokeniser with GPT-2's
        pre-tokeniser (smollm2) reads a text *ending* with ``"\\n\\n"`` as one token where
        the model wrote two, and the resumed steps then differ from free-running ones
        (tests/test_stepwise_is_the_lm.py). A particle resumed in its own session keeps its
        tokens, consumed handle or not."""
        delim = self.params.delimiter
        text = "".join(s.text + (delim if s.finish == "step" else "") for s in steps)
        return self.engine.tokenize(text) if text else []

    async def extend(self, parents: Sequence[Particle], children: Sequence[int]
                     ) -> list[list[Step]]:
        out = await self.engine.extend(self.state, self._specs(parents, children), self.params)
        self._count(out)
        return out.steps

    async def extend_to_end(self, parents: Sequence[Particle], children: Sequence[int],
                            final: Callable[[Step, int], bool]) -> list[list[list[Step]]]:
        """``children[i]`` independent continuations of parent i, each run until
        ``final(step, n)`` (n: the particle's step count with that step) or an end of
        generation: ``out[i][j]`` is child j's new steps. No step barrier: each child goes on
        as soon as its step ends (see ``LlamaEngine.extend_to_end``). Only the last step of
        each child carries a handle; seeds are drawn as in ``extend``."""
        specs = self._specs(parents, children)
        sizes = [len(p.steps) for p in parents]
        out = await self.engine.extend_to_end(
            self.state, specs, self.params, lambda i, step, k: final(step, sizes[i] + k))
        self._count(out)
        return out.steps

    def _specs(self, parents: Sequence[Particle], children: Sequence[int]) -> list[ParentSpec]:
        if len(parents) != len(children):
            raise ValueError(f"children: got {len(children)} counts for {len(parents)} parents")
        self.usage.lm_calls += 1
        specs: list[ParentSpec] = []
        for parent, k in zip(parents, children, strict=True):
            k = int(k)
            if k < 0:
                raise ValueError(f"children: counts must be >= 0, got {k}")
            seeds = [int(x) for x in self.rng.integers(0, SEED_HIGH, size=k)]
            h = parent.handle
            if not parent.steps:
                specs.append(ParentSpec(k, seeds, root=True))
            elif isinstance(h, SeqHandle) and h.owner is self.state:
                live = h.state == "live"
                h.state = "consumed"
                specs.append(ParentSpec(k, seeds, handle=h if live else None, tokens=h.tokens,
                                        carry=h.carry))
            else:
                toks = tuple(self._continuation_tokens(parent.steps))
                specs.append(ParentSpec(k, seeds, tokens=toks, root=not toks))
                self._retokenised(len(toks) > 0)
        return specs

    def _retokenised(self, did: bool) -> None:
        if not did:
            return
        info = self.step_boundary
        n = info["retokenised"] = info.get("retokenised", 0) + 1
        info["exact"] = False
        info["why"] = (f"{n} parents of another session (or without a handle) were re-read "
                       "from their text, whose tokens may differ from the model's at a step "
                       "boundary (tests/test_stepwise_is_the_lm.py)")

    def _count(self, out: ExtendOutcome) -> None:
        self.usage.prompt_tokens += out.prompt_tokens
        self.usage.generated_tokens += out.generated_tokens

    async def continuation_logprob(self, prefixes: Sequence[Particle],
                                   continuation: Sequence[Step]) -> list[float]:
        """log q(continuation | prompt + prefix) for each prefix (particle Gibbs with ancestor
        sampling), q being this session's proposal (its temperature and top-p).

        Text layout as when a particle is re-read from its text: steps joined by the
        delimiter, a last ``eos`` step followed by an end-of-generation token. The
        continuation's tokens are those of tokenising prefix + continuation as one text
        (past the prefix's own tokens), or of the continuation alone when the tokeniser
        merges across the boundary. Scoring is at the text level: a prefix particle whose
        last token already carried bytes of its next step (see ``backends/steptext.py``) is
        scored as if it had not. Handles are left alone; the tokens decoded count as prompt tokens.
        """
        if not prefixes:
            return []
        delim = self.params.delimiter
        eos = bool(continuation) and continuation[-1].finish == "eos"
        cont_text = "".join(s.text + (delim if s.finish == "step" else "") for s in continuation)
        alone: list[int] | None = None
        contexts, targets = [], []
        for p in prefixes:
            own = self._continuation_tokens(p.steps)
            both = self._continuation_tokens((*p.steps, *continuation))
            if both[: len(own)] == own:
                target = both[len(own):]
            else:
                if alone is None:
                    alone = self.engine.tokenize(cont_text) if cont_text else []
                target = alone
            contexts.append(list(self.prompt) + own)
            targets.append(target)
        out, decoded = await self.engine.continuation_logprobs(contexts, targets, eos=eos,
                                                                params=self.params)
        self.usage.lm_calls += 1
        self.usage.prompt_tokens += decoded
        return [float(x) for x in out]

    def release(self, particles: Iterable[Particle]) -> None:
        handles = []
        for p in particles:
            h = p.handle
            if isinstance(h, SeqHandle) and h.owner is self.state and h.state == "live":
                h.state = "released"
                handles.append(h)
        self.engine.release(handles)

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            await self.engine.close_session(self.state)


class LlamaCppGenerator:
    """Generator on an in-process llama.cpp model.

    ``model`` is a :class:`LlamaEngine` to share (e.g. with a judge reward or other
    generators), or a model spec (known name, ``.gguf`` path, ``hf:OWNER/REPO/FILE``) for which
    an engine is created with ``engine_options`` (``n_ctx``, ``n_seq_max``, ``embeddings``...).
    """

    def __init__(self, model: LlamaEngine | str | os.PathLike[str] = DEFAULT_MODEL, *,
                 system_prompt: str | None = DEFAULT_SYSTEM_PROMPT, **engine_options: Any) -> None:
        if isinstance(model, LlamaEngine):
            if engine_options:
                raise ValueError("engine_options: pass them to LlamaEngine, not with an engine")
            self.engine, self._owns = model, False
        else:
            self.engine, self._owns = LlamaEngine(model, **engine_options), True
        self.system_prompt = system_prompt
        self.name = f"llamacpp:{self.engine.model_name}"

    def session(self, problem: Problem, params: SamplingParams, rng: np.random.Generator,
                usage: Usage) -> LlamaCppSession:
        return LlamaCppSession(self, problem, params, rng, usage)

    def close(self) -> None:
        """Free the engine if this generator created it."""
        if self._owns:
            self.engine.close()

    def __enter__(self) -> LlamaCppGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
