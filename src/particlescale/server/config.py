"""Server configuration: what to serve (generators, reward, presets) and the limits it enforces.

A configuration is a TOML or YAML file with the fields of :class:`ServerConfig`; flags of
``particlescale serve`` override the file. The defaults serve the embedded llama.cpp model
(``qwen2.5-0.5b``) and the CPU reward ``solve`` uses, so ``particlescale serve`` works on a
laptop with no other service::

    # serve.toml
    reward = "arith*logprob" # default: arith*logprob, or arith when a generator is a server
    method = "pf"            # used when a request names no method
    budget = 8               # used when a request names no budget
    api_keys_env = "PARTICLESCALE_API_KEYS"   # comma-separated keys; none = no auth

    [[generators]]           # the first one is the default
    spec = "llamacpp:qwen2.5-0.5b"

    [[generators]]
    id = "qwen-math-7b"
    spec = "openai:http://gpu-box:8000/v1"
    model = "Qwen/Qwen2.5-Math-7B-Instruct"
    options = { timeout = 120, retries = 4, template = "qwen" }   # OpenAIGenerator's

    [presets.pf-16]          # a model id clients may send: method + budget (+ options)
    method = "pf"
    budget = 16

    [limits]
    max_budget = 64
    max_concurrent = 16      # runs in flight; more -> 429
    request_timeout = 600    # seconds per run; longer -> 504
    max_body_bytes = 1000000 # larger request bodies -> 413
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from particlescale.algorithms import METHODS
from particlescale.errors import ConfigError
from particlescale.models import DEFAULT_MODEL
from particlescale.rewards.checks import default_reward
from particlescale.wiring import DEFAULT_GENERATOR_SPEC, GeneratorSetting, Wired, check, wire

DEFAULT_PRESET_BUDGETS = (4, 8, 16)
"""``pf-4``, ``pf-8``, ``pf-16`` are listed by ``/v1/models`` unless ``presets`` says otherwise."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GeneratorConfig(_Strict):
    """One language model the server can route to."""

    spec: str = Field(DEFAULT_GENERATOR_SPEC, min_length=1,
                      description="Generator spec (particlescale.wiring), e.g. "
                                  "'llamacpp:qwen2.5-0.5b', 'llamacpp' (with model) or "
                                  "'openai:http://host:8000/v1'.")
    id: str | None = Field(None, description="Model id clients use; default: model, else the "
                                             "part of spec after the first ':' (for a spec "
                                             "with a URL: the part before it, e.g. 'openai': "
                                             "clients never see an upstream address).")
    model: str | None = Field(None, description="As --model: the embedded model (spec "
                                                "'llamacpp'), or the upstream model's name "
                                                "(openai:URL).")
    api_key_env: str | None = Field(None, description="Environment variable holding the upstream "
                                                      "API key (keys never go in files).")
    options: dict[str, Any] = Field(default_factory=dict,
                                    description="Extra keyword arguments of the generator "
                                                "(timeout, retries, template for openai:URL).")

    @property
    def model_id(self) -> str:
        if self.id:
            return self.id
        if self.model:
            return self.model
        prefix, _, rest = self.spec.partition(":")
        if "://" in rest:
            return prefix
        if prefix == "llamacpp" and not rest.strip():
            return DEFAULT_MODEL
        return rest or self.spec

    def setting(self) -> GeneratorSetting:
        """What :func:`particlescale.wiring.wire` builds (the key read from the environment)."""
        api_key = os.environ.get(self.api_key_env) if self.api_key_env else None
        return GeneratorSetting(self.spec, self.model, api_key, dict(self.options),
                                self.model_id)


class Preset(_Strict):
    """A model id that stands for a method, a budget and method options (e.g. ``pf-8``)."""

    method: str
    budget: int = Field(ge=1)
    options: dict[str, Any] = Field(default_factory=dict)
    generator: str | None = Field(None, description="Generator id; default: the first.")


