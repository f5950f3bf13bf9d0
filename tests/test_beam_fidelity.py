"""Beam search and DVTS against HF search-and-learn (``sal/search/beam_search.py``,
``sal/search/diverse_verifier_tree_search.py``), one test per rule where the two used to differ
(issue 21, item 10), on scripted generators whose draws for the given seed are checked first."""

from __future__ import annotations

from collections import Counter

from particlescale import solve
from particlescale.algorithms.beam import refill_counts
from particlescale.testing.scripted import ScriptedGenerator, ScriptedReward
from particlescale.types import Result, TraceStep


def boxed(prefix: tuple[str, ...]) -> dict[str, float]:
    """After one plain step, the solution ends by boxing it."""
    return {f"\\boxed{{{prefix[-1]}}}": 1.0}


def first_steps(step: TraceStep, by_id: dict[int, str]) -> list[str]:
    """The first step of each node's solution (its parent's text, for step-2 nodes)."""
    return [by_id[n.parent] for n in step.nodes]


def answers(res: Result) -> Counter[str]:
    """Answer -> number of returned solutions that give it (copies included)."""
    out: Counter[str] = Counter()
    for c in res.candidates:
        out[str(c.answer)] += c.copies
    return out


def test_refill_counts_repeat_the_kept_list_up_to_n() -> None:
    assert refill_counts(2, 8) == [4, 4]
    assert refill_counts(3, 8) == [3, 3, 2]
    assert refill_counts(1, 8) == [8]
    assert refill_counts(8, 8) == [1] * 8


def test_beam_filters_duplicate_live_beams() -> None:
    """HF (filter_duplicates: true in its beam recipes) keeps the best N/M *distinct* beams."""
    def dist(prefix: tuple[str, ...]) -> dict[str, float]:
        return {"a": 0.5, "b": 0.5} if not prefix else boxed(prefix)

    reward = {"a": 0.9, "b": 0.5}

    def run(**options: object) -> Result:
        gen = ScriptedGenerator(dist, horizon=3)
        return solve("q", generator=gen, reward=ScriptedReward(lambda p: reward[p[0]]),
                     method="beam", budget=8, seed=1, beam_width=4, **options)

    res = run()
    step1, step2 = res.trace.steps[:2]
    texts = Counter(n.text for n in step1.nodes)
    assert texts["a"] >= 2 and texts["b"] >= 1  # the draws this test needs
    by_id = {n.id: n.text for n in step1.nodes}
    # N/M = 2 kept: one "a" and the "b", not two copies of "a"; each gets M = 4 children
    assert Counter(first_steps(step2, by_id)) == {"a": 4, "b": 4}
    kept = Counter(n.parent for n in step2.nodes)
    assert sorted(kept.values()) == [4, 4]
    # without the filter, the two best beams are both "a"
    res = run(filter_duplicates=False)
    by_id = {n.id: n.text for n in res.trace.steps[0].nodes}
    assert set(first_steps(res.trace.steps[1], by_id)) == {"a"}


def test_beam_refills_n_children_when_fewer_than_n_over_m_beams_live() -> None:
    """HF repeats the live list (cut at N) so every round samples N steps, in that order."""
    def dist(prefix: tuple[str, ...]) -> dict[str, float]:
        if not prefix:
            return {"a": 0.1, "b": 0.1, "c": 0.1, "\\boxed{0}": 0.7}
        return boxed(prefix)

    reward = {"a": 0.9, "b": 0.8, "c": 0.7, "\\boxed{0}": 0.1}
    gen = ScriptedGenerator(dist, horizon=3)
    res = solve("q", generator=gen, reward=ScriptedReward(lambda p: reward[p[0]]),
                method="beam", budget=8, seed=26, beam_width=2)
    step1, step2 = res.trace.steps[:2]
    live = [n for n in step1.nodes if not n.finished]
    assert sorted(n.text for n in live) == ["a", "b", "c"]  # 3 live < N/M = 4
    # the live list a/b/c repeated and cut at 8: 3 + 3 + 2 children, all 8 sampled
    assert gen.calls[1] == [3, 3, 2]
    assert [n.parent for n in step2.nodes] == [n.id for n in live] * 2 + [live[0].id, live[1].id]


def test_beam_runs_until_no_beam_is_live() -> None:
    """HF stops when no beam is active (or at the step cap), not once N have finished."""
    def dist(prefix: tuple[str, ...]) -> dict[str, float]:
        return {"x": 0.5, "\\boxed{1}": 0.5}

    gen = ScriptedGenerator(dist, horizon=8)
    res = solve("q", generator=gen, reward=ScriptedReward(lambda p: 0.5 + 0.01 * len(p)),
                method="beam", budget=4, seed=1, beam_width=2)
    steps = res.trace.steps
    assert all(n.finished for n in steps[-1].nodes)
    finished_before_last = sum(n.finished for s in steps[:-1] for n in s.nodes)
    assert finished_before_last >= 4  # N had finished before the search ended
    assert all(any(not n.finished for n in s.nodes) for s in steps[:-1])
    assert all(len(s.nodes) == 4 for s in steps)  # N steps sampled every round
    assert res.info["finished_beams"] == sum(n.finished for s in steps for n in s.nodes)


