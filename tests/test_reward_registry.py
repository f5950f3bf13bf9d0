"""``make_reward``: spec strings to reward models (no model is loaded here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from particlescale.errors import ConfigError
from particlescale.rewards.arith import ArithReward
from particlescale.rewards.combine import Combined
from particlescale.rewards.logprob import LogprobReward
from particlescale.rewards.registry import DEFAULT_REWARD, make_reward


def test_single_names() -> None:
    assert isinstance(make_reward("arith"), ArithReward)
    assert isinstance(make_reward(" logprob "), LogprobReward)


def test_combinations() -> None:
    r = make_reward("0.5*arith+logprob")
    assert isinstance(r, Combined)
    assert [(w, type(p)) for w, p in r.parts] == [(0.5, ArithReward), (1.0, LogprobReward)]
    assert r.name == "0.5*arith+logprob"
    assert make_reward("arith * logprob").name == "arith * logprob"
    assert isinstance(make_reward("2*arith"), Combined)  # a weight alone is a tempered reward


def test_default_reward_builds_without_a_model() -> None:
    r = make_reward(DEFAULT_REWARD)
    assert r.name == DEFAULT_REWARD


def test_judge_with_a_url_is_the_served_judge() -> None:
    from particlescale.rewards.remote_judge import RemoteJudge

    assert isinstance(make_reward("judge:http://127.0.0.1:9/v1"), RemoteJudge)


def test_judge_without_any_model_says_what_to_do(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARTICLESCALE_CACHE", str(tmp_path))  # nothing pulled
    with pytest.raises(ConfigError, match=r"models pull qwen2\.5-1\.5b"):
        make_reward("judge")


@pytest.mark.parametrize(("spec", "message"), [
    ("nope", "unknown 'nope'"),
    ("arith:3", "takes no argument"),
    ("", "expected a spec"),
    ("arith++logprob", "cannot read"),
    ("-1*arith", "must be positive"),
    ("0.5", "names no reward"),
])
def test_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_reward(spec)
