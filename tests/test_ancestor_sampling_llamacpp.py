"""Continuation scoring on the embedded llama.cpp engine (ancestor sampling), on the real
``smollm2-135m``.

The reference computation is independent of the engine's scheduler: a separate llama.cpp
context decodes prompt + prefix + continuation as one batch with every logits row on, and
numpy takes the log-softmax (or the tempered, top-p truncated distribution, with its own
sort) of each row. llama.cpp's CPU kernels are not batch-invariant: the same token's logits
differ by up to ~0.05 nats when it is decoded in another batch composition or after a cached
prefix. So the exact comparisons (1e-6) use a fresh cache and one context, which the engine
decodes in the same single batch as the reference; the batched, cached and row-limited paths
are compared with a tolerance of 0.1 nats per token (an off-by-one row or a wrong
temperature is off by whole nats per token).
"""

from __future__ import annotations

import numpy as np
import pytest

from engines import engine_for
from particlescale import solve
from particlescale.backends.llamacpp.sampling import proposal_logprob
from particlescale.protocols import SamplingParams
from particlescale.testing.scripted import ScriptedReward
from particlescale.types import Particle, Problem, Step, Usage

MODEL = "smollm2-135m"
QUESTION = "What is 12 times 4?"
PREFIXES = ["First, we multiply.", "We have 12 groups of 4.", "Let me think."]
CONTINUATION = ["12 times 4 is 48.", "So the answer is 48."]


@pytest.fixture(scope="module")
def engine():
    yield from engine_for(MODEL, n_ctx=4096, n_seq_max=32)


@pytest.fixture(scope="module")
def reference_model(engine):
    """The same GGUF loaded again, apart from the engine, for the reference computation."""
    import llama_cpp as L

    from particlescale.backends.llamacpp.engine import repack_weights
    from particlescale.models import resolve

    mp = L.llama_model_default_params()
    mp.use_extra_bufts = repack_weights(L)
    model = L.llama_model_load_from_file(str(resolve(MODEL)).encode(), mp)
    yield model
    L.llama_model_free(model)


def all_logits(model, tokens: list[int]) -> np.ndarray:
    """Logits of every position of ``tokens``, decoded as one batch in a fresh context."""
    import llama_cpp as L

    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = 4096, 512, 512, 1
    ctx = L.llama_init_from_model(model, cp)
    batch = L.llama_batch_init(len(tokens), 0, 1)
    try:
        for i, t in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = t, i, 1, 1
            batch.seq_id[i][0] = 0
        batch.n_tokens = len(tokens)
        assert L.llama_decode(ctx, batch) == 0
        n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
        return np.ctypeslib.as_array(L.llama_get_logits(ctx),
                                     shape=(len(tokens), n_vocab)).astype(np.float64)
    finally:
        L.llama_batch_free(batch)
        L.llama_free(ctx)


def reference_logq(logits: np.ndarray, temperature: float, top_p: float) -> np.ndarray:
    """Rows of log q: softmax(logits / T) restricted to the nucleus (plain sort, float64)."""
    z = logits / temperature
    logp = z - z.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    if top_p >= 1:
        return logp
    out = np.full_like(logp, -np.inf)
    for r, row in enumerate(logp):
        order = np.argsort(-row, kind="stable")
        cut = int(np.searchsorted(np.cumsum(np.exp(row[order])), top_p)) + 1
        keep = order[:cut]
        out[r, keep] = row[keep] - np.log(np.exp(row[keep]).sum())
    return out


def expected(engine, model, context: list[int], cont: list[int], *, eos: bool,
             temperature: float = 1.0, top_p: float = 1.0) -> float:
    logq = reference_logq(all_logits(model, context + cont), temperature, top_p)
    logq = logq[len(context) - 1:]
    total = sum(logq[j, t] for j, t in enumerate(cont))
    if eos:
        total += np.log(np.exp(logq[len(cont), engine.eog_tokens()]).sum())
    return float(total)


