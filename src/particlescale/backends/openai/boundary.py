"""Which step boundary an OpenAI-compatible server needs, and whether it is exact.

Step-wise generation is the language model only when stopping at the delimiter and resuming
draws what one free-running generation would (issue 21, item 11). Over HTTP two things can
break it (measured in tests/test_stepwise_is_the_lm.py):

* **The end of a step.** ``python -m llama_cpp.server`` and the OpenAI API answer
  ``finish_reason="stop"`` both at a stop string and at the end of the sequence; the
  ``stop`` boundary then has to guess, and turns every final step into a step.
* **The token boundary.** The next request re-tokenises the text, which *ends* with the
  delimiter. Tokenisers with GPT-2's pre-tokeniser (SmolLM2, GPT-2, ...) write a blank line
  before a word as two ``"\\n"`` tokens but read a trailing ``"\\n\\n"`` as one token, after
  which smollm2-135m mostly repeats the question (28 of 37 second steps started with "2"
  against 0 free-running). Qwen2 and Llama 3 read ``"\\n\\n"`` (and ``".\\n\\n"``) the same
  at the end of a text as inside it.

The modes (``boundary=`` of :class:`~particlescale.backends.openai.OpenAIGenerator`,
``--step-boundary`` on the CLI):

``stop``        the server stops at the delimiter (a stop string); the next request sends the
                text with the delimiter. Exact when the server tells a stop string from the
                end of the sequence (vLLM, SGLang, llama-server) and the tokeniser reads a
                trailing delimiter as it reads it inside a text.
``stream``      one stream per child without stop strings; the client finds the delimiter
                (``streamed.py``) and closes the stream. Exact when the tokeniser reads a
                trailing delimiter as inside a text (any server).
``regenerate``  streamed too, but the prompt stops *before* the parent's last delimiter and
                the model writes it again (streams that do not start with it are dropped:
                rejection sampling). Exact when the text before the delimiter keeps its
                tokens, as with GPT-2-style tokenisers.
``auto``        probe the server's tokeniser once per replica and delimiter (vLLM's
                ``/tokenize``, llama_cpp.server's ``/extras/tokenize``, llama-server's
                ``/tokenize``) and pick an exact mode: ``regenerate`` for GPT-2-style
                tokenisers, else ``stop`` (``stream`` on llama_cpp.server). A server with no
                tokeniser route (``openai``, SGLang) gets ``stop``, labelled not exact; so
                does llama-server with a GPT-2-style tokeniser, because it is driven through
                its native ``/completion`` route, which takes ``stop`` only.

Every :class:`~particlescale.types.Result` of an HTTP run says which was used in
``info["step_boundary"]``: ``{"mode", "exact", "why"}``, plus ``"gave_up"`` when
``regenerate`` read some steps after the delimiter because the model did not write it again.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from particlescale.backends.http import HttpEndpoint
from particlescale.backends.openai import wire
from particlescale.errors import BackendError

BOUNDARIES = ("auto", "stop", "stream", "regenerate")

# (text before a delimiter, text after it) pairs for the tokeniser probe: typical step ends
# (a full stop, a number, a colon) and step starts (a word, a number, a heading).
PROBES = (("Add 2 and 3.", "The sum is 5."), ("so x = 4", "2 + 2 = 4"),
          ("We multiply:", "## Step 2: check"))


@dataclass(frozen=True)
class Tokeniser:
    """How a tokeniser reads a text that ends with the delimiter.

    ``after``: as the start of the same text going on (Qwen2, Llama 3: yes; GPT-2: no).
    ``before``: the text before the delimiter keeps its tokens when the delimiter and more
    text follow (GPT-2: yes; Qwen2, which writes ``".\\n\\n"`` as one token: no)."""

    after: bool
    before: bool


ROUTES = {"vllm": "/tokenize", "llama-cpp-python": "/extras/tokenize", "llamacpp": "/tokenize"}


def probe_texts(delimiter: str) -> list[str]:
    """The texts :func:`classify` needs tokenised."""
    out = []
    for x, y in PROBES:
        out += [x, x + delimiter, x + delimiter + y]
    return out


def classify(tokens: dict[str, list[int]], delimiter: str) -> Tokeniser:
    """How the tokeniser reads a text ending with ``delimiter`` (:class:`Tokeniser`);
    ``tokens`` maps every text of :func:`probe_texts` to its token ids."""
    def prefix_of(a: str, b: str) -> bool:
        ta, tb = tokens[a], tokens[b]
        return tb[: len(ta)] == ta

    return Tokeniser(after=all(prefix_of(x + delimiter, x + delimiter + y) for x, y in PROBES),
                     before=all(prefix_of(x, x + delimiter + y) for x, y in PROBES))


async def probe(ep: HttpEndpoint, kind: wire.ServerKind, model: str | None,
                delimiter: str) -> Tokeniser | None:
    """Ask the server's tokeniser (:data:`ROUTES`); None for servers without one (or without
    the route)."""
    route = ROUTES.get(kind)
    if route is None:
        return None

    def body(text: str) -> dict[str, Any]:
        if kind == "vllm":
            return {"model": model, "prompt": text, "add_special_tokens": False}
        if kind == "llamacpp":
            return {"content": text}
        return {"model": model, "input": text}

    texts = probe_texts(delimiter)
    try:
        outs = await asyncio.gather(*(ep.post(route, body(t)) for t in texts))
    except BackendError as e:
        if e.status in (404, 405, 501):  # no such route here: judged without a tokeniser
            return None
        raise
    try:
        tokens = {t: [int(x) for x in out["tokens"]] for t, out in zip(texts, outs, strict=True)}
    except (KeyError, TypeError, ValueError) as e:
        raise BackendError(f"{route} answered without a token list ({type(e).__name__}: {e})",
                           kind="protocol") from e
    return classify(tokens, delimiter)


STOP_ONLY = {"llamacpp": "llama-server is driven through its native /completion route, "
                         "which reports stop_type"}
"""Server kinds that take only ``stop``: the streamed modes need ``/v1/completions``."""

SERVER_NAMES = {"vllm": "vLLM", "sglang": "SGLang", "llamacpp": "llama-server",
                "llama-cpp-python": "python -m llama_cpp.server", "openai": "this server"}
def describe(tok: Tokeniser | None) -> str:
    if tok is None:
        return "its tokeniser could not be probed"
    if tok.after:
        return "its tokeniser reads a trailing delimiter as it reads it inside a text"
    return ("its tokeniser reads a trailing delimiter as other tokens than the model writes"
            + (" (GPT-2 style) but keeps the tokens before it" if tok.before else
               " and merges it with the text before it"))


def choose(option: str, kind: wire.ServerKind, chat: bool,
           tok: Tokeniser | None) -> dict[str, Any]:
    """``{"mode", "exact", "why"}`` for the ``boundary`` option on this server."""
    server = SERVER_NAMES.get(kind, kind)
    if chat:
        return {"mode": "stop", "exact": False,
                "why": "chat mode: the server re-renders the steps in its chat template at "
                       "every request, so the resumed tokens are not checked"}
    tells_eos = kind in ("vllm", "sglang", "llamacpp")
    mode = option
    if option == "auto":
        if tok is not None and tok.before and not tok.after and kind not in STOP_ONLY:
            mode = "regenerate"
        else:
            mode = "stream" if kind == "llama-cpp-python" else "stop"
    what = describe(tok)
    if mode == "regenerate":
        exact = tok is not None and tok.before
        why = f"{what}: the model writes the delimiter again after the tokens it wrote"
        if tok is not None and not tok.before:
            why = f"{what}: regenerate cuts the model's tokens there; use stream or stop"
    elif mode == "stream":
        exact = tok is not None and tok.after
        why = f"{what}; the step's end is read from the stream"
    else:
        exact = tells_eos and tok is not None and tok.after
        why = f"{what}; {server} " + ("tells a stop string from the end of the sequence"
                                      if tells_eos else "reports a stop string and the end "
                                      "of the sequence alike (finish_reason 'stop'), so a "
                                      "final step may be read as a step")
        if kind in STOP_ONLY and not exact and tok is not None:
            why += (f"; {STOP_ONLY[kind]} and takes only stop: for an exact boundary serve "
                    "this model with vLLM or python -m llama_cpp.server")
    return {"mode": mode, "exact": exact, "why": why}
