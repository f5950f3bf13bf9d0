"""Which hidden-state feature should a value head read? Pooling variants, measured offline.

The engine records, for each step, the final-layer state of the row that generated the
step's last token (for a solution ended by EOS: the row that generated EOS). Probing work
often finds mean-pooled token states better than one token's. To compare without sampling
again, the stored solutions of ``train-prm`` / ``bench_value`` shards are re-read by
teacher forcing (prompt + solution text, one llama.cpp decode with every row's embedding
out) and pooled per step:

- ``engine``: the features stored at generation (the reference; what `value` uses);
- ``last``: the teacher-forced row that generated the step's last text token (equals
  ``engine`` except for EOS-ended last steps, whose engine row is the one generating EOS);
- ``step mean``: mean of the rows that generated the step's tokens;
- ``running mean``: mean of the rows of the whole solution so far;
- ``last + running mean``: both, concatenated.

For each, a prefix head and a final head (last step only) are fitted with
``value.head.fit_head`` on the train shards (its cross-validated within-problem AUC is
reported) and scored on the test shards (within-problem and pooled AUC). Features are cached
per problem in ``--cache`` (resumable; about 35 s per problem of 8 solutions on 2 cores).

Usage: python benchmarks/bench_value_features.py --train DIR --test DIR --cache DIR
       [--cached-only]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from report import write_section

from particlescale.backends.llamacpp.engine import LlamaEngine, _llama
from particlescale.eval.datasets import load_dataset
from particlescale.prompts import DEFAULT_SYSTEM_PROMPT
from particlescale.protocols import SamplingParams
from particlescale.value.head import auc, fit_head, within_problem_auc
from particlescale.value.train import SampleSet

MODEL = "qwen2.5-0.5b"
DELIM = SamplingParams().delimiter  # the step text layout the engine generated
VARIANTS = {"engine": ("engine",), "last": ("last",), "step mean": ("mstep",),
            "running mean": ("mall",), "last + running mean": ("last", "mall")}


class TokenStates:
    """Every row's final-layer state for a prompt + continuation (one sequence, KV of the
    prompt kept on sequence 0 and copied for each continuation)."""

    def __init__(self, engine: LlamaEngine, n_batch: int = 1024) -> None:
        L = self.L = _llama()
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = 4096, n_batch, n_batch, 2
        cp.n_threads = cp.n_threads_batch = 2
        cp.embeddings, cp.kv_unified, cp.no_perf = True, True, True
        cp.pooling_type = L.LLAMA_POOLING_TYPE_NONE
        self.ctx = L.llama_init_from_model(engine._model, cp)
        self.mem = L.llama_get_memory(self.ctx)
        self.batch = L.llama_batch_init(n_batch, 0, 1)
        self.n_batch, self.dim = n_batch, engine.n_embd

    def decode(self, tokens: list[int], pos0: int, seq: int) -> np.ndarray:
        if len(tokens) > self.n_batch:
            return np.vstack([self.decode(tokens[i:i + self.n_batch], pos0 + i, seq)
                              for i in range(0, len(tokens), self.n_batch)])
        b, L = self.batch, self.L
        for i, t in enumerate(tokens):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = t, pos0 + i, 1, 1
            b.seq_id[i][0] = seq
        b.n_tokens = len(tokens)
        if L.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")
        return np.stack([np.ctypeslib.as_array(L.llama_get_embeddings_ith(self.ctx, i),
                                               shape=(self.dim,)) for i in range(len(tokens))])

    def prompt(self, tokens: list[int]) -> np.ndarray:
        self.L.llama_memory_clear(self.mem, True)
        return self.decode(tokens, 0, 0)[-1]

    def continuation(self, tokens: list[int], pos0: int) -> np.ndarray:
        self.L.llama_memory_seq_rm(self.mem, 1, -1, -1)
        self.L.llama_memory_seq_cp(self.mem, 0, 1, -1, -1)
        return self.decode(tokens, pos0, 1)


def featurize(engine: LlamaEngine, states: TokenStates, s: SampleSet, question: str,
              dst: Path) -> None:
    prompt = engine.chat_tokens([{"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
                                 {"role": "user", "content": question}])
    hp = states.prompt(prompt)  # the row that generates the first solution token
    last, mstep, mall = [], [], []
    for j, rec in enumerate(s.solutions):
        bounds, text = [], ""
        for t, fin in zip(rec["steps"], rec["finish"], strict=True):
            text += t + (DELIM if fin == "step" else "")
            bounds.append(len(engine.tokenize(text)))
        h = np.vstack([hp[None], states.continuation(engine.tokenize(text), len(prompt))])
        a = 0
        for b in bounds[: int(np.sum(s.solution == j))]:
            b = max(b, a + 1)  # h[i] generated token i: rows a..b-1 generated this step
            last.append(h[b - 1])
            mstep.append(h[a:b].mean(0))
            mall.append(h[:b].mean(0))
            a = b
    np.savez(dst, last=np.array(last, np.float16), mstep=np.array(mstep, np.float16),
             mall=np.array(mall, np.float16))


def load(shards: Path, cache: Path, dataset: str, cached_only: bool = False
         ) -> dict[str, dict[str, np.ndarray]]:
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
        states = TokenStates(engine)
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
            out[p.stem] = {"y": s.outcome.astype(int), "end": s.last_steps(),
                           "engine": s.features,
                           **{k: z[k].astype(np.float64) for k in ("last", "mstep", "mall")}}
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=Path, required=True, help="train-prm shards (OUT.samples)")
    ap.add_argument("--train-dataset", default="gsm8k-train")
    ap.add_argument("--test", type=Path, required=True, help="bench_value --work shards")
    ap.add_argument("--test-dataset", default="gsm8k")
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--cached-only", action="store_true",
                    help="use only the problems whose features are already cached")
    args = ap.parse_args()
    train = load(args.train, args.cache / "train", args.train_dataset, args.cached_only)
    test = load(args.test, args.cache / "test", args.test_dataset, args.cached_only)
    rows = ["| feature | head | CV AUC within (train) | test AUC within | test AUC pooled |",
            "|---|---|---|---|---|"]
    for final in (False, True):
        for name, keys in VARIANTS.items():
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
    best = max(rows[2:], key=lambda r: float(r.split("|")[4].split()[0]))
    body = (f"## Value head features: pooling variants (bench_value_features.py)\n\n"
            f"Logistic heads fitted on {len(train)} GSM8K-train problems ({n_sol} solutions "
            f"that kept their text) and scored on {len(test)} GSM8K-test problems; "
            f"`{MODEL}` final-layer states re-read by teacher forcing (see the script's "
            f"docstring). Prefix heads score every step prefix, final heads the last step of "
            f"each solution.\n\n" + "\n".join(rows)
            + f"\n\nBest on test: {best.split('|')[1].strip()} ({best.split('|')[2].strip()} "
            f"head), within-problem AUC {best.split('|')[4].strip()}. Teacher forcing cost "
            f"{per:.0f} s per problem of 8 solutions.")
    write_section("value-features", body)


if __name__ == "__main__":
    main()
