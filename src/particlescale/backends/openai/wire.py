"""Request bodies and response parsing for each kind of OpenAI-compatible server.

Server kinds and what they are sent (every sampling parameter explicitly: vLLM and SGLang fill
unsent ones from the model's ``generation_config.json``, e.g. Qwen2.5's top_k=20, top_p=0.8,
repetition_penalty=1.05, which would silently change the proposal distribution):

``vllm``     ``/v1/completions`` with the OpenAI fields (model, prompt, n, temperature, top_p,
             max_tokens, stop, seed, presence/frequency_penalty, stream) and vLLM's extras
             (top_k=-1, min_p, repetition_penalty, min_tokens, ignore_eos,
             include_stop_str_in_output, skip_special_tokens, add_special_tokens). top_k=-1 is
             "disabled" in every vLLM from 0.2 to today (0 is rejected before ~0.8; -1 is
             "quietly accepted" after). The step end is read from ``stop_reason``: the stop
             string (delimiter) -> ``step``; ``None`` (EOS) or a stop token id -> ``eos``.
             Checked against vLLM's ``entrypoints/openai/protocol.py`` (0.10 layout),
             ``sampling_params.py`` (current) and ``v1/engine/parallel_sampling.py`` (choice
             i of a seeded request uses seed + i).
``sglang``   the same OpenAI fields plus SGLang's extras (top_k=-1, min_p, repetition_penalty,
             min_tokens, ignore_eos, skip_special_tokens, no_stop_trim; checked against
             ``sglang/srt/entrypoints/openai/protocol.py``);
             the step end from ``matched_stop`` (string -> ``step``; token id or None -> ``eos``).
``llamacpp`` llama.cpp ``llama-server``'s native ``POST /completion`` (n_predict, top_k=0,
             min_p=0, typical_p=1, repeat_penalty=1, mirostat=0, cache_prompt, ``n_cmpl`` for
             several samples on servers since late 2025); the step end from ``stop_type``
             (``word``/``eos``/``limit``), or the older ``stopped_word``/``stopped_eos`` flags.
``llama-cpp-python`` ``python -m llama_cpp.server`` (``owned_by: "me"`` in ``/v1/models``): the
             OpenAI fields plus top_k=0, min_p=0, repeat_penalty=1, mirostat_mode=0 (its
             defaults are top_k=40, min_p=0.05, repeat_penalty=1.1: another distribution).
             It answers one request at a time, ignores ``n``, and reports a stop string and
             an end of sequence alike (``finish_reason="stop"``), so steps are read from a
             stream (see ``boundary.py``). It applies top-p *before* the
             temperature, unlike the embedded engine and vLLM: the same only at top_p=1.
``openai``   only the official OpenAI fields (the OpenAI API rejects unknown ones). Without a
             ``stop_reason`` the delimiter and EOS both read ``finish_reason="stop"``: the step
             is taken as a ``step``, and an empty ``stop`` completion as ``eos`` (the model
             ends the solution by answering nothing more): a guess that adds a delimiter after
             every final step; ``boundary="stream"`` reads the two apart. Servers that ignore
             ``n`` are handled by asking again for the missing ones.

Greedy decoding (temperature 0) asks for one completion and copies it: vLLM rejects ``n > 1``
with greedy sampling, and the copies would be identical anyway.

Answers are checked at this boundary: a field of the wrong type (a text that is no string, a
token count that is no non-negative integer) is a :class:`BackendError` of kind ``protocol``
naming the field, never a ``TypeError`` deep inside a run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from particlescale.errors import BackendError
from particlescale.protocols import SamplingParams
from particlescale.types import FinishReason

ServerKind = Literal["vllm", "sglang", "llamacpp", "llama-cpp-python", "openai"]
SERVER_KINDS: tuple[str, ...] = ("vllm", "sglang", "llamacpp", "llama-cpp-python", "openai",
                                 "auto")


@dataclass(frozen=True)
class Sample:
    """One parsed completion: text as generated (delimiter not included), why it ended, and
    its generated-token count when the server reports it per sample (else None)."""

    text: str
    finish: FinishReason
    tokens: int | None = None


@dataclass(frozen=True)
class Parsed:
    samples: list[Sample]
    prompt_tokens: int
    completion_tokens: int


class Malformed(ValueError):
    """A field of an upstream answer has the wrong type (caught and reported as a
    :class:`BackendError` of kind ``protocol`` by the parsers)."""


def malformed(what: str, body: Any, why: object) -> BackendError:
    return BackendError(f"malformed {what} answer ({why}): {str(body)[:200]}", kind="protocol")


def text_field(value: Any, name: str) -> str:
    """``value`` if it is a string, else :class:`Malformed` naming ``name``."""
    if not isinstance(value, str):
        raise Malformed(f"{name} is {type(value).__name__} {str(value)[:40]!r}, expected a "
                        "string")
    return value


def count_field(value: Any, name: str) -> int:
    """A token count: a non-negative integer (an integral float is accepted; None is 0)."""
    if value is None:
        return 0
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or (isinstance(value, float) and not (math.isfinite(value) and value.is_integer()))
            or value < 0):
        raise Malformed(f"{name} is {str(value)[:40]!r}, expected a non-negative integer")
    return int(value)


def logprob_field(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise Malformed(f"{name} is {str(value)[:40]!r}, expected a number")
    return float(value)


def get_text(body: Any, key: str, what: str) -> str:
    """``body[key]`` as a string, else a protocol :class:`BackendError`."""
    try:
        return text_field(body[key], key)
    except (KeyError, TypeError, IndexError, Malformed) as e:
        raise malformed(what, body, e) from None


def get_token_ids(body: Any, key: str, what: str) -> list[int]:
    """``body[key]`` as a list of token ids, else a protocol :class:`BackendError`."""
    try:
        ids = body[key]
        if not isinstance(ids, list):
            raise Malformed(f"{key} is {type(ids).__name__}, expected a list of token ids")
        return [count_field(t, f"{key}[{i}]") for i, t in enumerate(ids)]
    except (KeyError, TypeError, IndexError, Malformed) as e:
        raise malformed(what, body, e) from None


def kind_from_owner(owned_by: str) -> ServerKind:
    """Server kind from ``/v1/models`` ``data[0].owned_by`` (vLLM: "vllm", SGLang: "sglang",
    llama-server: "llamacpp", ``python -m llama_cpp.server``: "me"; anything else is treated
    as the strict OpenAI dialect)."""
    owner = (owned_by or "").lower()
    if owner in ("vllm", "sglang", "llamacpp"):
        return owner  # type: ignore[return-value]
    if owner == "me":
        return "llama-cpp-python"
    return "openai"


def _common(model: str, n: int, params: SamplingParams, seed: int) -> dict[str, Any]:
    return {
        "model": model,
        "n": n,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_step_tokens,
        "stop": [params.delimiter],
        "seed": seed,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "stream": False,
    }


def _extras(kind: ServerKind, *, chat_template_applied: bool) -> dict[str, Any]:
    if kind == "vllm":
        return {"top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0, "min_tokens": 0,
                "ignore_eos": False, "include_stop_str_in_output": False,
                "skip_special_tokens": True,
                # The rendered chat prefix already holds BOS where the template wants it.
                "add_special_tokens": not chat_template_applied}
    if kind == "sglang":
        return {"top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0, "min_tokens": 0,
                "ignore_eos": False, "skip_special_tokens": True, "no_stop_trim": False}
    if kind == "llama-cpp-python":
        return {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0, "mirostat_mode": 0}
    return {}


def completion_body(kind: ServerKind, model: str, prompt: str, n: int, params: SamplingParams,
                    seed: int, *, chat_template_applied: bool = True) -> dict[str, Any]:
    """Body of ``POST /v1/completions`` for one parent and ``n`` children."""
    return {**_common(model, n, params, seed), "prompt": prompt,
            **_extras(kind, chat_template_applied=chat_template_applied)}


def stream_body(kind: ServerKind, model: str, prompt: str, params: SamplingParams, seed: int,
                max_tokens: int) -> dict[str, Any]:
    """Body of a streamed ``POST /v1/completions`` for one child and no stop string: the
    client finds the step's end in the text (``streamed.py``)."""
    body = completion_body(kind, model, prompt, 1, params, seed)
    del body["stop"]
    body.update(max_tokens=max_tokens, stream=True)
    if kind != "llama-cpp-python":
        body["stream_options"] = {"include_usage": True}
    return body


