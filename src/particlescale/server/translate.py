"""From a validated chat request (+ headers) to the run it asks for.

Precedence, lowest first: the server defaults (``method``, ``budget``, ``options``), the preset
named by ``model`` (``pf-8``, a configured preset, or a generator id), the request's
``options``, then its ``method`` / ``budget`` / ``seed`` fields or the matching
``X-Scaling-*`` headers, then the OpenAI sampling fields (``temperature``, ``top_p``,
``max_tokens``). A value given twice with different values (body field and header, or a
sampling field and the same key in ``options``) is a 400, never a silent choice.

Text is checked first: a string anywhere in the request holding a lone UTF-16 surrogate
(``"\\ud800"``, valid JSON but no Unicode text) is a 400 naming the field, before it could
reach a tokenizer, a log line or an upstream request.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from particlescale.algorithms import METHODS, make_config
from particlescale.errors import ConfigError
from particlescale.server.config import Preset, ServerConfig
from particlescale.server.errors import APIError, bad_request
from particlescale.server.schemas import ChatCompletionRequest
from particlescale.types import Problem

HEADER_BUDGET = "x-scaling-budget"
HEADER_METHOD = "x-scaling-method"
HEADER_SEED = "x-scaling-seed"
_METHOD_BUDGET = re.compile(r"^(?P<method>[a-z-]+?)-(?P<budget>[0-9]+)$")
_MAX_DIGITS = 18


@dataclass
class RunSpec:
    """Everything one run needs, resolved and validated."""

    problem: Problem
    model: str
    generator: str
    method: str
    budget: int
    seed: int
    options: dict[str, Any] = field(default_factory=dict)
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    max_steps: int = 40
    return_particles: bool = False
    stream: bool = False
    include_usage: bool = False
    ignored_messages: int = 0


def resolve_model(config: ServerConfig, model: str | None) -> tuple[str, Preset | None]:
    """``(generator id, preset or None)`` for a request's ``model`` (404 when unknown)."""
    generators = [g.model_id for g in config.generators]
    default = generators[0]
    if model is None or model == "":
        return default, None
    if model in generators:
        return model, None
    presets = config.preset_table()
    if model in presets:
        p = presets[model]
        return p.generator or default, p
    if model in METHODS:
        return default, Preset(method=model, budget=config.budget)
    m = _METHOD_BUDGET.match(model)
    if m and m["method"] in METHODS:
        digits = m["budget"].lstrip("0") or "0"
        if len(digits) > _MAX_DIGITS:
            raise _budget_error("model", digits[:_MAX_DIGITS] + "...", config)
        # Not validated here: a budget given in the body or header overrides the preset's,
        # and run_spec checks the budget that is used (422, naming 'model' when it is this).
        return default, Preset.model_construct(method=m["method"], budget=int(digits),
                                               options={}, generator=None)
    known = ", ".join([*generators, *presets])
    raise APIError(404, f"model: unknown {model!r}; use one of {known} (GET /v1/models), or "
                        f"'<method>-<budget>' such as 'pf-8'",
                   param="model", code="model_not_found", kind="bad_request")


def _budget_error(where: str, budget: object, config: ServerConfig) -> APIError:
    limit = config.limits.max_budget
    return APIError(422, f"{where}: budget {budget} is out of range; this server accepts "
                         f"1..{limit} particles (limits.max_budget)",
                    param=where, code="budget_out_of_range", kind="budget")


