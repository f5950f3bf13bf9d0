"""Token sampling in numpy: temperature, top-p (nucleus), greedy; and the model's log-probs.

Each row of a logits matrix is one sequence's next-token distribution. ``sample_rows`` draws
one token per row by inverse-CDF sampling with a uniform ``u`` supplied by the caller (each
child particle owns its own RNG stream, so a seed reproduces whatever the batch composition).

The log-probability returned for the sampled token is under the model's *own* distribution
(full softmax at temperature 1, no top-p truncation): it is the quantity a reward or a
diagnostic wants ("how likely is this text under the LM"), not the proposal probability.
"""

from __future__ import annotations

import numpy as np

NUCLEUS_CANDIDATES = 256  # top-p sorts the best 256 tokens first; all only if needed
BLOCK = 2048  # block size of the two-level inverse CDF


def log_normalizers(logits: np.ndarray) -> np.ndarray:
    """log sum exp of each row (float64), i.e. log Z of the temperature-1 softmax."""
    m = logits.max(axis=1)
    z = np.exp(logits - m[:, None]).sum(axis=1, dtype=np.float64)
    return m.astype(np.float64) + np.log(z)


def _nucleus(p: np.ndarray, top_p: float) -> tuple[np.ndarray, np.ndarray]:
    """``(p normalised, indices of the nucleus)``: the smallest set of most likely entries
    whose mass reaches ``top_p`` (the best ``NUCLEUS_CANDIDATES`` first; a full sort only if
    needed), most likely first."""
    p = p / p.sum(dtype=np.float64)
    k = min(NUCLEUS_CANDIDATES, p.size)
    cand = np.argpartition(-p, k - 1)[:k]
    cand = cand[np.argsort(-p[cand], kind="stable")]
    cs = np.cumsum(p[cand], dtype=np.float64)
    if cs[-1] < top_p and k < p.size:  # the nucleus is wider than the candidates
        cand = np.argsort(-p, kind="stable")
        cs = np.cumsum(p[cand], dtype=np.float64)
    cut = int(np.searchsorted(cs, top_p, side="left")) + 1
    return p, cand[: min(cut, cand.size)]


def _nucleus_pick(p: np.ndarray, top_p: float, u: float) -> int:
    """Index into ``p`` drawn from the nucleus of mass ``top_p`` (see :func:`_nucleus`)."""
    p, keep = _nucleus(p, top_p)
    cdf = np.cumsum(p[keep], dtype=np.float64)
    j = int(np.searchsorted(cdf, u * cdf[-1], side="right"))
    return int(keep[min(j, keep.size - 1)])


def _inverse_cdf(p: np.ndarray, u: float) -> int:
    """The index whose cumulative mass first exceeds ``u`` times the total (float64 sums).

    Blocked: one pass for block sums, then a cumulative sum inside one block only, which is
    several times cheaper than a float64 cumulative sum over the whole vocabulary.
    """
    n = p.size
    full = n - n % BLOCK
    sums = p[:full].reshape(-1, BLOCK).sum(axis=1, dtype=np.float64)
    if full < n:
        sums = np.append(sums, p[full:].sum(dtype=np.float64))
    cum = np.cumsum(sums)
    x = u * cum[-1]
    b = min(int(np.searchsorted(cum, x, side="right")), cum.size - 1)
    inner = np.cumsum(p[b * BLOCK:(b + 1) * BLOCK], dtype=np.float64)
    j = int(np.searchsorted(inner, x - (cum[b - 1] if b else 0.0), side="right"))
    return min(b * BLOCK + min(j, inner.size - 1), n - 1)


class Sampler:
    """Samples rows of one vocabulary size with preallocated work buffers.

    Allocating fresh 600 KB arrays for every token costs more than the arithmetic (page
    faults), so the engine keeps one sampler per thread. Probabilities are float32 relative
    to the best token (nothing that matters underflows), sums are float64.
    """

    def __init__(self, n_vocab: int) -> None:
        self.shifted = np.empty(n_vocab, dtype=np.float32)
        self.e1 = np.empty(n_vocab, dtype=np.float32)
        self.p = np.empty(n_vocab, dtype=np.float32)

    def sample(self, logits: np.ndarray, temperature: float, top_p: float, u: float
               ) -> tuple[int, float]:
        """One token; returns ``(token, log p(token))`` at temperature 1.

        ``temperature == 0`` is greedy (``u`` unused). Otherwise inverse-CDF sampling with
        ``u`` in [0, 1): the token whose cumulative (tempered, top-p truncated) mass first
        exceeds ``u`` times the total.
        """
        logits = np.asarray(logits, dtype=np.float32)
        m = logits.max()
        shifted = np.subtract(logits, m, out=self.shifted)
        e1 = np.exp(shifted, out=self.e1)
        log_z = float(m) + float(np.log(e1.sum(dtype=np.float64)))
        if temperature == 0.0:
            token = int(np.argmax(logits))
        else:
            if temperature == 1.0:
                p = e1
            else:
                p = np.multiply(shifted, np.float32(1.0 / temperature), out=self.p)
                np.exp(p, out=p)
            token = _nucleus_pick(p, top_p, u) if top_p < 1.0 else _inverse_cdf(p, u)
        return token, float(logits[token]) - log_z


def proposal_logprob(logits: np.ndarray, tokens: int | np.ndarray, temperature: float,
                     top_p: float) -> float:
    """log q(tokens) for one row, q being the distribution :meth:`Sampler.sample` draws from
    (temperature, then top-p truncation; greedy: the argmax has probability 1); ``tokens`` is
    one id or a set of ids (their total mass, e.g. every end-of-generation token). -inf when
    q gives them nothing (outside the nucleus, or not the greedy choice)."""
    logits = np.asarray(logits, dtype=np.float32)
    ids = np.atleast_1d(np.asarray(tokens, dtype=np.int64))
    if ids.size == 0:
        return -np.inf
    if temperature == 0.0:
        return 0.0 if int(np.argmax(logits)) in set(ids.tolist()) else -np.inf
    if top_p >= 1.0:
        scaled = logits.astype(np.float64) / temperature
        m = scaled.max()
        log_z = m + np.log(np.exp(scaled - m).sum())
        sel = scaled[ids]
        ms = sel.max()
        return float(ms + np.log(np.exp(sel - ms).sum()) - log_z)
    # the same float32 tempered weights as the sampler, so the nucleus is the same set
    m = logits.max()
    p = np.exp((logits - m) * np.float32(1.0 / temperature))
    p, keep = _nucleus(p, top_p)
    inside = np.isin(ids, keep)
    if not inside.any():
        return -np.inf
    return float(np.log(p[ids[inside]].sum(dtype=np.float64))
                 - np.log(p[keep].sum(dtype=np.float64)))


def sample_row(logits: np.ndarray, temperature: float, top_p: float, u: float
               ) -> tuple[int, float]:
    """:meth:`Sampler.sample` for a single row (allocates its buffers)."""
    return Sampler(np.asarray(logits).size).sample(logits, temperature, top_p, u)


def sample_rows(
    logits: np.ndarray,
    temperature: np.ndarray,
    top_p: np.ndarray,
    u: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`sample_row` over the rows of a matrix; returns ``(tokens, logprobs)``."""
    logits = np.asarray(logits)
    sampler = Sampler(logits.shape[1])
    out = [sampler.sample(row, float(t), float(q), float(x))
           for row, t, q, x in zip(logits, temperature, top_p, u, strict=True)]
    return (np.array([o[0] for o in out], dtype=np.int64),
            np.array([o[1] for o in out], dtype=np.float64))