def parse_stream_event(event: Any) -> tuple[str, str | None, int, int]:
    """``(text, finish_reason, prompt_tokens, completion_tokens)`` of one streamed event of a
    one-choice completion (the last two from a usage event, else 0)."""
    try:
        usage = event.get("usage") or {}
        choices = event.get("choices") or []
        text, finish = "", None
        if choices:
            text = choices[0].get("text") or ""
            finish = choices[0].get("finish_reason")
        return (str(text), finish, int(usage.get("prompt_tokens") or 0),
                int(usage.get("completion_tokens") or 0))
    except (AttributeError, TypeError, ValueError) as e:
        raise BackendError(f"malformed streamed completion event ({type(e).__name__}: {e}): "
                           f"{str(event)[:200]}", kind="protocol") from e


def chat_body(kind: ServerKind, model: str, messages: list[dict[str, str]], n: int,
              params: SamplingParams, seed: int) -> dict[str, Any]:
    """Body of ``POST /v1/chat/completions``; a trailing assistant message is continued."""
    body = {**_common(model, n, params, seed), "messages": messages}
    continuing = messages[-1]["role"] == "assistant"
    if kind == "vllm":
        extras = _extras(kind, chat_template_applied=True)
        extras.pop("add_special_tokens")
        body.update(extras)
        body["add_generation_prompt"] = not continuing
        body["continue_final_message"] = continuing
    elif kind == "sglang":
        body.update(_extras(kind, chat_template_applied=True))
        body["continue_final_message"] = continuing
    return body


