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

FORMAT_VERSION = 1
MIN_EXAMPLES = 50
MIN_PER_CLASS = 10


@dataclass
class ValueHead:
    """Standardise, then a logistic layer (``kind='logistic'``) or a ReLU MLP (``'mlp'``)."""

    kind: str
    mean: np.ndarray
    scale: np.ndarray
    weights: list[np.ndarray]
    biases: list[np.ndarray]
    metadata: dict[str, Any] = field(default_factory=dict)

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

    def save(self, path: str | Path) -> None:
        arrays: dict[str, np.ndarray] = {"mean": self.mean, "scale": self.scale}
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            arrays[f"w{i}"] = w.astype(np.float32)
            arrays[f"b{i}"] = b.astype(np.float32)
        meta = {**self.metadata, "format": FORMAT_VERSION, "kind": self.kind,
                "layers": len(self.weights)}
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
            n = int(meta["layers"])
            head = ValueHead(kind=meta["kind"], mean=z["mean"].astype(np.float64),
                             scale=z["scale"].astype(np.float64),
                             weights=[z[f"w{i}"].astype(np.float64) for i in range(n)],
                             biases=[z[f"b{i}"].astype(np.float64) for i in range(n)],
                             metadata=meta)
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


def fit_head(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    kind: str = "logistic",
    seed: int = 0,
    validation: float = 0.2,
    metadata: dict[str, Any] | None = None,
) -> tuple[ValueHead, dict[str, float]]:
    """Fit on problems not held out; report validation metrics on held-out problems.

    ``groups`` are problem ids: validation is split by problem so a head is never scored on
    prefixes of problems it saw. Logistic regression picks its L2 strength on the validation
    split; the MLP uses early stopping on it.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.neural_network import MLPClassifier

    x = np.asarray(x, dtype=np.float64)
    y = (np.asarray(y, dtype=np.float64) > 0.5).astype(int)
    check_training_data(x, y)
    rng = np.random.default_rng(seed)
    uniq = np.unique(groups)
    held = set(rng.choice(uniq, size=max(1, round(validation * len(uniq))), replace=False))
    val = np.array([g in held for g in groups])
    if val.all() or (~val).all() or len(np.unique(y[val])) < 2:
        val = rng.random(len(y)) < validation  # too few problems to split by problem
    mean = x[~val].mean(axis=0)
    scale = x[~val].std(axis=0) + 1e-6
    xs = (x - mean) / scale

    def auc(p: np.ndarray) -> float:
        return float(roc_auc_score(y[val], p)) if len(np.unique(y[val])) == 2 else float("nan")

    best: tuple[float, Any] | None = None
    if kind == "logistic":
        for c in (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0):
            clf = LogisticRegression(C=c, max_iter=2000, random_state=seed)
            clf.fit(xs[~val], y[~val])
            score = auc(clf.predict_proba(xs[val])[:, 1])
            if best is None or score > best[0]:
                best = (score, clf)
        assert best is not None
        clf = best[1]
        weights, biases = [clf.coef_.T.copy()], [clf.intercept_.copy()]
    elif kind == "mlp":
        clf = MLPClassifier(hidden_layer_sizes=(64,), alpha=1e-2, early_stopping=True,
                            validation_fraction=0.15, max_iter=300, random_state=seed)
        clf.fit(xs[~val], y[~val])
        weights, biases = [w.copy() for w in clf.coefs_], [b.copy() for b in clf.intercepts_]
    else:
        raise ConfigError(f"kind: unknown head {kind!r}; choose logistic or mlp")
    head = ValueHead(kind=kind, mean=mean, scale=scale, weights=weights, biases=biases,
                     metadata=dict(metadata or {}))
    p_val = head.predict(x[val])
    eps = 1e-9
    metrics = {
        "val_auc": auc(p_val),
        "val_logloss": float(-np.mean(y[val] * np.log(p_val + eps)
                                      + (1 - y[val]) * np.log(1 - p_val + eps))),
        "train_examples": int((~val).sum()),
        "val_examples": int(val.sum()),
        "positive_rate": float(y.mean()),
    }
    if kind == "logistic" and best is not None:
        metrics["C"] = float(best[1].C)
    head.metadata["validation"] = metrics
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
