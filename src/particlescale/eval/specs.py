"""Parsing the sweep's axes: method specs with options, budgets, seeds.

A method spec is a method name with optional options in parentheses; a list of them is
separated by top-level commas::

    pf,pf(resampling=systematic,ess_threshold=0.5),pg(iterations=4),best-of-n

Values are read as ``int``, then ``float``, then ``true``/``false``, then ``none``, else a
string (quotes optional). Every spec is validated with
:func:`particlescale.algorithms.make_config` here, before any model is loaded. A variant is
named by its *canonical* spec (options sorted by name, values normalised), so
``pf(b=1,a=2)`` and ``pf(a=2, b=1)`` are the same row of a report.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from particlescale.algorithms import get_method, make_config
from particlescale.algorithms.config import BaseConfig
from particlescale.api import MAX_BUDGET
from particlescale.errors import ConfigError

_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
_KEY = re.compile(r"^[a-z_][a-z0-9_]*$")

# Methods whose result does not depend on the budget: run once, at budget 1.
BUDGET_FREE = frozenset({"greedy"})
# Independent-sample baselines: smaller budgets can be subsets of the largest budget's samples.
# The value says how a subset's weights are formed from the stored candidates. They sample
# alike (N independent solutions) and differ only in how they pick, so a sweep draws one sample
# set for all of those with the same sample_key (eval.shared); "score" ones need it scored.
REUSABLE = {"self-consistency": "uniform", "best-of-n": "score", "weighted-best-of-n": "score"}


@dataclass(frozen=True)
class MethodSpec:
    """One row of a sweep: a method with its options, validated."""

    name: str
    options: dict[str, Any] = field(default_factory=dict, hash=False)
    config: BaseConfig | None = field(default=None, compare=False, hash=False)

    @property
    def label(self) -> str:
        if not self.options:
            return self.name
        inner = ",".join(f"{k}={format_value(v)}" for k, v in sorted(self.options.items()))
        return f"{self.name}({inner})"

    @property
    def budget_free(self) -> bool:
        return self.name in BUDGET_FREE

    @property
    def reusable(self) -> bool:
        return self.name in REUSABLE

    @property
    def needs_scores(self) -> bool:
        return REUSABLE.get(self.name) == "score"

    @property
    def sample_key(self) -> str | None:
        """Specs with equal keys can share one sample set: every setting but the selector
        (sampling, step cap, reward aggregation) is the same. None: this method cannot."""
        if not self.reusable or self.config is None:
            return None
        settings = {k: v for k, v in self.config.model_dump().items() if k != "selector"}
        return json.dumps(settings, sort_keys=True, default=str)


def format_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    return str(v)


def parse_value(text: str) -> Any:
    """``int``, ``float``, ``bool``, ``None`` or ``str`` from an option value."""
    t = text.strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"":
        return t[1:-1]
    for cast in (int, float):
        try:
            return cast(t)
        except ValueError:
            pass
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    return t


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside parentheses and quotes."""
    parts, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ConfigError(f"methods: unbalanced ')' in {text!r}")
        elif ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    if depth != 0 or quote:
        raise ConfigError(f"methods: unbalanced parenthesis or quote in {text!r}")
    parts.append("".join(cur))
    return parts


def parse_options(text: str | Sequence[str], where: str) -> dict[str, Any]:
    """Method options: ``"a=1,b=x"`` (top-level commas) or ``["a=1", "b=x"]`` (one per item:
    ``solve -o``) -> ``{"a": 1, "b": "x"}``. Values as :func:`parse_value` reads them; ``-`` in
    a name means ``_``; ``where`` names the flag or spec in errors. The one parser of options
    of every face (``solve -o``, ``eval --options`` and ``--methods 'pf(...)'``)."""
    options: dict[str, Any] = {}
    if isinstance(text, str):
        if not text.strip():
            return options
        items = split_top_level(text)
    else:
        items = list(text)
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not _KEY.match(key):
            raise ConfigError(f"{where}: option {item.strip()!r} must be NAME=VALUE, e.g. "
                              "resampling=systematic (see `particlescale methods`)")
        if key in options:
            raise ConfigError(f"{where}: option {key!r} given twice")
        options[key] = parse_value(value)
    return options


def parse_method(text: str, common: dict[str, Any] | None = None) -> MethodSpec:
    """One spec such as ``pf(ess_threshold=0.5)``; ``common`` options apply to every method
    (the spec's own options win) but are not part of its label."""
    t = text.strip()
    m = re.fullmatch(r"([^()\s]+)\s*(?:\((.*)\))?", t, re.S)
    if not t or m is None or not _NAME.match(m.group(1)):
        raise ConfigError(f"methods: cannot read {text!r}; write NAME or NAME(option=value,...)")
    name = m.group(1)
    get_method(name)  # unknown method: error listing the known ones
    options = parse_options(m.group(2) or "", t)
    config = make_config(name, {**(common or {}), **options})
    return MethodSpec(name, options, config)


def parse_methods(text: str, common: dict[str, Any] | None = None) -> list[MethodSpec]:
    """A comma-separated list of specs, validated; duplicates (same label) are an error."""
    if not text or not text.strip():
        raise ConfigError("methods: empty; pass e.g. --methods pf,best-of-n")
    specs = [parse_method(s, common) for s in split_top_level(text) if s.strip()]
    seen: set[str] = set()
    for s in specs:
        if s.label in seen:
            raise ConfigError(f"methods: {s.label!r} listed twice")
        seen.add(s.label)
    return specs


def parse_int_list(text: str, what: str, *, minimum: int, maximum: int | None = None) -> list[int]:
    """``1,2,4,8`` -> ``[1, 2, 4, 8]`` (sorted, unique); errors name ``what``."""
    values = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        try:
            v = int(item)
        except ValueError:
            raise ConfigError(f"{what}: {item!r} is not an integer; pass e.g. "
                              f"{'1,2,4,8' if what == 'budgets' else '0,1,2'}") from None
        if v < minimum:
            raise ConfigError(f"{what}: {v} must be >= {minimum}")
        if maximum is not None and v > maximum:
            raise ConfigError(f"{what}: {v} is larger than the maximum {maximum}")
        values.append(v)
    if not values:
        raise ConfigError(f"{what}: empty; pass a comma-separated list of integers")
    return sorted(set(values))


def parse_budgets(text: str) -> list[int]:
    return parse_int_list(text, "budgets", minimum=1, maximum=MAX_BUDGET)


def parse_seeds(text: str) -> list[int]:
    return parse_int_list(text, "seeds", minimum=0)
