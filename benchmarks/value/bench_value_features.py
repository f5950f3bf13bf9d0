"""Which hidden-state feature should a value head read? Pooling and layer variants, offline.

The engine records, for each step, the final-layer state of the row that generated the
step's last token (for a solution ended by EOS: the row that generated EOS). Probing work
often finds mean-pooled token states, or middle layers, better than the last layer's state
at one token. To compare without sampling again, the stored solutions of ``train-prm`` /
``bench_value`` shards are re-read by teacher forcing (prompt + solution text, one llama.cpp
decode with every row's embedding out) and pooled per step:

- ``engine``: the features stored at generation (the reference; what `value` uses);
- ``last``: the teacher-forced row that generated the step's last text token (equals
  ``engine`` except for EOS-ended last steps, whose engine row is the one generating EOS);
- ``step mean``: mean of the rows that generated the step's tokens;
- ``running mean``: mean of the rows of the whole solution so far;
- ``last + running mean``: both, concatenated;
- with ``--layers 6,12``: ``layer K last`` / ``layer K running mean``, the same poolings of
  the residual stream after transformer block K (llama.cpp's ``l_out-K`` graph tensor, read
  in the same decode through the ``cb_eval`` graph callback).

For each variant, heads are fitted exactly as ``train-prm`` fits them (``fit_from_sets``)
and test solutions scored exactly as the ``value`` reward scores them
(``bench_value_data.solution_scores``): within-problem AUC of the min / mean / last step
score and weighted majority@8, the figures of ``bench_value``'s reward table, with a paired
bootstrap interval of each variant's difference to ``engine``. ``--per-step`` adds a second
table: a prefix head and a final head (last step only) fitted with ``rewards.value_head.fit_head``
(its cross-validated within-problem AUC on train) and scored on test prefixes. Features are
cached per problem in ``--cache`` (resumable; about 33 s per problem of 8 solutions on
2 cores, the same with or without layers).

Usage: python -m benchmarks.value.bench_value_features --train DIR --test DIR --cache DIR
       [--layers 3,6,9] [--per-step] [--cached-only]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks.common import write_section
from benchmarks.value.bench_value_data import per_problem
from particlescale.backends.llamacpp import LlamaEngine
from particlescale.eval.datasets import load_dataset
from particlescale.eval.value_train import SampleSet, fit_from_sets
from particlescale.prompts import DEFAULT_SYSTEM_PROMPT
from particlescale.protocols import SamplingParams
from particlescale.rewards.value_head import fit_head
from particlescale.stats import auc, paired_bootstrap, within_problem_auc

MODEL = "qwen2.5-0.5b"
DELIM = SamplingParams().delimiter  # the step text layout the engine generated
VARIANTS = {"engine": ("engine",), "last": ("last",), "step mean": ("mstep",),
            "running mean": ("mall",), "last + running mean": ("last", "mall")}


class _Tensor(ctypes.Structure):
    """The leading fields of ggml's ``struct ggml_tensor`` (ggml.h), enough to read a
    CPU tensor's name, shape and data inside llama.cpp's graph-evaluation callback."""

    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p),
                ("ne", ctypes.c_int64 * 4), ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int),
                ("op_params", ctypes.c_int32 * 16), ("flags", ctypes.c_int32),
                ("src", ctypes.c_void_p * 10), ("view_src", ctypes.c_void_p),
                ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p),
                ("name", ctypes.c_char * 64)]


class TokenStates:
    """Every row's final-layer state for a prompt + continuation (one sequence, KV of the
    prompt kept on sequence 0 and copied for each continuation).

    With ``layers``, the residual stream after each of those transformer blocks
    (llama.cpp's ``l_out-K`` graph tensors, read through the ``cb_eval`` callback in the
    same decode) is returned too, as ``{K: rows x n_embd}`` next to the final states."""

    def __init__(self, engine: LlamaEngine, n_batch: int = 1024,
                 layers: tuple[int, ...] = ()) -> None:
        import llama_cpp as L  # the low-level API of the engine's own build

        self.L = L
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = 4096, n_batch, n_batch, 2
        cp.n_threads = cp.n_threads_batch = 2
        cp.embeddings, cp.kv_unified, cp.no_perf = True, True, True
        cp.pooling_type = L.LLAMA_POOLING_TYPE_NONE
        n_layer = L.llama_model_n_layer(engine.llama_model)
        if any(not 0 <= k < n_layer for k in layers):
            raise SystemExit(f"--layers: {MODEL} has blocks 0..{n_layer - 1}; got {layers}")
        self.layers = layers
        self._bad: str | None = None
        self._grab: dict[int, list[np.ndarray]] = {k: [] for k in layers}
        if layers:
            wanted = {f"l_out-{k}".encode(): k for k in layers}

            def observe(t: int, ask: bool, _user: int) -> bool:
                tensor = _Tensor.from_address(t)
                k = wanted.get(tensor.name)
                if ask:  # True: llama.cpp computes up to this node and calls back with it
                    return k is not None
                if k is not None:
                    if tensor.type != 0 or tensor.nb[1] != 4 * tensor.ne[0]:
                        # an exception cannot cross the C callback: note it, decode() raises
                        self._bad = f"l_out-{k} is not a contiguous F32 tensor"
                        return True
                    n = tensor.ne[0] * tensor.ne[1]
                    rows = np.ctypeslib.as_array((ctypes.c_float * n).from_address(tensor.data))
                    self._grab[k].append(rows.reshape(tensor.ne[1], tensor.ne[0]).copy())
                return True

            self._callback = L.ggml_backend_sched_eval_callback(observe)  # kept alive
            cp.cb_eval, cp.cb_eval_user_data = self._callback, None
        self.ctx = L.llama_init_from_model(engine.llama_model, cp)
        self.mem = L.llama_get_memory(self.ctx)
        self.batch = L.llama_batch_init(n_batch, 0, 1)
        self.n_batch, self.dim = n_batch, engine.n_embd

    def decode(self, tokens: list[int], pos0: int, seq: int
               ) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        if len(tokens) > self.n_batch:
            parts = [self.decode(tokens[i:i + self.n_batch], pos0 + i, seq)
                     for i in range(0, len(tokens), self.n_batch)]
            return (np.vstack([p[0] for p in parts]),
                    {k: np.vstack([p[1][k] for p in parts]) for k in self.layers})
        b, L = self.batch, self.L
        for i, t in enumerate(tokens):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = t, pos0 + i, 1, 1
            b.seq_id[i][0] = seq
        b.n_tokens = len(tokens)
        for k in self.layers:
            self._grab[k].clear()
        if L.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")
        final = np.stack([np.ctypeslib.as_array(L.llama_get_embeddings_ith(self.ctx, i),
                                                shape=(self.dim,)) for i in range(len(tokens))])
        if self._bad:
            raise RuntimeError(self._bad)
        inner = {k: np.vstack(self._grab[k]) for k in self.layers}
        if any(len(v) != len(tokens) for v in inner.values()):
            raise RuntimeError("a layer callback saw a different number of rows than decoded")
        return final, inner

    def prompt(self, tokens: list[int]) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """The states of the prompt's last row (which generates the first solution token)."""
        self.L.llama_memory_clear(self.mem, True)
        final, inner = self.decode(tokens, 0, 0)
        return final[-1], {k: v[-1] for k, v in inner.items()}

    def continuation(self, tokens: list[int], pos0: int
                     ) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        self.L.llama_memory_seq_rm(self.mem, 1, -1, -1)
        self.L.llama_memory_seq_cp(self.mem, 0, 1, -1, -1)
        return self.decode(tokens, pos0, 1)


