"""The wire format of ``POST /v1/chat/completions``: the OpenAI request plus the scaling
extensions, and the response and stream-chunk shapes (for the OpenAPI schema).

Validation is strict (``"8"`` is not a number, ``1`` is not ``true``) and unknown fields are
rejected, so that nothing a client sends is silently ignored. The OpenAI sampling fields are
honoured as follows (see docs/server.md):

- ``temperature`` (0..2) and ``top_p`` (0 < p <= 1): the LM sampling of every step.
- ``max_tokens`` / ``max_completion_tokens``: a hard cap on the tokens generated for each
  particle, so on the returned message (see :mod:`particlescale.server.capped`).
- ``stop`` (up to 4 strings): a step containing one is cut before it and ends its particle.
- ``seed``: the run's seed (the server draws and reports one when absent).
- ``n``: only 1; a run already samples ``budget`` solutions (``return_particles`` shows them).
- ``logprobs``, ``tools``, penalties, ``logit_bias``, non-text ``response_format``: rejected
  unless at their neutral value.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOP = 4


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"] = Field(
        description="'tool' messages are not supported (no tool calling).")
    content: str | list[TextPart] | None = None
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, v: Any) -> Any:
        if isinstance(v, list):
            for i, part in enumerate(v):
                if isinstance(part, dict) and part.get("type") not in (None, "text"):
                    raise ValueError(f"part {i} has type {part.get('type')!r}; only text parts "
                                     "are supported")
        return v

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


def _neutral(name: str, ok: Any, why: str) -> Any:
    """A validator accepting only ``None`` or the neutral values in ``ok``."""

    def check(cls: type, v: Any) -> Any:
        if v is None or v in ok:
            return v
        raise ValueError(f"{name}={v!r} is not supported: {why}")

    return field_validator(name)(classmethod(check))


class ChatCompletionRequest(_Strict):
    """An OpenAI chat-completions request; the last user message is the problem."""

    model: str | None = Field(None, description="A configured generator id, a preset such as "
                                                "'pf-8', or '<method>-<budget>'; default: the "
                                                "server's default generator, method and budget.")
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, description="Only 1.", json_schema_extra={"enum": [1, None]})
    temperature: float | None = Field(None, ge=0, le=2,
                                      description="LM sampling temperature of every step.")
    top_p: float | None = Field(None, gt=0, le=1, description="LM nucleus sampling of every step.")
    max_tokens: int | None = Field(None, ge=1, description="Hard cap on each particle's "
                                                           "generated tokens.")
    max_completion_tokens: int | None = Field(None, ge=1, description="Same as max_tokens.")
    stop: str | list[str] | None = Field(
        None, description="Up to 4 strings; a step containing one is cut there and ends its "
                          "particle.", json_schema_extra={"maxItems": MAX_STOP, "minLength": 1})
    seed: int | None = Field(None, ge=0, lt=2**63, description="Seed of the run.")
    user: str | None = None
    metadata: dict[str, str] | None = None
    # OpenAI fields accepted only at their neutral value (the schema says which).
    store: bool | None = Field(None, json_schema_extra={"enum": [False, None]})
    frequency_penalty: float | None = Field(None, json_schema_extra={"enum": [0, None]})
    presence_penalty: float | None = Field(None, json_schema_extra={"enum": [0, None]})
    logit_bias: dict[str, float] | None = Field(None, json_schema_extra={"maxProperties": 0})
    logprobs: bool | None = Field(None, json_schema_extra={"enum": [False, None]})
    top_logprobs: int | None = Field(None, json_schema_extra={"enum": [0, None]})
    tools: list[dict[str, Any]] | None = Field(None, json_schema_extra={"maxItems": 0})
    tool_choice: str | dict[str, Any] | None = Field(None,
                                                     json_schema_extra={"enum": ["none", None]})
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = Field(
        None, json_schema_extra={"properties": {"type": {"const": "text"}},
                                 "required": ["type"]})
    # Scaling extensions.
    method: str | None = Field(None, description="Scaling method (pf, pg, pt, beam, ...); "
                                                 "header X-Scaling-Method.")
    budget: int | None = Field(None, description="Particles / rollouts, 1..limits.max_budget; "
                                                 "header X-Scaling-Budget.")
    options: dict[str, Any] | None = Field(None, description="Method options, e.g. "
                                                             "{'resampling': 'systematic'}.")
    return_particles: bool = Field(False, description="Add every candidate with its weight.")

    _n = _neutral("n", (1,), "a run returns one answer; its `budget` samples are in "
                             "`scaling.candidates` with return_particles=true")
    _store = _neutral("store", (False,), "this server stores nothing")
    _fp = _neutral("frequency_penalty", (0,), "penalties are not applied by the scaling methods")
    _pp = _neutral("presence_penalty", (0,), "penalties are not applied by the scaling methods")
    _lp = _neutral("logprobs", (False,), "the answer is chosen among particles; per-token "
                                         "log-probabilities are not returned")
    _tlp = _neutral("top_logprobs", (0,), "log-probabilities are not returned")
    _tools = _neutral("tools", ([],), "tool calling is not supported")
    _tc = _neutral("tool_choice", ("none",), "tool calling is not supported")

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, v: Any) -> Any:
        if v:
            raise ValueError("logit_bias is not supported by the scaling methods")
        return v

    @field_validator("response_format")
    @classmethod
    def _text_format(cls, v: Any) -> Any:
        if v is not None and v.get("type") != "text":
            raise ValueError(f"response_format type {v.get('type')!r} is not supported; only "
                             "'text' (solutions are free text with a \\boxed{} answer)")
        return v

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: Any) -> Any:
        stops = [v] if isinstance(v, str) else v
        if stops is not None:
            if len(stops) > MAX_STOP:
                raise ValueError(f"at most {MAX_STOP} stop sequences, got {len(stops)}")
            if any(s == "" for s in stops):
                raise ValueError("stop sequences must be non-empty strings")
        return v

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


# --- responses (documentation of the shapes the handlers build as dicts) ---------------------


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


class Usage(_Loose):
    prompt_tokens: int = Field(description="Every prompt token the LM processed in the run.")
    completion_tokens: int = Field(description="Every token generated in the run (all particles).")
    total_tokens: int = Field(description="prompt_tokens + completion_tokens.")
    reward_tokens: int = Field(description="Tokens the reward model read (extension).")
    reward_calls: int = Field(description="Reward model calls (extension).")
    lm_calls: int = Field(description="LM calls (extension).")
    answer_tokens: int = Field(description="Tokens of the returned message (extension).")


class ResponseMessage(_Loose):
    role: Literal["assistant"]
    content: str


class Choice(_Loose):
    index: int
    message: ResponseMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletion(_Loose):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    scaling: dict[str, Any] = Field(description="Extension: method, budget, seed, answer, "
                                                "run info; candidates with return_particles.")


class ModelCard(_Loose):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(_Loose):
    object: Literal["list"]
    data: list[ModelCard]


class ErrorDetail(_Loose):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(_Loose):
    error: ErrorDetail
