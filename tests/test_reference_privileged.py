"""The worked solution a ``reference`` run scores by never reaches the generator: every byte
sent to a served model (a real HTTP server) and every text the embedded engine reads is
recorded while pf and best-of-n run with the answer-key reward on GSM8K problems."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence

import pytest

from engines import need
from particlescale import asolve
from particlescale.eval.datasets import Selection, load_dataset
from particlescale.rewards.registry import make_reward
from particlescale.testing.fake_vllm import FakeVLLM
from particlescale.types import Problem

MODEL = "Qwen/Qwen2.5-Math-1.5B-Instruct"


def problems(n: int) -> list[Problem]:
    ps = load_dataset("gsm8k", selection=Selection(sample=n, seed=7)).problems
    assert all(p.reference and "<<" in p.reference for p in ps)
    return ps


def leaks(text: str, p: Problem) -> list[str]:
    """Pieces of ``p``'s worked solution found in ``text``: the whole of it, any of its lines,
    any ``<<expr=value>>`` annotation, the ``####`` answer mark."""
    ref = p.reference or ""
    pieces = [ref, "####", *re.findall(r"<<[^<>]*>>", ref),
              *(line.strip() for line in ref.splitlines() if len(line.strip()) > 20)]
    return [x for x in pieces if x and x in text]


def test_no_request_to_a_served_generator_contains_the_worked_solution() -> None:
    from particlescale.backends.openai import OpenAIGenerator

    ps = problems(3)
    with FakeVLLM(model=MODEL) as server:
        gen = OpenAIGenerator(server.v1, MODEL)

        async def go() -> list[str]:
            traces = []
            try:
                for p in ps:
                    for method in ("pf", "best-of-n"):
                        res = await asolve(p, generator=gen, method=method, budget=4, seed=0,
                                           reward=make_reward("reference:noise=0.5"),
                                           max_steps=4)
                        traces.append(json.dumps(res.to_dict(trace=True)))
            finally:
                await gen.aclose()
            return traces

        traces = asyncio.run(go())
        sent = [r.raw.decode("utf-8", "replace") for r in server.records]
    assert len(sent) > 10
    for p in ps:
        assert any(p.question[:40] in s for s in sent)  # the check can see a problem's text
        assert not [x for s in sent for x in leaks(s, p)]
        assert not [x for t in traces for x in leaks(t, p)]  # nor the result or its trace


@pytest.mark.model
def test_no_text_the_embedded_engine_reads_contains_the_worked_solution() -> None:
    need("smollm2-135m")
    from particlescale.backends.llamacpp import LlamaCppGenerator, LlamaEngine

    class RecordingEngine(LlamaEngine):
        """The real engine, keeping every prompt it opens and every text it tokenizes."""

        seen: list[str]

        def open_session(self, prompt: Sequence[int]):  # type: ignore[no-untyped-def]
            self.seen.append(self.detokenize(prompt))
            return super().open_session(prompt)

        def tokenize(self, text: str, **kw):  # type: ignore[no-untyped-def]
            self.seen.append(text)
            return super().tokenize(text, **kw)

    (p,) = problems(1)
    engine = RecordingEngine("smollm2-135m", n_ctx=2048, n_seq_max=4)
    engine.seen = []
    gen = LlamaCppGenerator(engine)
    try:
        res = asyncio.run(asolve(p, generator=gen, reward=make_reward("reference"), method="pf",
                                 budget=2, seed=0, max_steps=2, max_step_tokens=24))
    finally:
        engine.close()
    assert res.candidates
    assert any(p.question[:40] in s for s in engine.seen)
    assert not [x for s in engine.seen for x in leaks(s, p)]
