"""Value head: fitting recovers a real signal, the file round-trips, and bad data or a head
for another model are refused with a clear error."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from particlescale.errors import ConfigError, ModelError
from particlescale.rewards.combine import Combined
from particlescale.rewards.value import ValueReward
from particlescale.rewards.value_head import ValueHead, fit_head
from particlescale.types import Problem, Step, Usage


def data(n_problems: int = 60, per: int = 12, dim: int = 24, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_problems * per, dim))
    logit = 1.5 * x[:, 0] - 1.0 * x[:, 3]
    y = (rng.random(len(x)) < 1 / (1 + np.exp(-logit))).astype(float)
    groups = np.repeat([f"p{i}" for i in range(n_problems)], per)
    return x, y, groups, logit


@pytest.mark.parametrize("kind", ["logistic", "mlp"])
def test_fit_recovers_signal_and_round_trips(kind: str, tmp_path) -> None:
    x, y, groups, logit = data()
    head, metrics = fit_head(x, y, groups, kind=kind, seed=0,
                             metadata={"model_sha256": "ab" * 32, "model_name": "m"})
    # the Bayes-optimal AUC on this data is ~0.8; a head that learned nothing gives 0.5
    assert metrics["val_auc"] > 0.7
    p = head.predict(x)
    assert np.corrcoef(p, logit)[0, 1] > 0.7
    path = tmp_path / "h.npz"
    head.save(path)
    again = ValueHead.load(path, model_sha256="ab" * 32)
    assert np.allclose(again.predict(x[:20]), p[:20], atol=1e-5)


def test_validation_never_sees_the_problem_it_scores() -> None:
    # Outcomes depend on the problem only, and the features carry a code per problem: a head
    # validated on rows of problems it was fitted on would score ~1.0 by memorising codes.
    rng = np.random.default_rng(3)
    n, per, dim = 60, 10, 16
    codes = rng.normal(size=(n, dim))
    groups = np.repeat([f"p{i}" for i in range(n)], per)
    x = np.repeat(codes, per, axis=0) + 0.05 * rng.normal(size=(n * per, dim))
    y = np.repeat((rng.random(n) < 0.5).astype(float), per)
    _, m = fit_head(x, y, groups, seed=1)
    assert m["val_auc"] < 0.7
    assert m["val_examples"] == n * per and m["folds"] == 5
    # and the same data with a real signal in it is found
    x2, y2, g2, _ = data()
    _, m2 = fit_head(x2, y2, g2, seed=1)
    assert m2["val_auc"] > 0.7 and m2["val_auc_within"] > 0.65


def test_head_for_another_model_is_refused(tmp_path) -> None:
    x, y, groups, _ = data()
    head, _ = fit_head(x, y, groups, metadata={"model_sha256": "ab" * 32, "model_name": "m"})
    head.save(tmp_path / "h.npz")
    with pytest.raises(ModelError, match="not on the loaded model"):
        ValueHead.load(tmp_path / "h.npz", model_sha256="cd" * 32)
    with pytest.raises(ModelError, match="no file"):
        ValueHead.load(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a head")
    with pytest.raises(ModelError, match="not a valid head"):
        ValueHead.load(tmp_path / "bad.npz")


def test_bad_training_data_is_refused() -> None:
    x, y, groups, _ = data()
    with pytest.raises(ConfigError, match="need at least 50"):
        fit_head(x[:20], y[:20], groups[:20])
    with pytest.raises(ConfigError, match="positive and"):
        fit_head(x, np.ones(len(y)), groups)
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ConfigError, match="NaN"):
        fit_head(bad, y, groups)


def test_value_reward_scores_steps_and_requires_features() -> None:
    x, y, groups, _ = data()
    head, _ = fit_head(x, y, groups)
    reward = ValueReward(head)
    steps = [Step(f"s{i}", features=x[i]) for i in range(3)]
    usage = Usage()
    scores = asyncio.run(reward.score(Problem("q"), [steps], usage))
    assert np.allclose(scores[0], head.predict(x[:3]))
    assert usage.prm_calls == 1
    with pytest.raises(ConfigError, match="no hidden states"):
        asyncio.run(reward.score(Problem("q"), [[Step("plain")]], usage))
    with pytest.raises(ConfigError, match="NaN"):
        head.predict(np.full(x.shape[1], np.nan))


def test_value_reward_aggregates_by_min_alone_and_in_a_product() -> None:
    # min is the measured default: a prefix is as good as its weakest step
    x, y, groups, _ = data()
    head, _ = fit_head(x, y, groups)
    reward = ValueReward(head)
    assert reward.default_aggregation == "min"
    steps = [Step(f"s{i}", features=x[i]) for i in range(6)]
    per_step = head.predict(x[:6])
    combined = Combined([(1.0, reward)])
    scores = asyncio.run(combined.score(Problem("q"), [steps], Usage()))[0]
    assert np.allclose(scores, np.minimum.accumulate(per_step), atol=1e-9)
    assert not np.allclose(scores, per_step)  # the data has a step below an earlier one


def test_final_head_learns_what_ends_a_solution_and_round_trips(tmp_path) -> None:
    # Intermediate prefixes carry their signal in coordinate 0, finished solutions in 5.
    rng = np.random.default_rng(7)
    n, per, dim = 60, 12, 16
    x = rng.normal(size=(n * per, dim))
    final = np.tile(np.arange(per) % 3 == 2, n)  # every third row ends a solution
    logit = np.where(final, 2.0 * x[:, 5], 2.0 * x[:, 0])
    y = (rng.random(len(x)) < 1 / (1 + np.exp(-logit))).astype(float)
    groups = np.repeat([f"p{i}" for i in range(n)], per)
    head, m = fit_head(x, y, groups, final=final, metadata={"model_sha256": "ab" * 32})
    assert head.final is not None and m["final_val_auc"] > 0.7
    probe = np.zeros((2, dim))
    probe[1, 5] = 2.0
    assert np.diff(head.predict_final(probe))[0] > 0.2  # the final head reads coordinate 5
    head.save(tmp_path / "h.npz")
    again = ValueHead.load(tmp_path / "h.npz", model_sha256="ab" * 32)
    assert again.final is not None
    assert np.allclose(again.predict_final(x[:9]), head.predict_final(x[:9]), atol=1e-5)
    assert np.allclose(again.predict(x[:9]), head.predict(x[:9]), atol=1e-5)

    # a step that ends the solution is scored by the final head, the others by the prefix head
    steps = [Step("a", features=x[0]), Step("b \\boxed{3}", features=x[1])]
    scores = asyncio.run(ValueReward(again).score(Problem("q"), [steps], Usage()))[0]
    assert np.isclose(scores[0], again.predict(x[:1])[0])
    assert np.isclose(scores[1], again.predict_final(x[1:2])[0])
    assert not np.isclose(again.predict(x[1:2])[0], scores[1])


def test_too_few_finished_solutions_leave_the_head_without_a_final_head() -> None:
    x, y, groups, _ = data()
    final = np.zeros(len(y), dtype=bool)
    final[:20] = True
    head, m = fit_head(x, y, groups, final=final)
    assert "final_val_auc" not in m
    assert head.final is None and "need at least 50" in head.metadata["final_skipped"]
    assert np.allclose(head.predict_final(x[:3]), head.predict(x[:3]))