def _bad_text(value: Any, path: str) -> str | None:
    """The dotted path of the first string (or key) in ``value`` that is not valid Unicode."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            sub = f"{path}.{k}" if path else str(k)
            if isinstance(k, str) and _bad_text(k, sub) is not None:
                return path or "body"
            found = _bad_text(v, sub)
            if found is not None:
                return found
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            found = _bad_text(v, f"{path}.{i}" if path else str(i))
            if found is not None:
                return found
    return None


def check_text(req: ChatCompletionRequest) -> None:
    """400 naming the field when a string of the request holds a lone surrogate."""
    where = _bad_text(req.model_dump(exclude_defaults=True), "")
    if where is not None:  # (a bad key names the object holding it)
        raise bad_request(f"{where}: contains a lone UTF-16 surrogate (such as \\ud800), "
                          "which is not Unicode text; send valid UTF-8 (surrogates only in "
                          "pairs)", param=where, code="invalid_unicode")


def _header(headers: Mapping[str, str], name: str, body_value: Any, field_name: str,
            parse: Any) -> tuple[Any, str]:
    """The value of a field given in the body or its header, and where it came from."""
    raw = headers.get(name)
    if raw is None:
        return body_value, field_name
    try:
        value = parse(raw.strip())
    except ValueError:
        raise bad_request(f"{name}: {raw!r} is not a valid {field_name}", param=name) from None
    if body_value is not None and body_value != value:
        raise bad_request(f"{field_name} is given both in the body ({body_value!r}) and in the "
                          f"{name} header ({value!r}); give one", param=field_name)
    return value, name


def _merge(options: dict[str, Any], key: str, value: Any, field_name: str) -> None:
    if value is None:
        return
    if key in options and options[key] != value:
        raise bad_request(f"{field_name}={value!r} conflicts with options.{key}="
                          f"{options[key]!r}; give one", param=field_name)
    options[key] = value


def problem_from_messages(req: ChatCompletionRequest, request_id: str) -> tuple[Problem, int]:
    """The problem (last user message, system/developer messages joined) and how many earlier
    user/assistant turns were not used (a run solves one problem; history is not a prompt)."""
    last = req.messages[-1]
    if last.role != "user":
        raise bad_request(f"messages: the last message must be the user's problem, got role "
                          f"{last.role!r}", param="messages")
    question = last.text()
    if not question.strip():
        raise bad_request("messages: the last user message is empty; put the problem there",
                          param=f"messages.{len(req.messages) - 1}.content")
    system = "\n\n".join(m.text() for m in req.messages if m.role in ("system", "developer")
                         and m.text().strip())
    ignored = sum(1 for m in req.messages[:-1] if m.role in ("user", "assistant"))
    problem = Problem(question=question, id=request_id, system_prompt=system or None)
    return problem, ignored


def run_spec(config: ServerConfig, req: ChatCompletionRequest, headers: Mapping[str, str],
             request_id: str) -> RunSpec:
    """Resolve and validate a request (raises :class:`APIError` with the field at fault)."""
    check_text(req)
    problem, ignored = problem_from_messages(req, request_id)
    generator, preset = resolve_model(config, req.model)

    method, where = _header(headers, HEADER_METHOD, req.method, "method", str)
    method = method or (preset.method if preset else config.method)
    if method not in METHODS:
        raise bad_request(f"{where}: unknown method {method!r}; choose one of "
                          f"{', '.join(METHODS)}", param=where, code="unknown_method")

    budget, where = _header(headers, HEADER_BUDGET, req.budget, "budget", int)
    if budget is None:
        budget = preset.budget if preset else config.budget
        where = "model" if preset else where
    if not 1 <= budget <= config.limits.max_budget:
        raise _budget_error(where, budget, config)

    seed, where = _header(headers, HEADER_SEED, req.seed, "seed", int)
    if seed is not None and not 0 <= seed < 2**63:
        raise bad_request(f"{where}: seed {seed} must be in 0..2**63-1", param=where)
    if seed is None:
        seed = secrets.randbelow(2**31)

    options: dict[str, Any] = dict(config.options.get(method, {}))
    if preset is not None and preset.method == method:
        options.update(preset.options)
    options.update(req.options or {})
    _merge(options, "temperature", req.temperature, "temperature")
    _merge(options, "top_p", req.top_p, "top_p")
    if (req.max_tokens is not None and req.max_completion_tokens is not None
            and req.max_tokens != req.max_completion_tokens):
        raise bad_request("max_tokens and max_completion_tokens differ; give one",
                          param="max_completion_tokens")
    max_tokens = req.max_tokens or req.max_completion_tokens
    try:
        cfg = make_config(method, options)
    except ConfigError as e:
        param = "options"
        for name in ("temperature", "top_p"):
            if f"'{name}'" in str(e) and getattr(req, name) is not None:
                param = name
        message = f"options: {e}" if param == "options" else str(e)
        raise bad_request(message, param=param, code="invalid_option") from None
    return RunSpec(
        problem=problem, model=req.model or generator, generator=generator, method=method,
        budget=budget, seed=seed, options=options, max_tokens=max_tokens,
        stop=req.stop_list(), max_steps=cfg.max_steps, return_particles=req.return_particles,
        stream=req.stream,
        include_usage=bool(req.stream_options and req.stream_options.include_usage),
        ignored_messages=ignored,
    )
