"""A value head: P(solution ends correct | prefix) from the generator's hidden state.

Outcome-supervised value model (Yu et al., 2023, "OVM"): each step prefix of a sampled
solution is labelled with whether that solution's final answer is correct (optionally with
Math-Shepherd-style Monte-Carlo labels), and a small classifier on the final-layer hidden
state at the step's last token learns to predict it. Fitting uses scikit-learn (extra
``train``); prediction is plain numpy, so inference needs nothing beyond the core.

The head file is an ``.npz`` with the weights and a JSON metadata record: the sha256 of the
GGUF the features came from (loading with another model is an error), the feature spec and
how the head was trained.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from particlescale.errors import ConfigError, ModelError
from particlescale.stats import auc, within_problem_auc

FORMAT_VERSION = 1
MIN_EXAMPLES = 50
MIN_PER_CLASS = 10


@dataclass
class ValueHead:
    """Standardise, then a logistic layer (``kind='logistic'``) or a ReLU MLP (``'mlp'``).

    ``final``, when present, is a second head fitted on the last step of each training
    solution only: it scores a *finished* solution (see ``predict_final``). The hidden state
    at a solution's end reads its answer, and a head trained on those alone ranks finished
    solutions much better than the head trained on every prefix, whose data are mostly
    intermediate steps (BENCHMARKS.md, ``value``).
    """

    kind: str
    mean: np.ndarray
    scale: np.ndarray
    weights: list[np.ndarray]
    biases: list[np.ndarray]
    metadata: dict[str, Any] = field(default_factory=dict)
    final: ValueHead | None = None

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def predict(self, features: np.ndarray) -> np.ndarray:
        """P(correct) for each row of ``features`` (n, dim)."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim == 1:
            x = x[None, :]
        if x.shape[1] != self.dim:
            raise ConfigError(f"features: expected dimension {self.dim}, got {x.shape[1]}")
        if not np.all(np.isfinite(x)):
            raise ConfigError("features: contain NaN or infinite values (a broken hidden state)")
        h = (x - self.mean) / self.scale
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = h @ w + b
            if i < len(self.weights) - 1:
                h = np.maximum(h, 0.0)
        z = h[:, 0]
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))

    def predict_final(self, features: np.ndarray) -> np.ndarray:
        """P(correct) of finished solutions from their last step's state (the final head if
        there is one, else the prefix head)."""
        return (self.final or self).predict(features)

    def _arrays(self, prefix: str) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {f"{prefix}mean": self.mean,
                                         f"{prefix}scale": self.scale}
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            arrays[f"{prefix}w{i}"] = w.astype(np.float32)
            arrays[f"{prefix}b{i}"] = b.astype(np.float32)
        return arrays

    def save(self, path: str | Path) -> None:
        arrays = self._arrays("")
        meta = {**self.metadata, "format": FORMAT_VERSION, "kind": self.kind,
                "layers": len(self.weights)}
        if self.final is not None:
            arrays.update(self.final._arrays("final_"))
            meta["final"] = {**self.final.metadata, "kind": self.final.kind,
                             "layers": len(self.final.weights)}
        arrays["metadata"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        with open(path, "wb") as f:
            np.savez_compressed(f, **arrays)

    @staticmethod
    def load(path: str | Path, *, model_sha256: str | None = None) -> ValueHead:
        """Load a head; with ``model_sha256``, refuse a head trained on another model."""
        p = Path(path)
        if not p.is_file():
            raise ModelError(f"value head: no file at {p}; train one with "
                             "`particlescale train-prm` or use the packaged default")
        try:
            z = np.load(p, allow_pickle=False)
            meta = json.loads(bytes(z["metadata"]).decode())

            def part(prefix: str, m: dict[str, Any]) -> ValueHead:
                n = int(m["layers"])
                return ValueHead(kind=m["kind"], mean=z[f"{prefix}mean"].astype(np.float64),
                                 scale=z[f"{prefix}scale"].astype(np.float64),
                                 weights=[z[f"{prefix}w{i}"].astype(np.float64)
                                          for i in range(n)],
                                 biases=[z[f"{prefix}b{i}"].astype(np.float64)
                                         for i in range(n)],
                                 metadata=m)

            head = part("", meta)
            if meta.get("final"):
                head.final = part("final_", meta["final"])
        except (OSError, KeyError, ValueError) as e:
            raise ModelError(f"value head: {p} is not a valid head file ({e})") from None
        if model_sha256 is not None and meta.get("model_sha256") not in (None, model_sha256):
            raise ModelError(
                f"value head: {p.name} was trained on model {meta.get('model_name')!r} "
                f"(sha256 {str(meta.get('model_sha256'))[:12]}…), not on the loaded model "
                f"(sha256 {model_sha256[:12]}…); train a head for this model with "
                "`particlescale train-prm --model ...`"
            )
        return head


def check_training_data(x: np.ndarray, y: np.ndarray) -> None:
    """Refuse data a head cannot honestly be fitted on, saying what minimum is needed."""
    if x.ndim != 2 or len(x) != len(y):
        raise ConfigError("features/labels: need a (n, dim) feature matrix and n labels")
    if len(y) < MIN_EXAMPLES:
        raise ConfigError(f"training data: {len(y)} labelled prefixes; need at least "
                          f"{MIN_EXAMPLES} (sample more problems or more solutions each)")
    pos = int(np.sum(y > 0.5))
    if min(pos, len(y) - pos) < MIN_PER_CLASS:
        raise ConfigError(f"training data: {pos} positive and {len(y) - pos} negative prefixes; "
                          f"need at least {MIN_PER_CLASS} of each (the generator solves none or "
                          "all of these problems: use more or harder/easier problems)")
    if not np.all(np.isfinite(x)):
        raise ConfigError("features: contain NaN or infinite values; the engine returned a "
                          "broken hidden state")


def _folds(groups: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Fold index per row: whole problems go to one fold (a head is never validated on
    prefixes of a problem it was fitted on, which would reward memorising problems)."""
    uniq = np.unique(groups)
    order = rng.permutation(len(uniq))
    fold_of = {uniq[j]: i % k for i, j in enumerate(order)}
    return np.array([fold_of[g] for g in groups])


def _logloss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _fit_layers(kind: str, xs: np.ndarray, y: np.ndarray, c: float, seed: int
                ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    if kind == "logistic":
        clf = LogisticRegression(C=c, max_iter=2000, random_state=seed)
        clf.fit(xs, y)
        return [clf.coef_.T.copy()], [clf.intercept_.copy()]
    clf = MLPClassifier(hidden_layer_sizes=(64,), alpha=c, early_stopping=True,
                        validation_fraction=0.15, max_iter=300, random_state=seed)
    clf.fit(xs, y)
    return [w.copy() for w in clf.coefs_], [b.copy() for b in clf.intercepts_]


def _head(kind: str, x: np.ndarray, y: np.ndarray, c: float, seed: int,
          metadata: dict[str, Any] | None = None) -> ValueHead:
    mean = x.mean(axis=0)
    scale = x.std(axis=0) + 1e-6
    weights, biases = _fit_layers(kind, (x - mean) / scale, y, c, seed)
    return ValueHead(kind=kind, mean=mean, scale=scale, weights=weights, biases=biases,
                     metadata=dict(metadata or {}))


# Regularisation grid: L2 inverse strength C for the logistic head, weight decay alpha for
# the MLP. With a few hundred solutions and ~900 features, strong regularisation wins.
GRID = {"logistic": (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1),
        "mlp": (1e-2, 1e-1, 1.0)}


def fit_head(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    kind: str = "logistic",
    seed: int = 0,
    folds: int = 5,
    metadata: dict[str, Any] | None = None,
    final: np.ndarray | None = None,
) -> tuple[ValueHead, dict[str, float]]:
    """Choose the regularisation by cross-validation split by problem, then refit on all.

    ``groups`` are problem ids. Every prefix gets an out-of-fold prediction from a head
    fitted without its problem; the reported validation metrics (pooled AUC, within-problem
    AUC, log loss) are computed on those, so they use every problem and never a seen one.
    The strength with the lowest out-of-fold log loss is refitted on all the data: log loss
    is a proper score, so the head stays calibrated (pf uses its output as a probability);
    choosing by AUC alone favours near-constant heads whose ranking survives but whose
    probabilities all sit at the base rate, which would flatten pf's weights.

    ``final`` (a boolean mask of the rows that are a solution's last step): also fit the
    final head (``ValueHead.final``) the same way on those rows alone; its metrics get a
    ``final_`` prefix. Too few of them for a head is not an error: the head then has none
    (``final_skipped`` says why).
    """
    if kind not in GRID:
        raise ConfigError(f"kind: unknown head {kind!r}; choose logistic or mlp")
    x = np.asarray(x, dtype=np.float64)
    y = (np.asarray(y, dtype=np.float64) > 0.5).astype(int)
    groups = np.asarray(groups)
    check_training_data(x, y)
    rng = np.random.default_rng(seed)
    n_problems = len(np.unique(groups))
    if n_problems < 2:
        raise ConfigError(f"training data: {n_problems} problem; need at least 2 so that a "
                          "head can be validated on a problem it was not fitted on")
    fold = _folds(groups, min(folds, n_problems), rng)
    best: tuple[float, float, np.ndarray] | None = None
    for c in GRID[kind]:
        oof = np.full(len(y), np.nan)
        for f in np.unique(fold):
            tr = fold != f
            if len(np.unique(y[tr])) < 2:
                continue  # a fold whose training part has one class cannot be fitted
            oof[~tr] = _head(kind, x[tr], y[tr], c, seed).predict(x[~tr])
        ok = ~np.isnan(oof)
        score = _logloss(y[ok], oof[ok]) if ok.any() else np.inf
        if best is None or score < best[0]:
            best = (score, c, oof)
    assert best is not None
    _, c, oof = best
    head = _head(kind, x, y, c, seed, metadata)
    ok = ~np.isnan(oof)
    within, n_within = within_problem_auc(y[ok], oof[ok], groups[ok])
    metrics = {
        "val_auc": auc(y[ok], oof[ok]),
        "val_auc_within": within,
        "val_problems_within": n_within,
        "val_logloss": _logloss(y[ok], oof[ok]),
        "base_logloss": _logloss(y[ok], np.full(ok.sum(), y.mean())),
        "val_examples": int(ok.sum()),
        "problems": n_problems,
        "folds": len(np.unique(fold)),
        "positive_rate": float(y.mean()),
        "C" if kind == "logistic" else "alpha": float(c),
    }
    head.metadata["validation"] = metrics
    if final is not None:
        mask = np.asarray(final, dtype=bool)
        try:
            fin, fm = fit_head(x[mask], y[mask], groups[mask], kind=kind, seed=seed,
                               folds=folds, metadata={"fitted_on": "last step of each solution"})
        except ConfigError as e:
            head.metadata["final_skipped"] = str(e)
        else:
            head.final = fin
            metrics.update({f"final_{k}": v for k, v in fm.items()})
    return head, metrics


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def model_sha256(path: str | Path, name: str) -> str:
    """A model file's sha256: the known one for a pulled model name, else hashed from the file."""
    from particlescale import models

    if name in models.KNOWN:
        return models.KNOWN[name].sha256
    return file_sha256(path)
