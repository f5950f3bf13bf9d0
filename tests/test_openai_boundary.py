"""Where a step ends over HTTP (``boundary``): steps read from streams, the delimiter written
again before it is resumed (``regenerate``), and the tokeniser probe that picks between them.

The statistical check that these make step-wise generation the language model, with a real
model and server, is tests/test_stepwise_is_the_lm.py; here the mechanics run against the fake
vLLM server over real HTTP (its streams, and llama_cpp.server's ``/extras/tokenize``).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from engines import need
from particlescale.backends.openai import OpenAIGenerator, streamed, wire
from particlescale.backends.openai import boundary as boundaries
from particlescale.errors import ConfigError
from particlescale.protocols import SamplingParams
from particlescale.testing.fake_vllm import FakeVLLM
from particlescale.types import Particle, Problem, Step, Usage

MODEL = "Qwen/Qwen2.5-Math-1.5B-Instruct"
QUESTION = "What is 40 + 2?"


async def events(*items):
    """A stream: strings are pieces, (text, finish_reason) pairs carry a finish."""
    for it in items:
        text, finish = (it, None) if isinstance(it, str) else it
        yield {"choices": [{"index": 0, "text": text, "finish_reason": finish}]}


async def read(*items, head=None, cap=100):
    return await streamed.read_step(events(*items), "\n\n", cap, head=head)


async def test_a_streamed_step_ends_at_the_delimiter_by_the_engines_rules():
    got = await read("Add", " them", ".", "\n", "\n", "More")
    assert got.step == Step("Add them.", tokens=5, finish="step")
    # a delimiter with only whitespace before it does not end a step (backends/steptext.py)
    got = await read("\n\n", "Hi", "\n\n")
    assert (got.step.text, got.step.finish) == ("\n\nHi", "step")
    # without stop strings, finish_reason "stop" can only be the end of the sequence
    got = await read("The answer is 5.", ("", "stop"))
    assert (got.step.text, got.step.finish) == ("The answer is 5.", "eos")
    got = await read("a", " b", " c", " d", cap=3)
    assert (got.step.text, got.step.finish, got.step.tokens) == ("a b c", "length", 3)
    got = await read("a", ("", "length"))
    assert got.step.finish == "length"
    with pytest.raises(streamed.Interrupted):  # cut off by the server: no finish_reason
        await read("a", " b")


async def test_regenerate_accepts_only_streams_that_write_the_delimiter_first():
    got = await read("\n", "\n", "The", " end", "\n\n", head="\n\n")
    assert got.step == Step("The end", tokens=3, finish="step")  # the head is not counted
    got = await read("\n\n\n", "x", "\n\n", head="\n\n")  # a third newline starts the step
    assert got.step.text == "\nx"
    got = await read("\n\n", ("", "stop"), head="\n\n")  # the end right after the delimiter
    assert (got.step.text, got.step.finish) == ("", "eos")
    # dropped as soon as a piece rules the delimiter out (the caller closes the stream)
    for items, pieces in ((["\n", "Hello", "\n\n"], 2), ([" more", "\n\n"], 1),
                          (["\n", ("", "stop")], 1), ([("", "stop")], 0)):
        got = await read(*items, head="\n\n")
        assert (got.step, got.pieces) == (None, pieces), items


GPT2 = r"\s+(?!\S)|\s+|[^\s.:]+|[.:]"  # a whitespace run leaves its last one to a word
QWEN = r"[.:]?\s*[\r\n]+|\s+(?!\S)|\s+|[^\s.:]+|[.:]"  # newlines one piece; ".\n\n" too


def toy_tokenise(pattern: str, text: str) -> list[str]:
    return re.findall(pattern, text)


def toy_tokens(pattern: str) -> dict[str, list[int]]:
    vocab: dict[str, int] = {}
    return {t: [vocab.setdefault(p, len(vocab)) for p in toy_tokenise(pattern, t)]
            for t in boundaries.probe_texts("\n\n")}


def test_the_probe_tells_gpt2_style_tokenisers_from_qwen_style_ones():
    assert toy_tokenise(GPT2, "so.\n\nThe") == ["so", ".", "\n", "\n", "The"]
    assert toy_tokenise(GPT2, "so.\n\n") == ["so", ".", "\n\n"]
    assert toy_tokenise(QWEN, "so.\n\nThe") == ["so", ".\n\n", "The"]
    gpt2 = boundaries.classify(toy_tokens(GPT2), "\n\n")
    qwen = boundaries.classify(toy_tokens(QWEN), "\n\n")
    assert (gpt2.after, gpt2.before) == (False, True)
    assert (qwen.after, qwen.before) == (True, False)


@pytest.mark.parametrize(("option", "kind", "tok", "mode", "exact"), [
    # auto picks an exact mode wherever the tokeniser could be probed
    ("auto", "vllm", "gpt2", "regenerate", True),
    ("auto", "vllm", "qwen", "stop", True),
    ("auto", "llama-cpp-python", "gpt2", "regenerate", True),
    ("auto", "llama-cpp-python", "qwen", "stream", True),
    ("auto", "llamacpp", "qwen", "stop", True),
    # llama-server's native route takes stop only (explicit stream/regenerate are refused
    # there), so auto keeps stop on a GPT-2-style tokeniser and says it is not exact
    ("auto", "llamacpp", "gpt2", "stop", False),
    ("auto", "openai", None, "stop", False),  # unknown server: no tokeniser, stop is EOS too
    ("auto", "sglang", None, "stop", False),
    # explicit modes are kept, and judged
    ("stop", "vllm", "gpt2", "stop", False),
    ("stream", "vllm", "gpt2", "stream", False),
    ("regenerate", "vllm", "qwen", "regenerate", False),
    ("stop", "llama-cpp-python", "qwen", "stop", False),  # finish_reason 'stop' is EOS too
    ("stream", "llama-cpp-python", "qwen", "stream", True),
])
def test_choose_labels_each_mode_exact_only_where_it_is(option, kind, tok, mode, exact):
    probed = None if tok is None else boundaries.classify(
        toy_tokens(GPT2 if tok == "gpt2" else QWEN), "\n\n")
    got = boundaries.choose(option, kind, False, probed)
    assert (got["mode"], got["exact"]) == (mode, exact), got["why"]
    assert got["why"]
    chat = boundaries.choose(option if option in ("auto", "stop") else "stop", kind, True,
                             probed)
    assert (chat["mode"], chat["exact"]) == ("stop", False) and "chat mode" in chat["why"]


@pytest.mark.model
@pytest.mark.parametrize(("model", "after", "before", "mode"), [
    ("smollm2-135m", False, True, "regenerate"),  # GPT-2 style
    ("qwen2.5-0.5b", True, False, "stream")])  # ".\n\n" is one token
def test_the_probe_on_real_tokenisers(model, after, before, mode):
    need(model)
    from particlescale.backends.llamacpp import LlamaEngine

    with LlamaEngine(model, n_ctx=256, n_seq_max=2, n_threads=1) as engine:
        tokens = {t: engine.tokenize(t, add_special=True, parse_special=True)
                  for t in boundaries.probe_texts("\n\n")}
    tok = boundaries.classify(tokens, "\n\n")
    assert (tok.after, tok.before) == (after, before)
    assert boundaries.choose("auto", "llama-cpp-python", False, tok)["mode"] == mode


# -- the generator against the fake server's streams ----------------------------------------


def gen_for(server: FakeVLLM, **kw) -> OpenAIGenerator:
    gen = OpenAIGenerator(server.v1, server.model, template="qwen", retries=1, **kw)
    for r in gen.replicas:
        r.endpoint.backoff = 0.01
    return gen


async def extend(gen, parents, children, *, seed=0, usage=None, params=None):
    session = gen.session(Problem(QUESTION), params or SamplingParams(),
                          np.random.default_rng(seed), usage or Usage())
    return await session.extend(parents, children)


def streams(server: FakeVLLM) -> list[dict]:
    return [b for b in server.bodies("/v1/completions") if b and b.get("stream")]


async def test_stream_boundary_reads_each_child_from_its_own_stream():
    with FakeVLLM(model=MODEL) as server:
        gen = gen_for(server, boundary="stream")
        usage = Usage()
        (steps,) = await extend(gen, [Particle(id=0)], [3], usage=usage)
        assert [s.finish for s in steps] == ["step"] * 3
        assert all(re.fullmatch(r"## Step 1: \d+ \+ \d+ = \d+", s.text) for s in steps)
        bodies = streams(server)
        assert len(bodies) == 3 and all(b["n"] == 1 and "stop" not in b for b in bodies)
        first = min(b["seed"] for b in bodies)
        assert sorted(b["seed"] - first for b in bodies) == [0, 1, 2]  # child j: seed + j
        assert usage.lm_calls == 3 and usage.prompt_tokens > 0 and usage.generated_tokens > 0
        await extend(gen, [Particle(id=0, steps=(steps[0],))], [1])
        assert streams(server)[-1]["prompt"].endswith(steps[0].text + "\n\n")


async def test_stream_boundary_tells_the_end_of_sequence_from_the_delimiter():
    # the official OpenAI API reports neither stop_reason nor matched_stop
    with FakeVLLM(model=MODEL, strict_openai=True,
                  lm=lambda prompt, rng: ("The answer is 42.", True)) as server:
        (steps,) = await extend(gen_for(server, boundary="stream"), [Particle(id=0)], [1])
        assert (steps[0].text, steps[0].finish) == ("The answer is 42.", "eos")
        (steps,) = await extend(gen_for(server, boundary="stop"), [Particle(id=0)], [1])
        assert steps[0].finish == "step"  # the old guess: any text is a step


def sometimes_a_blank_line(prompt: str, rng: np.random.Generator) -> tuple[str, bool]:
    if prompt.endswith("\n\n"):
        return "Next step.\n\nMore", False
    return ("\n\nNext step.\n\nMore" if rng.random() < 0.3 else " and so on.\n\nMore"), False


async def test_regenerate_resumes_before_the_delimiter_and_drops_other_streams():
    with FakeVLLM(model=MODEL, lm=sometimes_a_blank_line) as server:
        gen = gen_for(server, boundary="regenerate")
        usage = Usage()
        parent = Particle(id=0, steps=(Step("First step."),))
        (steps,) = await extend(gen, [parent], [4], usage=usage)
        assert [(s.text, s.finish) for s in steps] == [("Next step.", "step")] * 4
        bodies = streams(server)
        assert all(b["prompt"].endswith("First step.") for b in bodies)  # no delimiter
        assert len(bodies) > 4 and usage.lm_calls == len(bodies)  # dropped streams count
        assert len({b["seed"] for b in bodies}) == len(bodies)  # every try a fresh seed
        # a root, or a parent cut by the token cap, has no delimiter to write again
        await extend(gen, [Particle(id=0, steps=(Step("Cut", finish="length"),))], [1])
        assert streams(server)[-1]["prompt"].endswith("Cut")


async def test_regenerate_falls_back_after_the_model_never_writes_the_delimiter(caplog):
    with FakeVLLM(model=MODEL, lm=lambda prompt, rng: (
            "Resumed.\n\n" if prompt.endswith("\n\n") else " never a blank line", False)) as srv:
        gen = gen_for(srv, boundary="regenerate")
        parent = Particle(id=0, steps=(Step("First step."),))
        params = SamplingParams(temperature=0.0)  # greedy: one try is all there is
        (steps,) = await extend(gen, [parent], [2], params=params)
        assert [s.text for s in steps] == ["Resumed.", "Resumed."]
        assert len(streams(srv)) == 2 and "did not write the delimiter again" in caplog.text
        # ... and the run says so (Result.info["step_boundary"])
        session = gen.session(Problem(QUESTION), params, np.random.default_rng(0), Usage())
        await session.extend([parent], [1])
        info = session.step_boundary
        assert info["mode"] == "regenerate" and info["gave_up"] == 1
        assert info["exact"] is False and "did not write it again" in info["why"]


async def test_llama_cpp_python_gets_its_sampling_fields_one_stream_at_a_time():
    with FakeVLLM(model="smollm2-135m", owned_by="me") as server:
        gen = gen_for(server)
        ep = gen.replicas[0].endpoint
        events, open_now, most = ep.events, [0], [0]

        async def counted(path, body):  # how many streams the client holds open at once
            open_now[0] += 1
            most[0] = max(most[0], open_now[0])
            try:
                async for e in events(path, body):
                    yield e
            finally:
                open_now[0] -= 1

        ep.events = counted
        usage = Usage()
        await extend(gen, [Particle(id=0), Particle(id=1)], [2, 2], usage=usage)
        assert gen.replicas[0].kind == "llama-cpp-python"
        # the fake tokeniser keeps a run of newlines as one piece everywhere: stream
        assert gen._boundaries[(0, "\n\n")]["mode"] == "stream"
        bodies = streams(server)
        assert len(bodies) == 4
        for b in bodies:
            assert (b["top_k"], b["min_p"], b["repeat_penalty"], b["mirostat_mode"]) == \
                (0, 0.0, 1.0, 0)
            assert "stop" not in b and "stream_options" not in b
        # one at a time (it serves one: a second request would cut the first stream off);
        # the server may still be winding a closed stream down when the next one arrives
        assert most[0] == 1
        assert usage.prompt_tokens > 0  # counted with /extras/tokenize/count


def test_kind_and_bodies_of_llama_cpp_python():
    assert wire.kind_from_owner("me") == "llama-cpp-python"
    params = SamplingParams()
    body = wire.stream_body("vllm", "m", "p", params, 7, 99)
    assert body["stream"] is True and body["max_tokens"] == 99 and "stop" not in body
    assert body["stream_options"] == {"include_usage": True} and body["top_k"] == -1
    assert wire.parse_stream_event({"choices": [], "usage": {"prompt_tokens": 3,
                                                             "completion_tokens": 4}}) == \
        ("", None, 3, 4)


async def test_bad_boundary_options_are_config_errors():
    with pytest.raises(ConfigError, match="boundary: unknown 'later'; choose one of auto, "
                                          "stop, stream, regenerate"):
        OpenAIGenerator("http://h/v1", MODEL, boundary="later")
    with pytest.raises(ConfigError, match="mode='completions'"):
        OpenAIGenerator("http://h/v1", MODEL, boundary="regenerate", mode="chat")
    with FakeVLLM(model=MODEL) as server:
        gen = gen_for(server, boundary="stream", server_kind="llamacpp")
        with pytest.raises(ConfigError, match="native /completion"):
            await extend(gen, [Particle(id=0)], [1])
        assert server.bodies("/completion") == []


def test_the_step_boundary_flag_reaches_the_generator_and_is_checked():
    from particlescale.backends.registry import client_options, make_generator

    opts = client_options("openai:http://h/v1", step_boundary="regenerate")
    assert opts == {"boundary": "regenerate"}
    assert make_generator("openai:http://h/v1", model=MODEL, **opts).boundary == "regenerate"
    with pytest.raises(ConfigError, match="--step-boundary: unknown 'later'; choose one of "
                                          "auto, stop, stream, regenerate"):
        client_options("openai:http://h/v1", step_boundary="later")
    with pytest.raises(ConfigError, match="--step-boundary: only for generators on a server"):
        client_options("llamacpp:", step_boundary="stop")


async def test_an_unknown_server_keeps_stop_and_is_labelled_inexact():
    # the official OpenAI API: no tokeniser to probe, finish_reason "stop" at EOS too
    with FakeVLLM(model=MODEL, strict_openai=True) as server:
        gen = gen_for(server)
        session = gen.session(Problem(QUESTION), SamplingParams(), np.random.default_rng(0),
                              Usage())
        await session.extend([Particle(id=0)], [2])
        info = session.step_boundary
        assert (info["mode"], info["exact"]) == ("stop", False)
        assert "could not be probed" in info["why"] and "alike" in info["why"]
        assert server.bodies("/tokenize") == [] and streams(server) == []
    # a server taken for vLLM without a /tokenize route (404): judged without a tokeniser
    with FakeVLLM(model=MODEL, strict_openai=True) as server:
        gen = gen_for(server, server_kind="vllm")
        assert await boundaries.probe(gen.replicas[0].endpoint, "vllm", MODEL, "\n\n") is None