def pool(h: np.ndarray, bounds: list[int], prefix: str = "") -> dict[str, list[np.ndarray]]:
    """Per step: the row that generated its last token, the mean of its rows, and the mean of
    all rows so far (``h[i]`` is the state that generated solution token ``i``)."""
    out: dict[str, list[np.ndarray]] = {f"{prefix}{k}": [] for k in ("last", "mstep", "mall")}
    a = 0
    for b in bounds:
        b = max(b, a + 1)  # rows a..b-1 generated this step
        out[f"{prefix}last"].append(h[b - 1])
        out[f"{prefix}mstep"].append(h[a:b].mean(0))
        out[f"{prefix}mall"].append(h[:b].mean(0))
        a = b
    return out


def featurize(engine: LlamaEngine, states: TokenStates, s: SampleSet, question: str,
              dst: Path) -> None:
    prompt = engine.chat_tokens([{"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
                                 {"role": "user", "content": question}])
    hp, hp_inner = states.prompt(prompt)  # the row that generates the first solution token
    feats: dict[str, list[np.ndarray]] = {}
    for j, rec in enumerate(s.solutions):
        bounds, text = [], ""
        for t, fin in zip(rec["steps"], rec["finish"], strict=True):
            text += t + (DELIM if fin == "step" else "")
            bounds.append(len(engine.tokenize(text)))
        bounds = bounds[: int(np.sum(s.solution == j))]
        final, inner = states.continuation(engine.tokenize(text), len(prompt))
        pooled = pool(np.vstack([hp[None], final]), bounds)
        for k, rows in inner.items():
            pooled |= pool(np.vstack([hp_inner[k][None], rows]), bounds, f"L{k}_")
        for key, v in pooled.items():
            feats.setdefault(key, []).extend(v)
    np.savez(dst, **{k: np.array(v, np.float16) for k, v in feats.items()})


def load(shards: Path, cache: Path, dataset: str, cached_only: bool = False,
         layers: tuple[int, ...] = ()) -> dict[str, dict[str, np.ndarray]]:
    """Featurize the shards that have stored solutions (cached), then load them."""
    files = [p for p in sorted(shards.glob("*.npz")) if ".tmp" not in p.name]
    sets = {p.name: SampleSet.load(p, p.stem) for p in files}
    todo = [] if cached_only else [p for p in files if not (cache / p.name).exists()
                                   and sets[p.name].solutions]
    if todo:
        from rich.progress import track

        cache.mkdir(parents=True, exist_ok=True)
        questions = {q.id: q.question for q in load_dataset(dataset).problems}
        engine = LlamaEngine(MODEL, n_seq_max=2)
        states = TokenStates(engine, layers=layers)
        clock = cache / "seconds.json"  # featurizing time summed over runs
        spent = json.loads(clock.read_text()) if clock.exists() else {"seconds": 0, "problems": 0}
        for p in track(todo, description=f"teacher forcing {shards.name}"):
            t = time.perf_counter()
            featurize(engine, states, sets[p.name], questions[p.stem], cache / p.name)
            spent["seconds"] += round(time.perf_counter() - t, 1)
            spent["problems"] += 1
            clock.write_text(json.dumps(spent))
        engine.close()
    out = {}
    for p in files:
        if (cache / p.name).exists():
            s = sets[p.name]
            z = np.load(cache / p.name)
            missing = [k for k in layers if f"L{k}_last" not in z]
            if missing:
                raise SystemExit(f"{cache / p.name} has no layer {missing} features: it was "
                                 "cached without --layers; use another --cache directory")
            out[p.stem] = {"set": s, "y": s.outcome.astype(int), "end": s.last_steps(),
                           "engine": s.features,
                           **{k: z[k].astype(np.float64) for k in z.files}}
    return out


def matrix(data: dict, keys: tuple[str, ...], final: bool
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs, ys, gs = [], [], []
    for pid, r in data.items():
        m = r["end"] if final else np.ones(len(r["y"]), bool)
        xs.append(np.hstack([r[k] for k in keys])[m])
        ys.append(r["y"][m])
        gs += [pid] * int(m.sum())
    return np.vstack(xs), np.concatenate(ys), np.array(gs)


def with_features(data: dict, keys: tuple[str, ...]) -> list[SampleSet]:
    """The problems' sample sets with their stored features swapped for a variant's."""
    return [replace(r["set"], features=np.hstack([r[k] for k in keys])) for r in data.values()]


def reward_table(train: dict, test: dict, variants: dict[str, tuple[str, ...]],
                 seed: int = 0) -> list[str]:
    """Per variant: heads fitted as ``train-prm`` fits them, solutions scored as the ``value``
    reward scores them (the figures of ``bench_value``'s reward table), and the difference
    in within-problem AUC (min) to ``engine`` with a 95% paired bootstrap interval over
    test problems."""
    rows = ["| feature | test AUC within: min | mean | last | min − engine [95% CI] "
            "| weighted majority@8 (min) |", "|---|---|---|---|---|---|"]
    rng = np.random.default_rng(seed)
    ref: np.ndarray | None = None
    for name, keys in variants.items():
        head, _ = fit_from_sets(with_features(train, keys), seed=seed)
        r = per_problem(with_features(test, keys), head)
        if ref is None:
            ref, diff = r["min"], "(reference)"
        else:
            d, lo, hi = paired_bootstrap(r["min"], ref, rng, draws=2000)
            diff = f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"
        rows.append(f"| {name} | {r['min'].mean():.3f} (n={len(r['min'])}) | "
                    f"{r['mean'].mean():.3f} | {r['last'].mean():.3f} | {diff} | "
                    f"{100 * r['wmaj'].mean():.0f}% |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=Path, required=True, help="train-prm shards (OUT.samples)")
    ap.add_argument("--train-dataset", default="gsm8k-train")
    ap.add_argument("--test", type=Path, required=True, help="bench_value --work shards")
    ap.add_argument("--test-dataset", default="gsm8k")
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--cached-only", action="store_true",
                    help="use only the problems whose features are already cached")
    ap.add_argument("--layers", default="",
                    help="comma-separated transformer blocks (0-based) whose residual output "
                         "to compare too, e.g. 6,12,18")
    ap.add_argument("--per-step", action="store_true",
                    help="also the per-step table (prefix and final heads scored per prefix)")
    args = ap.parse_args()
    layers = tuple(int(k) for k in args.layers.split(",") if k.strip())
    train = load(args.train, args.cache / "train", args.train_dataset, args.cached_only, layers)
    test = load(args.test, args.cache / "test", args.test_dataset, args.cached_only, layers)
    variants = dict(VARIANTS)
    for k in layers:
        variants |= {f"layer {k} last": (f"L{k}_last",),
                     f"layer {k} running mean": (f"L{k}_mall",)}
    warnings.filterwarnings("ignore", category=UserWarning)
    solution_rows = reward_table(train, test, variants)
    rows = ["| feature | head | CV AUC within (train) | test AUC within | test AUC pooled |",
            "|---|---|---|---|---|"]
    for final in (False, True) if args.per_step else ():
        for name, keys in variants.items():
            x, y, g = matrix(train, keys, final)
            head, m = fit_head(x, y, g, kind="logistic", seed=0)
            xt, yt, gt = matrix(test, keys, final)
            p = head.predict(xt)
            w, n = within_problem_auc(yt, p, gt)
            rows.append(f"| {name} | {'final' if final else 'prefix'} | "
                        f"{m['val_auc_within']:.3f} | {w:.3f} (n={n}) | {auc(yt, p):.3f} |")
            print(rows[-1], flush=True)
    n_sol = sum(int(r["end"].sum()) for r in train.values())
    cost = [json.loads(c.read_text()) for c in (args.cache / "train" / "seconds.json",
                                                args.cache / "test" / "seconds.json")
            if c.exists()]
    per = sum(c["seconds"] for c in cost) / max(1, sum(c["problems"] for c in cost))
    best = max(solution_rows[2:], key=lambda r: float(r.split("|")[2].split()[0]))
    body = (f"## Value head features: pooling and layer variants (bench_value_features.py)\n\n"
            f"Heads fitted on {len(train)} GSM8K-train problems ({n_sol} solutions that kept "
            f"their text) and scored on {len(test)} GSM8K-test problems; `{MODEL}` states "
            f"re-read by teacher forcing (see the script's docstring; `layer K` is the residual "
            f"stream after block K of 0..23, `last`/`running mean` the final normed state). "
            f"First as the `value` reward scores whole solutions (prefix head per step, final "
            f"head on the last step; the figures of the `value` section):\n\n"
            + "\n".join(solution_rows)
            + f"\n\nBest: {best.split('|')[1].strip()}, within-problem AUC of min "
            f"{best.split('|')[2].strip()}."
            + (" Per step, a prefix head on every step prefix and a final head on each "
               "solution's last step (outcome labels):\n\n" + "\n".join(rows)
               if args.per_step else "")
            + f"\n\nTeacher forcing cost {per:.0f} s per problem of 8 solutions.")
    write_section("value-features", body)


if __name__ == "__main__":
    main()