class Limits(_Strict):
    max_budget: int = Field(64, ge=1, description="Largest budget a request may ask for (422).")
    max_concurrent: int = Field(16, ge=1, description="Runs in flight at once; more get 429.")
    request_timeout: float = Field(600.0, gt=0, description="Seconds one run may take (504).")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest request body (413).")


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    generators: tuple[GeneratorConfig, ...] = Field(
        default_factory=lambda: (GeneratorConfig(),), min_length=1)
    reward: str | None = Field(
        None, min_length=1, description="Reward spec (particlescale.wiring); default: "
                                        "arith*logprob, or arith when a "
                                        "generator reports no step log-probabilities (servers).")
    method: str = Field("pf", description="Method of requests that name none.")
    budget: int = Field(8, ge=1, description="Budget of requests that name none.")
    options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Default options per method, e.g. {pf: {resampling: "
                                          "systematic}}; requests may override them.")
    presets: dict[str, Preset] | None = Field(
        None, description="Model ids standing for method + budget; None = pf-4, pf-8, pf-16.")
    limits: Limits = Field(default_factory=Limits)
    api_keys: tuple[str, ...] = Field(
        (), repr=False,
        description="Accepted bearer keys (prefer api_keys_env: files get copied around).")
    api_keys_env: str | None = Field(
        "PARTICLESCALE_API_KEYS", description="Environment variable with comma-separated keys.")

    @model_validator(mode="after")
    def _check(self) -> ServerConfig:
        if self.method not in METHODS:
            raise ValueError(f"method: unknown {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.budget > self.limits.max_budget:
            raise ValueError(f"budget: default {self.budget} exceeds limits.max_budget "
                             f"{self.limits.max_budget}")
        ids = [g.model_id for g in self.generators]
        if len(set(ids)) != len(ids):
            raise ValueError(f"generators: ids must be unique, got {ids}; set 'id' on each")
        for name, p in (self.presets or {}).items():
            if p.method not in METHODS:
                raise ValueError(f"presets.{name}.method: unknown {p.method!r}; choose one of "
                                 f"{', '.join(METHODS)}")
            if p.generator is not None and p.generator not in ids:
                raise ValueError(f"presets.{name}.generator: unknown {p.generator!r}; "
                                 f"configured generators: {', '.join(ids)}")
            if p.budget > self.limits.max_budget:
                raise ValueError(f"presets.{name}.budget: {p.budget} exceeds limits.max_budget "
                                 f"{self.limits.max_budget}")
        for method in self.options:
            if method not in METHODS:
                raise ValueError(f"options.{method}: unknown method; choose one of "
                                 f"{', '.join(METHODS)}")
        return self

    def reward_spec(self) -> str:
        """The configured reward, or the default that works with the generators."""
        return self.reward or default_reward([g.spec for g in self.generators])

    def check(self, *, files: bool = True) -> None:
        """Check the generators and the reward as every face does (particlescale.wiring),
        without loading a model (``files=False``: nor looking for model files); a served
        question has no answer key (no ``reference``)."""
        check([g.setting() for g in self.generators], self.reward, answer_key=False,
              files=files)

    def wire(self) -> Wired:
        """Build the generators (by model id) and the reward (may load models: seconds)."""
        return wire([g.setting() for g in self.generators], self.reward, answer_key=False)

    def preset_table(self) -> dict[str, Preset]:
        if self.presets is not None:
            return dict(self.presets)
        return {f"pf-{b}": Preset(method="pf", budget=b)
                for b in DEFAULT_PRESET_BUDGETS if b <= self.limits.max_budget}

    def keys(self) -> tuple[str, ...]:
        """Accepted API keys: the configured ones plus those in ``api_keys_env``."""
        keys = list(self.api_keys)
        if self.api_keys_env:
            keys += [k.strip() for k in os.environ.get(self.api_keys_env, "").split(",")]
        return tuple(k for k in keys if k)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The raw mapping in a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config: file {str(p)!r} not found; pass an existing .toml or .yaml")
    suffix = p.suffix.lower()
    try:
        if suffix == ".toml":
            data = tomllib.loads(p.read_text())
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(p.read_text()) or {}
        else:
            raise ConfigError(f"config: {p.name!r} must end in .toml, .yaml or .yml")
    except (tomllib.TOMLDecodeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"config: {p.name} is not valid {suffix[1:].upper()}: {e}") from None
    except Exception as e:  # yaml.YAMLError has no common base with the above
        raise ConfigError(f"config: {p.name} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config: {p.name} must hold a mapping of settings at the top level")
    return data


def load_config(path: str | Path | None = None, **overrides: Any) -> ServerConfig:
    """The configuration in ``path`` (if any) with ``overrides`` (flags; None = not given).

    ``overrides`` may hold top-level fields and the limits' fields (``max_budget``...).
    """
    data: dict[str, Any] = read_config_file(path) if path is not None else {}
    if "generator" in data:  # shorthand: one spec string or one table
        g = data.pop("generator")
        data.setdefault("generators", [g if isinstance(g, dict) else {"spec": g}])
    limits = dict(data.get("limits") or {})
    for key, value in overrides.items():
        if value is None:
            continue
        if key in Limits.model_fields:
            limits[key] = value
        else:
            data[key] = value
    if limits:
        data["limits"] = limits
    try:
        cfg = ServerConfig(**data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "config"
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(msg if err["type"] == "value_error" else f"{loc}: {msg}")
        raise ConfigError("config: " + "; ".join(lines)) from None
    cfg.check(files=False)  # the specs' kinds, URLs, options and reward, as every face checks
    return cfg
