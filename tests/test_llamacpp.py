"""The batched llama.cpp engine and generator, on the real ``smollm2-135m`` (engine mechanics).

Pure pieces (step text splitting, sampling) are tested without a model; everything else runs
the real model: forking vs re-decoding, stops, releases, cross-session batching, seeds, and
an end-to-end ``solve``.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import pytest

import particlescale
from engines import engine_for
from particlescale.backends.llamacpp.sampling import sample_row, sample_rows
from particlescale.backends.llamacpp.steptext import StepText, utf8_complete_prefix
from particlescale.prompts import DEFAULT_SYSTEM_PROMPT
from particlescale.protocols import SamplingParams
from particlescale.testing.scripted import ScriptedReward
from particlescale.types import Particle, Problem, Usage

MODEL = "smollm2-135m"
NEVER = "@@@@"  # a delimiter the model does not write: steps end at EOS or the token cap


# ------------------------------------------------------------------ pure pieces (no model)


def test_delimiter_split_across_tokens():
    st = StepText("\n\n")
    assert st.add(b"Hello") == -1
    assert st.add(b" world.\n") == -1
    at = st.add(b"\nThe")  # the delimiter spans two tokens; "The" follows inside the token
    assert at == len(b"Hello world.")
    text, carry = st.split(at)
    assert text == "Hello world." and carry == b"The"


def test_delimiter_inside_one_token_and_leading_whitespace():
    st = StepText("\n\n", carry=b"\n\n")  # carried whitespace cannot end the next step
    assert st.add(b"\n\n") == -1
    at = st.add(b"x.\n\n\n")
    text, carry = st.split(at)
    assert text == "\n\n\n\nx." and carry == b"\n"


def test_multibyte_character_split_over_tokens():
    st = StepText("\n\n")
    st.add(b"Caf" + b"\xc3")
    assert utf8_complete_prefix(st.buf) == 3
    text, carry = st.cut(final=False)
    assert text == "Caf" and carry == b"\xc3"  # half a character is carried, not mangled
    st = StepText("\n\n", carry=carry)
    at = st.add(b"\xa9 ok\n\n")
    assert st.split(at)[0] == "é ok"


def test_sampling_greedy_topp_and_logprob():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], dtype=np.float32))
    tok, lp = sample_row(logits[0], 0.0, 1.0, 0.99)
    assert tok == 0 and lp == pytest.approx(np.log(0.5), abs=1e-6)
    # inverse CDF: u in [0.5, 0.8) picks token 1; top-p 0.8 keeps {0, 1} only
    assert sample_row(logits[0], 1.0, 1.0, 0.6)[0] == 1
    assert sample_row(logits[0], 1.0, 1.0, 0.97)[0] == 3
    assert sample_row(logits[0], 1.0, 0.8, 0.97)[0] == 1
    # frequencies match the tempered distribution
    rng = np.random.default_rng(0)
    n = 20000
    toks, lps = sample_rows(np.repeat(logits, n, 0), np.full(n, 0.5), np.ones(n), rng.random(n))
    p = np.array([0.5, 0.3, 0.15, 0.05]) ** 2
    p /= p.sum()
    freq = np.bincount(toks, minlength=4) / n
    assert np.allclose(freq, p, atol=0.015)
    # the returned log-prob is the model's own (temperature 1), whatever the sampling temperature
    assert np.allclose(lps, np.log([0.5, 0.3, 0.15, 0.05])[toks], atol=1e-5)


# ------------------------------------------------------------------ real model

@pytest.fixture(scope="module")
def engine():
    yield from engine_for(MODEL, n_ctx=8192, n_seq_max=32)


@pytest.fixture
def gen(engine):
    from particlescale.backends.llamacpp import LlamaCppGenerator

    return LlamaCppGenerator(engine)


def open_session(gen, seed=0, question="What is 12 times 4?", **params):
    usage = Usage()
    s = gen.session(Problem(question), SamplingParams(**params), np.random.default_rng(seed),
                    usage)
    return s, usage


def child(parent: Particle, step, pid: int) -> Particle:
    return Particle(id=pid, steps=(*parent.steps, step), parent=parent.id)


@pytest.mark.model
async def test_fork_gives_the_same_tokens_as_redecoding(gen, engine):
    s, usage = open_session(gen, seed=3, max_step_tokens=24)
    [[first]] = await s.extend([Particle(0)], [1])
    p1 = child(Particle(0), first, 1)
    h1 = first.handle
    assert h1.resident

    def texts(steps):
        return [(st.text, st.tokens, st.finish) for st in steps[0]]

    s.rng = np.random.default_rng(7)
    forked = await s.extend([p1], [3])  # KV copied from the parent's sequence
    assert not h1.resident and h1.state == "consumed"
    s.rng = np.random.default_rng(7)
    before = usage.prompt_tokens
    rebuilt = await s.extend([p1], [3])  # handle consumed: the sequence is rebuilt from tokens
    assert usage.prompt_tokens - before == len(h1.tokens) - 1  # the re-read is counted
    assert texts(rebuilt) == texts(forked)
    assert [st.logprob for st in rebuilt[0]] == pytest.approx([st.logprob for st in forked[0]],
                                                               abs=1e-2)
    if engine.tokenize(first.text + ("\n\n" if first.finish == "step" else "")) == list(h1.tokens):
        s.rng = np.random.default_rng(7)
        from_text = await s.extend([Particle(1, steps=(replace(first, handle=None),))], [3])
        assert texts(from_text) == texts(forked)
    await s.aclose()


@pytest.mark.model
async def test_forked_distribution_matches_redecoded_prompt(engine):
    """Next-token log-probs are the same whether the shared prefix is forked, the prompt is
    decoded alone, or a cached prompt is reused; the cache spares the re-decode."""
    vocab = list(range(engine.n_vocab))
    prompt = engine.chat_tokens([{"role": "user", "content": "Name three colours."}])
    a = prompt + engine.tokenize("Red, green")
    b = prompt + engine.tokenize("Blue, yellow")
    both = await engine.next_token_logprobs([a, b], vocab)  # prefix decoded once, forked
    assert np.allclose(np.exp(both).sum(axis=1), 1.0, atol=1e-3)
    engine.clear_cache()
    alone = np.vstack([await engine.next_token_logprobs([x], vocab) for x in (a, b)])
    top = np.argsort(-alone[0])[:50]
    assert np.abs(both - alone)[:, top].max() < 0.05
    saved0 = engine.stats.cached_prefix_tokens
    longer = a + engine.tokenize(", blue")  # extends a cached prompt: only the tail is decoded
    again = await engine.next_token_logprobs([a, longer], vocab)
    assert engine.stats.cached_prefix_tokens - saved0 == (len(a) - 1) + len(a)
    assert np.abs(again[0] - alone[0])[top].max() < 0.05
    assert engine.cached_sequences >= 2
    engine.clear_cache()
    await engine.sync()
    assert engine.cached_sequences == 0


@pytest.mark.model
async def test_root_is_reused_by_later_extends(gen):
    """Extending the empty prefix again (particle Gibbs sweeps, restarts) forks the cached
    prompt: nothing is re-decoded."""
    s, usage = open_session(gen, delimiter=NEVER, max_step_tokens=4)
    await s.extend([Particle(0)], [2])
    assert usage.prompt_tokens == len(s.prompt)
    again = await asyncio.wait_for(s.extend([Particle(0)], [3]), timeout=60)
    assert [st.tokens for st in again[0]] == [4, 4, 4]
    assert usage.prompt_tokens == len(s.prompt)
    await s.aclose()


@pytest.mark.model
async def test_steps_end_at_delimiter_spanning_tokens(gen, engine):
    # "e " ends words like "the" and starts the next word's token: it spans token boundaries.
    s, _ = open_session(gen, seed=1, delimiter="e ", max_step_tokens=40,
                        question="Describe the sea in two sentences.")
    steps = await s.extend([Particle(0)], [6])
    seen = 0
    for st in steps[0]:
        assert "e " not in st.text.lstrip()
        if st.finish == "step":
            seen += 1
            assert st.text.rstrip()
            # text + delimiter + carry is exactly what the sampled tokens spell
            spelled = engine.detokenize(st.handle.tokens)
            assert spelled == st.text + "e " + st.handle.carry.decode("utf-8", "replace")
    assert seen >= 3
    await s.aclose()


@pytest.mark.model
async def test_eos_and_length_stops(gen):
    s, usage = open_session(gen, temperature=0.0, delimiter=NEVER, max_step_tokens=200,
                            question="Reply with exactly one word: hello")
    [[st]] = await s.extend([Particle(0)], [1])
    assert st.finish == "eos"
    assert "<|im_end|>" not in st.text and st.text.strip()
    assert st.tokens == usage.generated_tokens
    await s.aclose()

    s, usage = open_session(gen, delimiter=NEVER, max_step_tokens=5)
    steps = await s.extend([Particle(0)], [3])
    assert all(st.finish == "length" and st.tokens == 5 for st in steps[0])
    assert usage.generated_tokens == 15 and usage.lm_calls == 1
    await s.aclose()


@pytest.mark.model
async def test_release_and_close_free_every_sequence(gen, engine):
    await engine.sync()
    base = engine.live_sequences
    s, _ = open_session(gen, delimiter=NEVER, max_step_tokens=4)
    steps = await s.extend([Particle(0)], [4])
    kids = [child(Particle(0), st, i + 1) for i, st in enumerate(steps[0])]
    await engine.sync()
    assert engine.live_sequences == base + 5  # root (the prompt) + 4 particles
    s.release(kids[:2])
    s.release(kids[:2])  # idempotent
    s.release([Particle(99), Particle(98, steps=(replace(steps[0][3], handle=object()),))])
    await engine.sync()
    assert engine.live_sequences == base + 3
    assert not kids[0].handle.resident and kids[2].handle.resident
    await s.aclose()
    await engine.sync()
    assert engine.live_sequences == base


@pytest.mark.model
async def test_two_problems_share_each_decode(gen, engine):
    a, ua = open_session(gen, seed=1, delimiter=NEVER, max_step_tokens=16)
    b, ub = open_session(gen, seed=2, delimiter=NEVER, max_step_tokens=16,
                         question="Write a long story about a dragon.")
    engine.stats.max_sessions_per_decode = 0
    calls0, toks0 = engine.stats.decode_calls, engine.stats.decoded_tokens
    sa, sb = await asyncio.gather(a.extend([Particle(0)], [4]), b.extend([Particle(0)], [4]))
    calls = engine.stats.decode_calls - calls0
    decoded = engine.stats.decoded_tokens - toks0
    assert engine.stats.max_sessions_per_decode == 2
    # 8 sequences x <= 16 tokens: one decode per token for all of them (+ the prompt reads),
    # not one per sequence
    generated = ua.generated_tokens + ub.generated_tokens
    assert generated == sum(st.tokens for st in sa[0] + sb[0]) > 8 * 8
    assert calls <= 16 + 2
    # each sampled token is decoded once, except the last of each step (decoded on extend)
    assert decoded == ua.prompt_tokens + ub.prompt_tokens + generated - 8
    await a.aclose()
    await b.aclose()


@pytest.mark.model
async def test_event_loop_stays_responsive(gen):
    """Decoding runs on the engine thread (GIL released in llama_decode): the loop ticks on."""
    s, _ = open_session(gen, delimiter=NEVER, max_step_tokens=48)
    gaps: list[float] = []
    done = asyncio.Event()

    async def heartbeat():
        loop = asyncio.get_running_loop()
        last = loop.time()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = loop.time()
            gaps.append(now - last)
            last = now

    beat = asyncio.create_task(heartbeat())
    t0 = asyncio.get_running_loop().time()
    await s.extend([Particle(0)], [4])
    elapsed = asyncio.get_running_loop().time() - t0
    done.set()
    await beat
    assert len(gaps) > 10 and max(gaps) < max(0.5, elapsed / 4)
    await s.aclose()


@pytest.mark.model
async def test_seed_reproduces_and_differs(gen):
    async def run(seed):
        s, _ = open_session(gen, seed=seed, max_step_tokens=24)
        steps = await s.extend([Particle(0)], [4])
        kids = [child(Particle(0), st, i + 1) for i, st in enumerate(steps[0])]
        more = await s.extend(kids[:2], [2, 1])
        await s.aclose()
        return [st.text for st in steps[0]] + [st.text for g in more for st in g]

    assert await run(5) == await run(5)
    assert await run(5) != await run(6)


@pytest.mark.model
async def test_more_particles_than_sequences_queue(engine):
    from particlescale.backends.llamacpp import LlamaCppGenerator, LlamaEngine

    small = LlamaEngine(MODEL, n_ctx=4096, n_seq_max=4)
    try:
        g = LlamaCppGenerator(small)
        s, usage = open_session(g, seed=0, delimiter=NEVER, max_step_tokens=6)
        steps = await s.extend([Particle(0)], [10])
        assert len(steps[0]) == 10 and all(st.tokens == 6 for st in steps[0])
        kids = [child(Particle(0), st, i + 1) for i, st in enumerate(steps[0])]
        again = await s.extend(kids, [1] * 10)  # most were evicted: rebuilt from their tokens
        assert [len(g_) for g_ in again] == [1] * 10
        assert usage.prompt_tokens > len(s.prompt)  # the rebuilds are counted
        assert small.live_sequences <= 4
        await s.aclose()
        await small.sync()
        assert small.live_sequences == 0
    finally:
        small.close()


@pytest.mark.model
async def test_hidden_state_features_from_the_same_decode():
    from particlescale.backends.llamacpp import LlamaCppGenerator, LlamaEngine

    eng = LlamaEngine(MODEL, n_ctx=2048, n_seq_max=8, embeddings=True)
    try:
        s, _ = open_session(LlamaCppGenerator(eng), seed=0, max_step_tokens=12)
        calls0 = eng.stats.decode_calls
        steps = await s.extend([Particle(0)], [3])
        for st in steps[0]:
            assert st.features is not None and st.features.shape == (eng.n_embd,)
            assert np.isfinite(st.features).all() and np.abs(st.features).sum() > 0
        assert eng.stats.decode_calls - calls0 <= 1 + 12  # no extra pass for the features
        await s.aclose()
    finally:
        eng.close()


@pytest.mark.model
def test_solve_end_to_end_with_pf(engine):
    from particlescale.backends.llamacpp import LlamaCppGenerator

    gen = LlamaCppGenerator(engine)
    reward = ScriptedReward(lambda texts: 0.5 + 0.4 * ("4" in texts[-1]))
    result = particlescale.solve("What is 2 + 2?", generator=gen, reward=reward, method="pf",
                                 budget=4, seed=0, max_steps=3, max_step_tokens=32)
    assert result.candidates and result.usage.generated_tokens > 0
    assert result.usage.lm_calls >= 1
    # the prompt is read once; resampling re-decodes nothing
    prompt_len = len(engine.chat_tokens([
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
        {"role": "user", "content": "What is 2 + 2?"}]))
    assert result.usage.prompt_tokens == prompt_len
    asyncio.run(engine.sync())
    assert engine.live_sequences == 0

    # particle Gibbs: several sweeps from the same (cached) prompt, a reference re-read
    result = particlescale.solve("What is 2 + 2?", generator=gen, reward=reward, method="pg",
                                 budget=6, iterations=2, seed=0, max_steps=2, max_step_tokens=16)
    assert result.candidates
    asyncio.run(engine.sync())
    assert engine.live_sequences == 0


def _final_at(max_steps: int):
    return lambda st, n: st.finish == "eos" or n >= max_steps


@pytest.mark.model
async def test_extend_to_end_runs_each_child_to_its_end_without_a_step_barrier(gen, engine):
    s, usage = open_session(gen, seed=3, max_step_tokens=12)
    calls0 = engine.stats.decode_calls
    (runs,) = await s.extend_to_end([Particle(0)], [4], _final_at(4))
    calls = engine.stats.decode_calls - calls0
    assert len(runs) == 4
    lengths = [sum(st.tokens for st in run) for run in runs]
    assert usage.generated_tokens == sum(lengths) and usage.lm_calls == 1
    for run in runs:
        assert 1 <= len(run) <= 4
        assert run[-1].finish == "eos" or len(run) == 4
        assert all(st.finish != "eos" for st in run[:-1])
        assert all(st.handle is None for st in run[:-1]) and run[-1].handle is not None
        # the steps are the sequence's own tokens, cut at the delimiter
        text = engine.detokenize(run[-1].handle.tokens)
        joined = "".join(st.text + ("\n\n" if st.finish == "step" else "") for st in run)
        assert text.startswith(joined.rstrip("\n")), (text, joined)
    # No step barrier: every decode call carries a token of every child still running, so
    # the calls are those of the longest child (plus the prompt), not the sum over steps of
    # each step's longest child.
    assert sum(len(run) for run in runs) > 4  # several steps: a barrier would have mattered
    assert calls <= max(lengths) + 2, (calls, lengths)
    s.release([Particle(0, steps=tuple(run)) for run in runs])
    await s.aclose()


@pytest.mark.model
async def test_extend_to_end_reproduces_with_its_seed():
    # A fresh engine each time: the same work in the same order is bit-reproducible. (Shared
    # work is not quite: llama.cpp's CPU kernels round differently for different batch
    # shapes, so a prompt read from the cache or decoded beside another session's tokens
    # can shift a logit by ~1e-3 and, now and then, a sampled token.)
    from particlescale.backends.llamacpp import LlamaCppGenerator, LlamaEngine

    async def run(seed):
        eng = LlamaEngine(MODEL, n_ctx=4096, n_seq_max=8)
        try:
            s, _ = open_session(LlamaCppGenerator(eng), seed=seed, max_step_tokens=16)
            (runs,) = await s.extend_to_end([Particle(0)], [3], _final_at(3))
            await s.aclose()
            return [[st.text for st in r] for r in runs]
        finally:
            eng.close()

    first = await run(5)
    assert await run(5) == first
    assert await run(6) != first
