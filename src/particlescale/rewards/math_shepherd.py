"""``math-shepherd``: peiyi9979/math-shepherd-mistral-7b-prm served by vLLM STEP pooling.

Format (the model card's): ``f"{question} {steps}"`` where every step ends with the tag
``" ки"`` and steps are joined by a newline, byte for byte::

    {question} {step 1} ки\\n{step 2} ки

The server is started with STEP pooling at the tag (``step_tag_id`` 12902) returning the
``+``/``-`` token ids (``returned_token_ids`` [648, 387]), so each tag gets the row
``[P(+), P(-)]`` (soft-maxed here when the server returns raw logits); a step's reward is
P(+). vLLM flags: ``--task reward --override-pooler-config '{"pooling_type": "STEP",
"step_tag_id": 12902, "returned_token_ids": [648, 387]}'`` for vLLM 0.7 - 0.9;
``--runner pooling`` with the same ``--override-pooler-config`` in 0.10; ``--runner pooling
--pooler-config '...'`` (same JSON) from 0.11 (``--override-pooler-config`` was deprecated in
0.11 and removed in 0.12). vLLM 0.32 (checked on the real server) turns a ``*ForCausalLM``
under ``--runner pooling`` into an embedding model instead, so there the model is served with
``--runner pooling --convert classify --hf-overrides '{"classifier_from_token": ["+", "-"],
"method": "no_post_processing"}' --pooler-config '{"task": "token_classify", "pooling_type":
"STEP", "step_tag_id": 12902}'`` (same ``[P(+), P(-)]`` rows). The Math-Shepherd paper
aggregates step rewards by their minimum, which is this reward's default aggregation.
"""

from __future__ import annotations

from collections.abc import Sequence

from particlescale.rewards.vllm_prm import ServedStepPRM

SHEPHERD_POOLER_CONFIG = {"pooling_type": "STEP", "step_tag_id": 12902,
                          "returned_token_ids": [648, 387]}


def shepherd_text(question: str, steps: Sequence[str]) -> str:
    """``{question} {step 1} ки\\n{step 2} ки`` (the model card's format)."""
    return f"{question.strip()} " + "\n".join(f"{s} ки" for s in steps)


class MathShepherdPRM(ServedStepPRM):
    """Math-Shepherd PRM over vLLM ``/pooling``; reward = P(``+``) at each ``ки``."""

    name = "math-shepherd"
    tag = "ки"
    positive = 0  # rows are [P(+), P(-)] (returned_token_ids order)
    default_aggregation = "min"

    def render(self, question: str, steps: Sequence[str]) -> str:
        return shepherd_text(question, steps)
