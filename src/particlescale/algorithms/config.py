"""Configuration of every algorithm: pydantic models whose defaults reproduce the paper.

Every option is validated before any model call; an unknown option or a bad value is a
:class:`ConfigError` naming the option and the accepted values. Defaults that differ from the
paper (Puri et al., 2025) say so.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from particlescale.errors import ConfigError
from particlescale.protocols import SamplingParams

Aggregation = Literal["last", "min", "prod", "mean", "model"]
Selector = Literal["argmax", "weighted-vote", "vote"]


class BaseConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(0.8, ge=0, description="LM sampling temperature (paper: 0.8).")
    top_p: float = Field(1.0, gt=0, le=1, description="LM nucleus sampling (paper: 1.0).")
    max_steps: int = Field(40, ge=1, le=1000, description="Steps before a particle is stopped.")
    max_step_tokens: int = Field(
        512, ge=1, le=32768, description="Token cap of one step (not fixed by the paper)."
    )
    delimiter: str = Field("\n\n", min_length=1, description="Step delimiter (paper: blank line).")
    aggregation: Aggregation | None = Field(
        None,
        description="How step rewards become one score; None = the reward model's default "
        "('model' for Qwen2.5-Math-PRM as in the paper, else 'last').",
    )
    selector: Selector = Field("argmax", description="How the answer is picked.")

    def sampling(self) -> SamplingParams:
        return SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            max_step_tokens=self.max_step_tokens,
            delimiter=self.delimiter,
        )


class PFConfig(BaseConfig):
    """Particle filtering. Defaults are the paper's: multinomial resampling after every step,
    weight = softmax(logit(current aggregated reward) / 1)."""

    resampling: Literal["multinomial", "systematic", "stratified", "residual"] = "multinomial"
    ess_threshold: float = Field(
        1.0, ge=0, le=1,
        description="Resample when ESS/N < threshold; 1.0 = every step (paper).",
    )
    weights: Literal["paper", "incremental"] = Field(
        "paper",
        description="'paper': weight = current aggregated reward; 'incremental': ratio of "
        "successive rewards (the principled SMC target).",
    )
    transform: Literal["logit", "log"] | None = Field(
        None,
        description="Reward -> log-potential: None = 'logit' for paper weights (the paper's "
        "softmax over logits), 'log' for incremental weights (ratio of rewards).",
    )
    softmax_temperature: float = Field(1.0, gt=0, description="Softmax temperature (paper: 1).")
    tempering: Literal["none", "linear", "adaptive"] = Field(
        "none",
        description="'linear': anneal the softmax temperature from temperature_start to "
        "softmax_temperature over anneal_steps; 'adaptive': each step pick the temperature "
        ">= softmax_temperature by bisection so that ESS/N reaches ess_target.",
    )
    temperature_start: float = Field(4.0, gt=0)
    anneal_steps: int = Field(10, ge=1)
    ess_target: float = Field(0.5, gt=0, le=1)

    def potential_transform(self) -> str:
        if self.transform is not None:
            return self.transform
        return "logit" if self.weights == "paper" else "log"


class PGConfig(PFConfig):
    """Particle Gibbs: ``iterations`` conditional SMC sweeps of budget // iterations particles.

    ``ancestor_sampling`` (not in the paper; off by default) is particle Gibbs with ancestor
    sampling (Lindsten, Jordan & Schön, 2014): at every resampling step the reference
    trajectory may be re-attached to another particle's prefix. It needs
    ``weights='incremental'`` and ``tempering='none'`` and a generator that can score
    continuations (see ``algorithms/pf.py``).
    """

    iterations: int = Field(4, ge=1, le=1000, description="Gibbs iterations T (budget = N*T).")
    ancestor_sampling: bool = Field(
        False,
        description="Particle Gibbs with ancestor sampling (PGAS): at each resampling step "
        "redraw the reference's ancestor among the particles (needs weights='incremental', "
        "tempering='none' and a generator that scores continuations; costs one continuation "
        "scoring and one reward call per particle per step).",
    )

    @model_validator(mode="after")
    def _ancestor_sampling_target(self) -> PGConfig:
        if self.resampling != "multinomial":
            # The free particles of a conditional sweep use the unconditional scheme; only
            # multinomial resampling is known to leave the target invariant that way (the
            # conditional systematic/residual schemes of Chopin & Singh 2015 are not built).
            raise ValueError(
                f"resampling={self.resampling!r} is not supported by particle Gibbs / parallel "
                "tempering (a conditional sweep is proven invariant only with multinomial "
                "resampling); set resampling='multinomial' or use method 'pf'")
        if not self.ancestor_sampling:
            return self
        if self.weights != "incremental":
            raise ValueError(
                "ancestor_sampling=true needs weights='incremental' (the ancestor weights use "
                "the target p(x) exp(phi(x) / softmax_temperature) that incremental weights "
                "define; paper weights define none); set weights='incremental' or "
                "ancestor_sampling=false")
        if self.tempering != "none":
            raise ValueError(
                f"ancestor_sampling=true needs tempering='none', got "
                f"tempering={self.tempering!r} (with a temperature that changes over the "
                "steps the final target is not defined at step t); set tempering='none' or "
                "ancestor_sampling=false")
        return self


class PTConfig(PGConfig):
    """Parallel tempering: ``chains`` particle-Gibbs chains at geometric softmax temperatures
    from softmax_temperature to max_temperature; neighbours swap references (Metropolis)."""

    chains: int = Field(2, ge=1, le=64)
    max_temperature: float = Field(4.0, gt=0)
    swaps: Literal["metropolis", "heuristic"] | None = Field(
        None,
        description="'metropolis': swaps are Metropolis moves between the chains' targets "
        "p(x) exp(phi(x)/tau), which exist only with weights='incremental' and "
        "tempering='none'; 'heuristic': the paper's swap rule on chains that have no "
        "stationary target (paper weights); None = metropolis when the chains have targets, "
        "else heuristic (result.info['swaps'] says which).",
    )

    def swap_kind(self) -> str:
        if self.swaps is not None:
            return self.swaps
        return "metropolis" if self.has_target() else "heuristic"

    def has_target(self) -> bool:
        return self.weights == "incremental" and self.tempering == "none"

    @model_validator(mode="after")
    def _swaps_need_targets(self) -> PTConfig:
        if self.swaps == "metropolis" and not self.has_target():
            raise ValueError(
                f"swaps='metropolis' needs weights='incremental' and tempering='none' (got "
                f"weights={self.weights!r}, tempering={self.tempering!r}): only then does each "
                "chain target p(x) exp(phi(x)/tau); set those, or swaps='heuristic' for the "
                "paper's rule")
        return self


class SamplingConfig(BaseConfig):
    """Self-consistency, best-of-n, weighted-best-of-n: independent full solutions."""


class GreedyConfig(BaseConfig):
    temperature: float = Field(0.0, ge=0, description="Greedy decoding.")


class DVTSConfig(BaseConfig):
    """DVTS as in HF search-and-learn: N/M subtrees of beam width M (``algorithms/beam.py``)."""

    beam_width: int = Field(4, ge=1, le=1024, description="Beam width M (HF: 4).")


class BeamConfig(DVTSConfig):
    """Beam search as in HF search-and-learn's beam-search recipes (``algorithms/beam.py``)."""

    filter_duplicates: bool = Field(
        True,
        description="Drop live beams whose text repeats an earlier one before keeping the "
        "best N/M (HF option filter_duplicates; true in every HF beam-search recipe).",
    )
    sort_completed: bool = Field(
        False,
        description="Return the N best-scoring finished beams instead of the first N to "
        "finish (HF option sort_completed; false by default and in HF's recipes).",
    )


def parse_config(cls: type[BaseModel], method: str, options: dict[str, Any]) -> Any:
    """Validate ``options`` for ``method`` into ``cls``; errors name the option and its values."""
    try:
        return cls(**options)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            name = ".".join(str(x) for x in err["loc"]) or "options"
            if err["type"] == "value_error" and not err["loc"]:  # a check across options
                lines.append(f"{method}: {err['ctx']['error']}")
            elif err["type"] == "extra_forbidden":
                accepted = ", ".join(sorted(cls.model_fields))
                lines.append(f"{method}: unknown option {name!r}; accepted options: {accepted}")
            else:
                field = cls.model_fields.get(str(err["loc"][0])) if err["loc"] else None
                hint = f" ({field.description})" if field is not None and field.description else ""
                lines.append(f"{method}: option {name!r}: {err['msg']}{hint}")
        raise ConfigError("; ".join(lines)) from None


class SelfConsistencyConfig(SamplingConfig):
    selector: Selector = Field("vote", description="Majority vote (self-consistency).")


class WeightedBestOfNConfig(SamplingConfig):
    selector: Selector = Field("weighted-vote", description="Sum of rewards per answer.")