def _early_late(dist_first: dict[str, float], seed: int, **options: object) -> Result:
    """Some beams finish at step 1 with a low score, the rest at step 2 with a high one."""
    def dist(prefix: tuple[str, ...]) -> dict[str, float]:
        return dist_first if not prefix else {"\\boxed{2}": 1.0}

    reward = {"\\boxed{1}": 0.1, "x": 0.5, "\\boxed{2}": 0.9}
    gen = ScriptedGenerator(dist, horizon=3)
    return solve("q", generator=gen, reward=ScriptedReward(lambda p: reward[p[-1]]),
                 method="beam", budget=4, seed=seed, beam_width=2, **options)


def test_beam_returns_the_first_n_finished_beams() -> None:
    """HF returns exactly N beams: the first N to finish (sort_completed defaults to false)."""
    first = {"\\boxed{1}": 0.5, "x": 0.5}
    res = _early_late(first, seed=2, selector="vote")
    early = sum(n.finished for n in res.trace.steps[0].nodes)
    assert 1 <= early <= 3  # the draws this test needs
    assert answers(res) == {"1": early, "2": 4 - early}
    assert res.info["finished_beams"] == early + 4


def test_beam_sort_completed_returns_the_best_n() -> None:
    """HF's sort_completed option: the N best-scoring finished beams."""
    first = {"\\boxed{1}": 0.5, "x": 0.5}
    res = _early_late(first, seed=2, selector="vote", sort_completed=True)
    assert sum(n.finished for n in res.trace.steps[0].nodes) == 3  # as in the test above
    assert answers(res) == {"2": 4}
    assert res.answer == "2"


def test_beam_ties_keep_the_later_beams() -> None:
    """HF keeps the last N/M of an ascending stable argsort: among equal scores, later beams."""
    def dist(prefix: tuple[str, ...]) -> dict[str, float]:
        return {"a": 0.25, "b": 0.25, "c": 0.25, "d": 0.25} if not prefix else boxed(prefix)

    gen = ScriptedGenerator(dist, horizon=3)
    res = solve("q", generator=gen, reward=ScriptedReward(lambda p: 0.5), method="beam",
                budget=4, seed=0, beam_width=2)
    step1, step2 = res.trace.steps[:2]
    distinct: list[int] = []
    seen: set[str] = set()
    for n in step1.nodes:
        if n.text not in seen:
            seen.add(n.text)
            distinct.append(n.id)
    assert len(distinct) >= 3  # the draws this test needs
    assert sorted({n.parent for n in step2.nodes}) == sorted(distinct[-2:])


def test_dvts_returns_m_leaves_per_subtree() -> None:
    """HF's DVTS returns every child of each subtree's last expansion: N leaves in all, which
    `vote` and `weighted-vote` count (not only the N/M chosen ones)."""
    def dist(prefix: tuple[str, ...]) -> dict[str, float]:
        return {"\\boxed{1}": 0.3, "\\boxed{2}": 0.7}

    reward = {"\\boxed{1}": 0.9, "\\boxed{2}": 0.6}

    def run(selector: str) -> Result:
        gen = ScriptedGenerator(dist, horizon=3)
        return solve("q", generator=gen, reward=ScriptedReward(lambda p: reward[p[-1]]),
                     method="dvts", budget=8, seed=4, beam_width=4, selector=selector)

    res = run("vote")
    groups = {s.band: Counter(n.text for n in s.nodes) for s in res.trace.steps}
    assert set(groups) == {"subtree 1", "subtree 2"} and len(res.trace.steps) == 2
    assert all(g["\\boxed{1}"] >= 1 for g in groups.values())  # each subtree's best is "1"
    drawn = sum(groups.values(), Counter())
    assert drawn["\\boxed{2}"] > drawn["\\boxed{1}"]  # the draws this test needs
    assert answers(res) == {"1": drawn["\\boxed{1}"], "2": drawn["\\boxed{2}"]}
    assert res.info["leaves"] == 8
    assert res.answer == "2"  # majority of the 8 leaves
    assert 0.9 * drawn["\\boxed{1}"] < 0.6 * drawn["\\boxed{2}"]
    assert run("weighted-vote").answer == "2"  # the 8 leaves' summed scores
    assert run("argmax").answer == "1"  # the best leaf


def test_dvts_leaves_include_unfinished_siblings() -> None:
    """A subtree that ends on a finished child still returns its unfinished siblings (HF's
    ``previous_text + next_texts[i]``), scored and answered like any leaf."""
    def dist(prefix: tuple[str, ...]) -> dict[str, float]:
        return {"step 5": 0.5, "\\boxed{3}": 0.5} if not prefix else {"\\boxed{4}": 1.0}

    reward = {"step 5": 0.2, "\\boxed{3}": 0.9, "\\boxed{4}": 0.5}
    gen = ScriptedGenerator(dist, horizon=3)
    res = solve("q", generator=gen, reward=ScriptedReward(lambda p: reward[p[-1]]),
                method="dvts", budget=4, seed=1, beam_width=4, selector="vote")
    assert len(res.trace.steps) == 1  # the best child finished at once
    unfinished = sum(not n.finished for n in res.trace.steps[0].nodes)
    assert 1 <= unfinished <= 2  # the draws this test needs
    assert answers(res) == {"3": 4 - unfinished, "5": unfinished}
    assert res.info["unfinished_leaves"] == unfinished
    partial = next(c for c in res.candidates if c.text == "step 5")
    assert partial.score == 0.2
    assert gen.leaked == [0]
