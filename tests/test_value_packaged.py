"""The value head shipped for the default model: it is the right model's, it carries its
training record, and ``--reward value`` runs pf on the real engine with it."""

from __future__ import annotations

import sys

import pytest

from engines import need
from particlescale.cli import main
from particlescale.models import KNOWN
from particlescale.rewards.value import packaged_head
from particlescale.rewards.value_head import ValueHead

MODEL = "qwen2.5-0.5b"


def test_the_packaged_head_is_the_default_models_and_says_how_it_was_made() -> None:
    head = ValueHead.load(packaged_head(MODEL), model_sha256=KNOWN[MODEL].sha256)
    assert head.dim == 896  # qwen2.5-0.5b's hidden size
    training, val = head.metadata["training"], head.metadata["validation"]
    assert training["dataset"] == "gsm8k-train" and training["problems"] >= 50
    assert training["samples"] == 8 and training["sampling_seconds"] > 0
    # cross-validated on problems it was not fitted on, and better than chance
    assert val["folds"] == 5 and val["val_auc"] > 0.55 and val["val_auc_within"] > 0.55
    assert val["val_logloss"] < val["base_logloss"]
    # and a final head for finished solutions, also cross-validated
    assert head.final is not None and val["final_val_auc_within"] > 0.55
    with pytest.raises(Exception, match="not on the loaded model"):
        ValueHead.load(packaged_head(MODEL), model_sha256="0" * 64)


@pytest.mark.model
def test_pf_with_the_packaged_value_reward_on_the_engine() -> None:
    need(MODEL)
    from particlescale import solve
    from particlescale.backends.llamacpp import LlamaCppGenerator
    from particlescale.rewards.registry import make_reward

    with LlamaCppGenerator(MODEL, embeddings=True, n_seq_max=8) as gen:
        res = solve("What is 6 times 7?", generator=gen, reward=make_reward("value", gen),
                    method="pf", budget=2, seed=0, max_steps=2, max_step_tokens=24)
    rewards = [r for c in res.candidates for r in c.rewards]
    assert rewards and all(0.0 < r < 1.0 for r in rewards)
    assert len({round(r, 6) for r in rewards}) > 1  # it tells prefixes apart


@pytest.mark.model
def test_value_reward_for_a_model_without_a_packaged_head_is_one_line(capsys, monkeypatch):
    need("smollm2-135m")
    monkeypatch.setattr(sys, "argv", ["particlescale", "solve", "What is 2+2?", "--model",
                                      "smollm2-135m", "--reward", "value", "--seed", "0"])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert "no packaged head for model 'smollm2-135m'" in err and "train-prm" in err
