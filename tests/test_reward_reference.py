"""The ``reference`` reward (answer-key PRM): reference values, step states, scores, seeded
noise, the spec, and the faces that must flag or refuse it (eval, solve, serve)."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from particlescale.errors import ConfigError
from particlescale.eval.datasets import Selection, load_dataset
from particlescale.rewards.arith import equations
from particlescale.rewards.reference import (
    FINAL_VALUES,
    START,
    STATE_VALUES,
    ReferenceReward,
    numbers_in,
    one_step_values,
    reference_values,
    step_state,
)
from particlescale.rewards.registry import make_reward, spec_uses_answer_key, uses_answer_key
from particlescale.server import load_config
from particlescale.types import Problem, Step, Usage

REPO = Path(__file__).resolve().parent.parent
NATALIA = Problem(
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
    "in May. How many clips did Natalia sell altogether in April and May?", id="natalia",
    answer="72",
    reference="Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
              "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72")


def score(reward: ReferenceReward, problem: Problem, *trajs: list[Step]) -> list[list[float]]:
    return asyncio.run(reward.score(problem, list(trajs), Usage()))


def test_reference_values_are_the_annotated_results_and_the_final_answer() -> None:
    assert [v for v, _ in reference_values(NATALIA.reference or "")] == [24, 72, 72]
    sol = "a <<1,200/8=150>>150 b <<10/3=3.33>>3.33 c <<0.5*3=1.5>>1.5\n#### 1,234"
    assert reference_values(sol) == [(Fraction(150), None), (Fraction("3.33"), Fraction(1, 100)),
                                     (Fraction(3, 2), Fraction(1, 10)), (Fraction(1234), None)]


def test_arith_equations_state_their_results() -> None:
    (e,) = equations("She sold 48/2 = 24 clips.")
    assert e.holds and e.result == (Fraction(24),) and e.result_unit is None
    (e,) = equations("1/4 of 200 is 50, so 50/200 = 25%")
    assert set(e.result) == {Fraction(1, 4), Fraction(25)}
    (e,) = equations("10/3 = 3.33")
    assert e.holds and e.result_unit == Fraction(1, 100)


@pytest.mark.parametrize(("text", "state"), [
    ("She sold 48/2 = 24 clips in May.", "hit"),
    ("In all 48 + 24 = 72 clips.", "hit"),
    ("48/2 = 24, then 48 * 2 = 96", "part"),
    ("48 * 2 = 96 clips.", "off"),
    ("48/2 = 25 clips.", "fail"),
    ("Let us add the clips of the two months.", "none"),
    ("She sold 24 clips in May.", "none"),  # states a number, computes nothing
    # units written in LaTeX between operands do not hide the equation (arith's blind spot)
    ("\\(48 \\text{ clips} \\div 2 = 24 \\text{ clips}\\)", "hit"),
    ("```python\nprint(48 + 48 / 2)\n```\n```output\n72.0\n```", "hit"),  # printed output
    ("```output\n96\n```", "off"),
])
def test_step_states(text: str, state: str) -> None:
    assert step_state(text, reference_values(NATALIA.reference or "")) == state


def test_one_step_routes_are_near_only_when_asked() -> None:
    refs = reference_values(NATALIA.reference or "")
    near = one_step_values(NATALIA.question, refs)
    assert Fraction(96) in {v for v, _ in near}  # 48 * 2: one operation from the question
    assert step_state("48 * 2 = 96", refs, near) == "near"
    assert step_state("48 * 2 = 96", refs) == "off"
    assert step_state("48 * 3 = 144, then 144 - 1 = 143", refs, near) == "off"
    r = ReferenceReward(near=0.7)
    assert score(r, NATALIA, [Step("48 * 2 = 96")])[0] == [0.7]


def test_stated_numbers_count_only_when_asked() -> None:
    refs = reference_values(NATALIA.reference or "")
    given = numbers_in(NATALIA.question)
    assert given == {Fraction(48)}
    text = "1. In May she sold 24 clips.\n2. Altogether she sold 48 clips in April."
    assert step_state(text, refs) == "none"
    assert step_state(text, refs, given=given) == "hit"  # 24 stated; 48 is given; 1., 2. marks
    assert step_state("Step 3: she sold 30 clips in May.", refs, given=given) == "off"
    r = ReferenceReward(stated=True)
    assert score(r, NATALIA, [Step(text)])[0] == [STATE_VALUES["hit"]]


def test_rounded_values_match_where_either_side_was_written_with_decimals() -> None:
    refs = reference_values("x <<10/3=3.33>>3.33\n#### 3.33")
    assert step_state("10/3 = 3.333", refs) == "hit"
    assert step_state("20/6 = 3.3333", refs) == "hit"
    assert step_state("10/4 = 2.5", refs) == "off"
    assert step_state("3 * 1.1 = 3.3", reference_values("#### 3")) == "off"  # not 3


def test_scores_mean_of_computing_steps_none_keeps_and_finish_by_the_gold_answer() -> None:
    r = ReferenceReward()
    hit, off, fail = STATE_VALUES["hit"], STATE_VALUES["off"], STATE_VALUES["fail"]
    steps = [Step("Let us see."), Step("48/2 = 24 clips in May."), Step("So far so good."),
             Step("48 * 2 = 96"), Step("48/2 = 25")]
    (row,) = score(r, NATALIA, steps)
    assert row == pytest.approx([START, hit, hit, (hit + off) / 2, (hit + off + fail) / 3])
    right = [*steps[:2], Step("48 + 24 = 72, so \\boxed{72}", finish="eos")]
    wrong = [*steps[:2], Step("The answer is \\boxed{96}.")]  # boxed: finished
    cut = [*steps[:2], Step("The answer is 96", finish="length")]  # not finished
    rows = score(r, NATALIA, right, wrong, cut)
    assert rows[0][-1] == FINAL_VALUES[1] and rows[1][-1] == FINAL_VALUES[0]
    assert rows[2][-1] == pytest.approx(hit)  # computes nothing: keeps the previous score
    assert score(ReferenceReward(aggregation="min"), NATALIA, steps)[0][-1] == fail
    assert score(ReferenceReward(aggregation="last"), NATALIA, steps[:4])[0][-1] == off
    evidence = score(ReferenceReward(aggregation="evidence"), NATALIA, steps[:4])[0]
    logit = math.log(hit / (1 - hit))
    assert evidence[1] == pytest.approx(hit)
    assert evidence[3] == pytest.approx(1 / (1 + math.exp(-(logit + math.log(off / (1 - off))))))
    with pytest.raises(ConfigError, match="aggregation must be one of"):
        ReferenceReward(aggregation="median")


def test_noise_is_one_score_per_prefix_in_any_batch_order_or_instance() -> None:
    steps = [Step("48/2 = 24"), Step("48 + 24 = 72"), Step("\\boxed{72}", finish="eos")]
    other = [Step("48 * 2 = 96"), Step("\\boxed{96}", finish="eos")]
    a = score(ReferenceReward(noise=1.0), NATALIA, steps, other)
    b = score(ReferenceReward(noise=1.0), NATALIA, other, steps[:2], steps)
    assert a[0] == b[2] and a[1] == b[0] and a[0][:2] == b[1]
    clean = score(ReferenceReward(), NATALIA, steps)[0]
    assert all(x != y for x, y in zip(a[0], clean, strict=True))
    assert score(ReferenceReward(noise=1.0, seed=1), NATALIA, steps)[0] != a[0]
    moved = Problem(NATALIA.question, id="other", answer="72", reference=NATALIA.reference)
    assert score(ReferenceReward(noise=1.0), moved, steps)[0] != a[0]


def test_noise_is_gaussian_of_scale_s_in_logit_space() -> None:
    s = 0.7
    trajs = [[Step(f"Step {i}: 48/2 = 24")] for i in range(2000)]
    noisy = np.array(score(ReferenceReward(noise=s), NATALIA, *trajs))[:, 0]
    z = (np.log(noisy) - np.log1p(-noisy) - math.log(STATE_VALUES["hit"] / (1 - STATE_VALUES[
        "hit"]))) / s
    assert abs(z.mean()) < 0.08 and abs(z.std() - 1) < 0.06


def test_a_problem_without_a_worked_solution_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"problem 'q' has no worked solution.*gsm8k"):
        score(ReferenceReward(), Problem("What is 2 + 2?", id="q", answer="4"), [Step("2+2=4")])


def test_spec() -> None:
    r = make_reward("reference:noise=0.5")
    assert isinstance(r, ReferenceReward) and r.noise == 0.5 and r.name == \
        "reference:noise=0.5"
    assert make_reward("reference").noise == 0.0
    assert make_reward("reference:noise=1,seed=3").seed == 3
    assert uses_answer_key(make_reward("reference*logprob"))
    assert not uses_answer_key(make_reward("arith*logprob"))
    assert spec_uses_answer_key("0.5*reference:noise=1+arith")
    assert not spec_uses_answer_key("arith*logprob")


@pytest.mark.parametrize(("spec", "words"), [
    ("reference:noise=-1", "noise must be a number >= 0"),
    ("reference:noise=abc", "noise must be a number >= 0, got 'abc'"),
    ("reference:noise=nan", "noise must be a number >= 0"),
    ("reference:noise=inf", "noise must be a number >= 0"),
    ("reference:seed=x", "seed must be an integer"),
    ("reference:sigma=1", "unknown option 'sigma=1'"),
    ("reference:0.5", "unknown option '0.5'"),
])
def test_bad_options_are_config_errors(spec: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        make_reward(spec)


def test_gsm8k_problems_carry_their_worked_solution_privately(tmp_path: Path) -> None:
    (q,) = load_dataset("gsm8k", selection=Selection(limit=1)).problems
    assert q.reference and "<<" in q.reference and q.reference.rstrip().endswith(q.answer or "")
    assert "<<" not in repr(q) and all("<<" not in str(v) for v in q.metadata.values())
    assert all(p.reference is None for p in load_dataset(
        "math500", selection=Selection(limit=3)).problems)
    path = tmp_path / "g.jsonl"
    path.write_text(json.dumps({"question": "2 + 3?", "answer": "2+3=<<2+3=5>>5\n#### 5"}))
    (p,) = load_dataset(str(path), extractor="gsm8k").problems
    assert p.answer == "5" and p.reference == "2+3=<<2+3=5>>5\n#### 5"


def test_server_refuses_the_answer_key() -> None:
    with pytest.raises(ConfigError, match=r"--reward: 'reference' reads the answer key"):
        load_config(reward="reference:noise=0.5")


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from particlescale.cli import main; main()",
                           *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.mark.parametrize(("args", "line"), [
    (("eval", "-d", "math500", "--reward", "reference", "--limit", "2"),
     "error: reward 'reference': dataset 'math500' has no worked solutions (field 'reference'"),
    (("eval", "-d", "gsm8k", "--reward", "reference:noise=-2", "--limit", "2"),
     "error: reference: noise must be a number >= 0"),
    (("solve", "What is 2 + 2?", "--reward", "reference"),
     "error: --reward: 'reference' reads the answer key"),
    (("solve", "What is 2 + 2?", "--reward", "reference:noise=x"),
     "error: reward 'reference': noise must be a number >= 0, got 'x'"),
    (("serve", "--reward", "reference"), "error: --reward: 'reference' reads the answer key"),
])
def test_cli_bad_input_is_one_error_line(tmp_path: Path, args: tuple[str, ...], line: str
                                         ) -> None:
    if args[0] == "eval":
        args = (*args, "-o", str(tmp_path / "out"))
    p = cli(*args)
    assert p.returncode == 2, p.stderr[-2000:]
    out = (p.stdout + p.stderr).strip().splitlines()
    assert len(out) == 1 and out[0].startswith(line), out


def test_cli_eval_says_it_uses_the_answer_key(tmp_path: Path) -> None:
    data = tmp_path / "g.jsonl"
    data.write_text("".join(json.dumps({"question": f"Problem {i}: 1 + 1?", "answer":
                                        "1+1=<<1+1=2>>2\n#### 2"}) + "\n" for i in range(2)))
    plugin = str(REPO / "tests" / "eval_plugin.py")
    p = cli("eval", "-d", str(data), "--answer-extractor", "gsm8k", "--methods", "best-of-n",
            "--budgets", "2", "--generator", f"py:{plugin}:generator", "--reward", "reference",
            "--no-progress", "-o", str(tmp_path / "out"))
    assert p.returncode == 0, p.stderr[-2000:]
    assert "reward 'reference' uses the answer key" in p.stderr
    assert "not the system's accuracy" in p.stderr
    rows = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["method"] == "best-of-n" for r in rows)
    p = cli("report", str(tmp_path / "out"))
    assert p.returncode == 0, p.stderr[-2000:]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "**Answer key:**" in report and "not the system's accuracy" in report