def echo_body(model: str, prompts: list[str]) -> dict[str, Any]:
    """Body of a vLLM ``/v1/completions`` request that only scores its prompts: ``echo`` the
    prompt with each token's log-probability (``logprobs: 0`` = the token's own, no
    alternatives; vLLM computes them from the raw logits: temperature 1, no top-p) and
    generate one greedy token, which is ignored (``max_tokens: 0`` is not accepted by every
    vLLM version)."""
    return {"model": model, "prompt": prompts, "echo": True, "logprobs": 0, "max_tokens": 1,
            "n": 1, "temperature": 0.0, "stream": False, "add_special_tokens": False}


def parse_echo(body: Any, n_prompts: int) -> tuple[list[list[float | None]], int]:
    """Per prompt (in order), the echoed ``token_logprobs`` (prompt tokens, then the one
    generated token; ``None`` for the first prompt token), and the usage's prompt tokens."""
    try:
        choices = sorted(body["choices"], key=lambda c: c.get("index", 0))
        rows = []
        for i, c in enumerate(choices):
            lps = c["logprobs"]["token_logprobs"]
            if not isinstance(lps, list):
                raise Malformed(f"choices[{i}].logprobs.token_logprobs is not a list")
            rows.append([logprob_field(v, f"choices[{i}].logprobs.token_logprobs[{j}]")
                         for j, v in enumerate(lps)])
        prompt_tokens = count_field((body.get("usage") or {}).get("prompt_tokens"),
                                    "usage.prompt_tokens")
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise BackendError(f"malformed echo answer, expected logprobs.token_logprobs "
                           f"({type(e).__name__}: {e}): {str(body)[:200]}",
                           kind="protocol") from e
    if len(rows) != n_prompts:
        raise BackendError(f"echo answer has {len(rows)} choices for {n_prompts} prompts",
                           kind="protocol")
    return rows, prompt_tokens


def llamacpp_body(prompt: str, n: int, params: SamplingParams, seed: int) -> dict[str, Any]:
    """Body of llama-server's native ``POST /completion``."""
    body: dict[str, Any] = {
        "prompt": prompt, "n_predict": params.max_step_tokens,
        "temperature": params.temperature, "top_p": params.top_p, "top_k": 0, "min_p": 0.0,
        "typical_p": 1.0, "repeat_penalty": 1.0, "presence_penalty": 0.0,
        "frequency_penalty": 0.0, "mirostat": 0, "seed": seed, "stop": [params.delimiter],
        "cache_prompt": True, "stream": False, "n_probs": 0,
    }
    if n > 1:
        body["n_cmpl"] = n
    return body


