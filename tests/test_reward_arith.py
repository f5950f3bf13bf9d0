"""The ``arith`` checker on a table of true, false and uncheckable steps, and on GSM8K gold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from particlescale.errors import ConfigError
from particlescale.rewards.arith import ArithReward, check_step, equations
from particlescale.types import Problem, Step, Usage

TRUE = [
    "12 × 50 = 600",
    "48/2=24",
    "3 * 4 + 2 = 14",
    r"So she sold $\frac{3}{4} \times 48 = 36$ clips.",
    "3/4 = 0.75",
    "0.1 + 0.2 = 0.3",
    "He pays $1,000 * 2 = $2,000 in total.",
    "20% of 50 = 10",
    "50 / 200 = 25%",
    "50 / 200 * 100 = 25%",
    "Total = 5 + 3 = 8 apples",
    "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.",
    r"\[ 48 \div 2 = 24 \]",
    r"\( 6 \cdot 7 = 42 \)",
    r"She sold 48/2 = 24 clips in May, so 48 + 24 = \boxed{72}.",
    "10/3 = 3.33",
    "10 / 3 ≈ 3.3",
    r"100 / 3 \approx 33",
    "2^3 + 1 = 9",
    "(2 + 3) * 4 = 20",
    "2(3 + 4) = 14",
    "3 x 4 = 12",
    "**Step 2:** 7 - 10 = -3.",
    "1) 5 + 3 = 8",
    "8 x 1 1/2 = 12",
    r"\frac{1}{2} + \frac{1}{4} = \frac{3}{4}",
    "half of 48 = 24",
    "$7.50 / 3 = $2.50 each",
    "60 * 1.5 = 90 = 90.0",
]
FALSE = [
    "12 × 50 = 650",
    "48/2=25",
    "3 * 4 + 2 = 20",
    "10/3 = 3",
    "10/3 = 3.4",  # 3.33... rounds to 3.3
    "0.1 + 0.2 = 0.4",
    "$1,000 * 2 = $20,000",
    "20% of 50 = 5",
    "50 / 200 = 40%",
    r"So she sold $\frac{3}{4} \times 48 = 34$ clips.",
    "Total = 5 + 3 = 9",
    "She sold 48/2 = 24 clips in May, so 48 + 24 = 70.",
    "Janet sells 16 - 3 - 4 = <<16-3-4=8>>8 duck eggs a day.",
    r"\[ 7 \times 8 = 54 \]",
    "5 - 7 = 2",
]
NEUTRAL = [
    "Let x be the number of apples Natalia has.",
    "First, find how many clips she sold in May.",
    "She sold 48 clips in April.",
    "x + 5 = 10",
    "3x - 5 = 16",
    "apples - 3 = 5",
    "5 apples + 3 apples = 8 apples",
    "1/3 of 60 = 20",
    "24 out of 60 = 40%",
    "The meeting starts at 6:00 and lasts 48 minutes.",
    "Step 1: 48 = 48",
    "The answer is \\boxed{72}.",
    "(3/2)x - 5 = 70",
    "He works 5 days per week, 8 hours each day.",
]


@pytest.mark.parametrize("text", TRUE)
def test_true_steps_pass(text: str) -> None:
    eqs = equations(text)
    assert eqs, f"nothing checkable found in {text!r}"
    assert check_step(text) == "pass", [(e.lhs, e.rhs, e.holds) for e in eqs]


@pytest.mark.parametrize("text", FALSE)
def test_false_steps_fail(text: str) -> None:
    assert check_step(text) == "fail", [(e.lhs, e.rhs, e.holds) for e in equations(text)]


@pytest.mark.parametrize("text", NEUTRAL)
def test_uncheckable_steps_are_neutral(text: str) -> None:
    assert check_step(text) == "none", [(e.lhs, e.rhs, e.holds) for e in equations(text)]


def test_table_is_large_enough() -> None:
    assert len(TRUE) + len(FALSE) + len(NEUTRAL) >= 30


def test_chain_reports_each_link() -> None:
    eqs = equations("3 * 4 = 12 + 2 = 14")
    assert [(e.lhs, e.rhs, e.holds) for e in eqs] == [("3 * 4", "12 + 2", False),
                                                       ("12 + 2", "14", True)]


def test_no_eval_of_arbitrary_text() -> None:
    # Python syntax that eval would run is just text to the tokenizer; huge powers are refused.
    assert check_step("__import__('os').system('true') = 0") == "none"
    assert check_step("9^9^9^9 = 1") == "none"
    assert check_step("10^1000 = 1") == "none"


async def test_reward_values_and_cache() -> None:
    reward = ArithReward(pass_value=0.8, fail_value=0.2, neutral_value=0.5)
    problem = Problem("q")
    traj = [Step("48/2 = 24"), Step("Then add them."), Step("48 + 24 = 70")]
    usage = Usage()
    assert await reward.score(problem, [traj], usage) == [[0.8, 0.5, 0.2]]
    misses = reward.cache.misses
    # A longer trajectory sharing the prefix scores only its new step.
    again = await reward.score(problem, [[*traj, Step("So 72.")]], usage)
    assert again == [[0.8, 0.5, 0.2, 0.5]]
    assert reward.cache.misses == misses + 1
    assert usage.prm_calls == 0  # no model was called


def test_reward_rejects_values_outside_0_1() -> None:
    with pytest.raises(ConfigError, match="fail_value"):
        ArithReward(fail_value=0.0)


GSM8K_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "gsm8k_train.jsonl"


@pytest.mark.skipif(not GSM8K_TRAIN.exists(), reason="shared GSM8K train file not present")
def test_gold_solutions_rarely_fail() -> None:
    """GSM8K's human-written solutions are (almost always) arithmetically right: the checker
    must find most of their equations and flag very few lines (a few gold lines are wrong)."""
    counts = {"pass": 0, "fail": 0, "none": 0}
    with GSM8K_TRAIN.open() as f:
        for _, line in zip(range(1000), f, strict=False):
            for step in json.loads(line)["answer"].split("\n"):
                if not step.startswith("####"):
                    counts[check_step(step)] += 1
    total = sum(counts.values())
    assert counts["pass"] / total > 0.85
    assert counts["fail"] / total < 0.005