def prompt_of(engine) -> list[int]:
    from particlescale.prompts import DEFAULT_SYSTEM_PROMPT

    return engine.chat_tokens([{"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
                               {"role": "user", "content": QUESTION}])


def test_proposal_logprob_matches_the_sampler_distribution() -> None:
    """Pure: log q of one token and of a set, against a direct computation."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=500).astype(np.float32) * 3
    for temperature, top_p in [(1.0, 1.0), (0.8, 1.0), (0.7, 0.9), (1.3, 0.5)]:
        ref = reference_logq(logits[None, :].astype(np.float64), temperature, top_p)[0]
        for tok in np.argsort(-logits)[[0, 1, 5, 40, 300]]:
            got = proposal_logprob(logits, int(tok), temperature, top_p)
            assert got == pytest.approx(ref[tok], abs=1e-5) or got == ref[tok] == -np.inf
        ids = np.argsort(-logits)[[0, 3, 250]]
        with np.errstate(divide="ignore"):
            want = np.log(np.exp(ref[ids]).sum())
        assert proposal_logprob(logits, ids, temperature, top_p) == pytest.approx(want, abs=1e-5)
    best = int(np.argmax(logits))
    assert proposal_logprob(logits, best, 0.0, 1.0) == 0.0
    assert proposal_logprob(logits, best - 1, 0.0, 1.0) == -np.inf


@pytest.mark.model
@pytest.mark.parametrize(("temperature", "top_p", "eos"), [(1.0, 1.0, False), (1.0, 1.0, True),
                                                           (0.8, 0.9, True)])
async def test_single_context_equals_one_batch_reference(engine, reference_model, temperature,
                                                         top_p, eos):
    """Fresh cache, one context: the engine decodes it in one batch, as the reference does."""
    engine.clear_cache()
    context = prompt_of(engine) + engine.tokenize(PREFIXES[0] + "\n\n")
    cont = engine.tokenize("\n\n".join(CONTINUATION))
    out, decoded = await engine.continuation_logprobs(
        [context], [cont], eos=eos, params=SamplingParams(temperature=temperature, top_p=top_p))
    assert decoded == len(context) + len(cont) - (not eos)
    want = expected(engine, reference_model, context, cont, eos=eos, temperature=temperature,
                    top_p=top_p)
    assert out[0] == pytest.approx(want, abs=1e-6)


@pytest.mark.model
async def test_batched_cached_and_row_limited_scoring(engine, reference_model):
    """Several contexts (common prefix decoded once, then cached) on an engine with 4 output
    rows per decode, so each continuation takes several ticks; within 0.1 nats per token."""
    from particlescale.backends.llamacpp import LlamaEngine

    small = LlamaEngine(MODEL, n_ctx=4096, n_seq_max=4)
    try:
        prompt = prompt_of(small)
        contexts = [prompt + small.tokenize(p + "\n\n") for p in PREFIXES]
        cont = small.tokenize("\n\n".join(CONTINUATION))
        params = SamplingParams(temperature=0.8)
        ticks = small.stats.decode_calls
        out, _ = await small.continuation_logprobs(contexts, [cont] * 3, eos=True, params=params)
        ticks = small.stats.decode_calls - ticks
        assert ticks >= 3 * (len(cont) + 1) / 4  # never more than 4 rows in one decode
        want = [expected(small, reference_model, c, cont, eos=True, temperature=0.8)
                for c in contexts]
        assert np.abs(out - want).max() < 0.1 * (len(cont) + 1), (out, want)
        assert len({round(x, 3) for x in out}) == 3  # the prefixes matter
        # again, now from the cache: the same values within the same tolerance
        again, decoded = await small.continuation_logprobs(contexts, [cont] * 3, eos=True,
                                                           params=params)
        assert decoded < sum(len(c) for c in contexts)
        assert np.abs(again - want).max() < 0.1 * (len(cont) + 1)
        assert small.live_sequences == 0
    finally:
        small.close()


@pytest.mark.model
async def test_session_scores_in_its_text_layout_and_keeps_handles(engine, reference_model):
    from particlescale.backends.llamacpp import LlamaCppGenerator

    gen = LlamaCppGenerator(engine)
    usage = Usage()
    session = gen.session(Problem(QUESTION), SamplingParams(temperature=1.0, max_step_tokens=24),
                          np.random.default_rng(0), usage)
    delim = "\n\n"
    cont = (Step(CONTINUATION[0]), Step(CONTINUATION[1], finish="eos"))
    cont_text = CONTINUATION[0] + delim + CONTINUATION[1]

    def want(parent: Particle, model=reference_model) -> float:
        own = "".join(s.text + (delim if s.finish == "step" else "") for s in parent.steps)
        own_tokens = engine.tokenize(own)
        both = engine.tokenize(own + cont_text)
        # the continuation's tokens: past the prefix's in the joint text, or its own tokens
        # when the tokeniser merges across the boundary (a step cut by the token cap)
        cont_tokens = (both[len(own_tokens):] if both[: len(own_tokens)] == own_tokens
                       else engine.tokenize(cont_text))
        return expected(engine, model, session.prompt + own_tokens, cont_tokens, eos=True)

    try:
        # a prefix given as text, nothing else in the KV cache: exact
        engine.clear_cache()
        text_parent = Particle(id=1, steps=(Step(PREFIXES[1]),))
        got = await session.continuation_logprob([text_parent], cont)
        assert got[0] == pytest.approx(want(text_parent), abs=1e-6)
        assert usage.prompt_tokens > 0 and usage.lm_calls == 1
        # prefixes that hold KV sequences: scored within tolerance, handles left alone
        (kids,) = await session.extend([Particle(id=0)], [2])
        parents = [Particle(id=i + 2, steps=(s,), parent=0) for i, s in enumerate(kids)]
        got = await session.continuation_logprob(parents, cont)
        n_tokens = len(engine.tokenize(cont_text)) + 1
        for g, p in zip(got, parents, strict=True):
            assert abs(g - want(p)) < 0.1 * n_tokens
        assert all(p.handle.state == "live" for p in parents)
        out = await session.extend(parents, [1, 1])
        assert [len(o) for o in out] == [1, 1]
        assert await session.continuation_logprob([], cont) == []
        session.release([Particle(id=9, steps=(s,)) for o in out for s in o])
    finally:
        await session.aclose()
    await engine.sync()
    assert engine.live_sequences == 0


@pytest.mark.model
def test_pg_with_ancestor_sampling_end_to_end(engine):
    from particlescale.backends.llamacpp import LlamaCppGenerator

    gen = LlamaCppGenerator(engine)
    reward = ScriptedReward(lambda texts: 0.3 + 0.6 * ("48" in texts[-1]))
    res = solve(QUESTION, generator=gen, reward=reward, method="pg", budget=6, iterations=3,
                seed=0, weights="incremental", ancestor_sampling=True, max_steps=3,
                max_step_tokens=16, temperature=1.0)
    assert len(res.info["ancestor_moves"]) == 3
    assert res.candidates and all(c.steps <= 3 for c in res.candidates)
    # the spliced references were rescored: every candidate's rewards are the reward's own
    for c in res.candidates:
        assert len(c.rewards) == c.steps
    assert engine.live_sequences == 0