def _finish(kind: ServerKind, choice: dict[str, Any], text: str) -> FinishReason:
    reason = choice.get("finish_reason")
    if reason == "length":
        return "length"
    if reason != "stop":
        raise BackendError(f"completion ended with finish_reason={reason!r} "
                           "(expected 'stop' or 'length'); the request was aborted upstream",
                           kind="protocol")
    # vLLM: stop_reason = the matched stop string, a stop token id, or None (EOS).
    # SGLang: matched_stop likewise. Either may appear behind a proxy: use what is there.
    for key in ("stop_reason", "matched_stop"):
        if key in choice:
            return "step" if isinstance(choice[key], str) else "eos"
    return "step" if text else "eos"


def _allocate(samples: list[tuple[str, FinishReason, int | None]], total: int) -> list[Sample]:
    """Give each sample its token count: the server's own when reported, else the total
    split in proportion to text length (exact sum, largest remainders)."""
    known = [t for _, _, t in samples if t is not None]
    if len(known) == len(samples):
        return [Sample(x, f, t) for x, f, t in samples]
    lengths = [max(1, len(x)) for x, _, _ in samples]
    z = sum(lengths)
    raw = [total * ln / z for ln in lengths]
    counts = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: counts[i] - raw[i])[: total - sum(counts)]:
        counts[i] += 1
    return [Sample(x, f, c) for (x, f, _), c in zip(samples, counts, strict=True)]


def parse_openai(kind: ServerKind, body: Any, *, chat: bool) -> Parsed:
    """Samples of a ``/v1/completions`` (or chat) answer, in choice-index order."""
    try:
        if not isinstance(body["choices"], list):
            raise Malformed("choices is not a list")
        choices = sorted(body["choices"], key=lambda c: c.get("index", 0))
        usage = body.get("usage") or {}
        if not isinstance(usage, dict):
            raise Malformed(f"usage is {type(usage).__name__}, expected an object")
        raw = []
        for i, c in enumerate(choices):
            if chat:
                content = c["message"]["content"]
                text = "" if content is None else text_field(
                    content, f"choices[{i}].message.content")
            else:
                text = text_field(c["text"], f"choices[{i}].text")
            tokens = len(c["token_ids"]) if isinstance(c.get("token_ids"), list) else None
            raw.append((text, _finish(kind, c, text), tokens))
        prompt_tokens = count_field(usage.get("prompt_tokens"), "usage.prompt_tokens")
        completion_tokens = count_field(usage.get("completion_tokens"),
                                        "usage.completion_tokens")
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise BackendError(f"malformed completion answer ({type(e).__name__}: {e}): "
                           f"{str(body)[:200]}", kind="protocol") from e
    return Parsed(_allocate(raw, completion_tokens), prompt_tokens, completion_tokens)


def parse_llamacpp(body: Any) -> Parsed:
    """Samples of a llama-server ``/completion`` answer (one object, or a list for n_cmpl)."""
    items = body if isinstance(body, list) else [body]
    samples = []
    prompt_tokens = 0
    completion_tokens = 0
    try:
        for it in items:
            stop_type = it.get("stop_type")
            if stop_type is None:  # before llama.cpp b4000-ish: boolean flags
                stop_type = ("word" if it.get("stopped_word") else
                             "eos" if it.get("stopped_eos") else
                             "limit" if it.get("stopped_limit") else "none")
            finish: FinishReason = {"word": "step", "eos": "eos", "limit": "length"}.get(
                stop_type, "step")
            if stop_type == "none":
                raise BackendError(f"llama.cpp completion did not stop ({it})",
                                   kind="protocol")
            n_gen = count_field(it.get("tokens_predicted"), "tokens_predicted")
            samples.append(Sample(text_field(it["content"], "content"), finish, n_gen))
            prompt_tokens = max(prompt_tokens,
                                count_field(it.get("tokens_evaluated"), "tokens_evaluated"))
            completion_tokens += n_gen
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise BackendError(f"malformed llama.cpp answer ({e}): {str(body)[:200]}",
                           kind="protocol") from e
    return Parsed(samples, prompt_tokens, completion_tokens)
