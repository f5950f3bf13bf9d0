"""The batched llama.cpp engine: one model, one context, many KV sequences, one decode per token.

Particle filtering extends N partial solutions by one step, reweights, resamples and repeats.
On a CPU the only way to make that cheap is to never decode shared text twice and to advance
every live sequence with one forward pass per token. The engine does exactly that::

    one llama context, kv_unified=True, n_seq_max sequence ids ("slots")
    prompt  -> decoded once into the session's root slot, logits cached
    fork    -> llama_memory_seq_cp(parent, child): the child shares the parent's KV cells
    tick    -> one llama_decode with the next token of every live sequence of every session
               (plus chunks of prompts still being read), then numpy sampling per row
    free    -> llama_memory_seq_rm as soon as a particle is released or dropped

A dedicated thread owns the llama context and runs the scheduler; async callers submit jobs
through a queue and await a ``concurrent.futures.Future``, so the event loop is never blocked
(``llama_decode`` is a ctypes call and releases the GIL) and one engine serves any number of
event loops, sessions and problems at once.

Slots are a cache: a slot held by a particle that is not being extended ("parked") may be
evicted when a new sequence needs a slot and none is free; its handle then rebuilds the
sequence from its tokens on the next extend (the cost shows up as re-read prompt tokens). A
child that cannot get a slot when its parent forks is generated later from its tokens. So
more particles than ``n_seq_max`` queue instead of failing.

After a step, the step's last sampled token (the delimiter token, say) is *not* yet decoded:
it is the sequence's pending token, decoded at the start of the next extend, before forking,
so that dropped particles never cost a forward pass for it.

The pieces, bottom up::

    native.py     the llama.cpp model, context and batch buffer (ctypes)
    tokens.py     tokenising, token pieces, chat prompts
    slots.py      slots and handles: allocation, parking, eviction, the scoring prefix cache
    scheduler.py  the thread's work lists and the job protocol (start, admit, on_row...)
    extend.py     generation: extend / extend_to_end jobs, closing a session
    jobs.py       scoring jobs (next-token and teacher-forced log-probs), small messages
    engine.py     this: the public async API, the thread's loop and the decode tick

The loop, on the engine thread::

    take messages from the inbox      each one's start(): jobs ask for slots or queue runs
    admit                             free (or evicted) slots go to waiting jobs, in order
    sample                            children whose logits arrived draw their next token
    tick                              one llama_decode over every run's next tokens; each
                                      finished run hands its logits row to its job
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from particlescale.backends.llamacpp.extend import (
    CloseSession,
    ExtendJob,
    ExtendOutcome,
    ParentSpec,
    SessionState,
    StopRule,
)
from particlescale.backends.llamacpp.jobs import ContinuationJob, Release, ScoreJob, Sync
from particlescale.backends.llamacpp.native import (
    EngineStats,
    LlamaContext,
    _llama,
    default_threads,
    repack_weights,
)
from particlescale.backends.llamacpp.scheduler import Message, Run, Scheduler
from particlescale.backends.llamacpp.slots import SeqHandle, SlotPool
from particlescale.backends.llamacpp.tokens import Vocab
from particlescale.errors import BackendError, ModelError
from particlescale.protocols import SamplingParams

log = logging.getLogger(__name__)


class LlamaEngine:
    """One llama.cpp model and context shared by every session (see the module docstring).

    ``n_ctx`` is the total KV capacity in tokens, shared by all sequences (a forked prompt is
    stored once). ``n_seq_max`` is the number of KV sequences (at most 256). ``embeddings=True``
    also returns the final hidden state at the last decoded token of each step
    (``Step.features``) from the same decode. ``repack`` lets llama.cpp repack the weights
    for its faster CPU kernels (see :func:`repack_weights` for the default).
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        n_ctx: int = 16384,
        n_seq_max: int = 64,
        n_batch: int = 512,
        n_threads: int | None = None,
        embeddings: bool = False,
        repack: bool | None = None,
        score_cache_size: int = 16,
        flash_attn: bool | None = None,
        verbose: bool = False,
    ) -> None:
        from particlescale.models import resolve

        L = _llama()
        if not 2 <= n_seq_max <= L.llama_max_parallel_sequences():
            raise ModelError(f"n_seq_max: must be in [2, {L.llama_max_parallel_sequences()}], "
                             f"got {n_seq_max}")
        if n_ctx < 256 or n_batch < 1:
            raise ModelError(f"n_ctx: must be >= 256 and n_batch >= 1 (got {n_ctx}, {n_batch})")
        n_batch = max(n_batch, n_seq_max)  # llama.cpp needs room for one output per sequence
        self.path = Path(resolve(model))
        self.model_name = model if isinstance(model, str) and not model.endswith(".gguf") \
            else self.path.stem
        self._native = nat = LlamaContext(
            self.path, n_ctx=n_ctx, n_seq_max=n_seq_max, n_batch=n_batch,
            threads=n_threads or default_threads(), embeddings=embeddings, repack=repack,
            flash_attn=flash_attn, verbose=verbose)
        self.n_vocab = nat.n_vocab
        self.n_embd = nat.n_embd
        self.n_ctx = nat.n_ctx
        self.n_seq_max = n_seq_max
        self.n_batch = n_batch
        self.embeddings = embeddings
        self.chat_template = nat.chat_template
        self._vocab = Vocab(nat.L, nat.vocab, nat.n_vocab, nat.chat_template)
        self.stats = EngineStats()
        self._pool = SlotPool(nat, n_seq_max, self.stats, score_cache_size)
        self._sched = Scheduler(self._pool, self._vocab, self.stats)
        self._inbox: queue.SimpleQueue[Message | None] = queue.SimpleQueue()  # None: stop
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="llama-engine", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- tokens and prompts

    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = False
                 ) -> list[int]:
        """Text → token ids (``parse_special`` turns ``<|im_start|>`` etc. into their ids)."""
        return self._vocab.tokenize(text, add_special=add_special, parse_special=parse_special)

    def piece(self, token: int) -> bytes:
        """The bytes of one token (special tokens render as nothing)."""
        return self._vocab.piece(token)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self._vocab.detokenize(tokens)

    def is_eog(self, token: int) -> bool:
        return self._vocab.is_eog(token)

    def eog_tokens(self) -> np.ndarray:
        """Every end-of-generation token id (EOS, end of turn...): generation stops at any."""
        return self._vocab.eog_tokens()

    def render_chat(self, messages: Sequence[dict[str, str]], *,
                    add_generation_prompt: bool = True) -> str:
        """The model's chat template (from the GGUF) applied to ``messages``."""
        return self._vocab.render_chat(messages, add_generation_prompt=add_generation_prompt)

    def chat_tokens(self, messages: Sequence[dict[str, str]], *,
                    add_generation_prompt: bool = True) -> list[int]:
        """Rendered chat prompt → tokens (special tokens parsed; BOS added if the model wants it
        and the template did not write it)."""
        return self._vocab.chat_tokens(messages, add_generation_prompt=add_generation_prompt)

    # ----------------------------------------------------------------- public async API

    def open_session(self, prompt: Sequence[int]) -> SessionState:
        if not prompt:
            raise ValueError("prompt: must have at least one token")
        if len(prompt) >= self.n_ctx:
            raise BackendError(f"prompt of {len(prompt)} tokens does not fit n_ctx={self.n_ctx}; "
                               "create the engine with a larger n_ctx", kind="protocol")
        return SessionState(prompt=tuple(int(t) for t in prompt))

    async def extend(self, state: SessionState, specs: list[ParentSpec],
                     params: SamplingParams) -> ExtendOutcome:
        return await self._submit(ExtendJob(state, specs, params))

    async def extend_to_end(self, state: SessionState, specs: list[ParentSpec],
                            params: SamplingParams, until: StopRule) -> ExtendOutcome:
        """Like ``extend``, but each child goes on past its step ends until ``until`` says its
        solution is over (an end-of-generation token always is), without waiting for the
        other children: a child whose step ends keeps its slot and decodes its next step in
        the very next batch. Children are independent samples (no resampling between
        steps), so nothing needs the others' steps first. The whole job runs on the engine
        thread: its batches do not depend on when the caller gets to ask for a next step.
        """
        return await self._submit(ExtendJob(state, specs, params, until))

    def release(self, handles: Sequence[SeqHandle]) -> None:
        """Free the sequences of these handles (non-blocking; done before the next decode)."""
        if handles:
            self._inbox.put(Release(list(handles)))

    async def close_session(self, state: SessionState) -> None:
        await self._submit(CloseSession(state))

    async def next_token_logprobs(self, prompts: Sequence[Sequence[int]],
                                  token_ids: Sequence[int]) -> np.ndarray:
        """log p(token | prompt) at temperature 1, shape ``(len(prompts), len(token_ids))``.

        Prompts are decoded in one batch; their longest common prefix is decoded once and
        shared (``llama_memory_seq_cp``). Decoded prompts stay in a small LRU cache of KV
        sequences (``score_cache_size``), so a later call whose prompts extend them (a judge
        asked about step t+1 after step t) decodes only the new tokens; the cache yields its
        sequences first whenever generation needs a slot.
        """
        if not prompts:
            return np.empty((0, len(token_ids)))
        if any(len(p) == 0 for p in prompts):
            raise ValueError("prompts: every prompt needs at least one token")
        if any(not 0 <= int(t) < self.n_vocab for t in token_ids):
            raise ValueError(f"token_ids: must be in [0, {self.n_vocab})")
        job = ScoreJob([list(map(int, p)) for p in prompts], list(map(int, token_ids)))
        return await self._submit(job)

    async def continuation_logprobs(self, contexts: Sequence[Sequence[int]],
                                    continuations: Sequence[Sequence[int]], *, eos: bool,
                                    params: SamplingParams) -> tuple[np.ndarray, int]:
        """Teacher forcing: ``log q(continuations[k] | contexts[k])`` for each k, where q is
        the sampler's distribution at ``params.temperature`` / ``params.top_p`` (the proposal
        :meth:`extend` samples from; greedy gives 0 or -inf), summed over the continuation's
        tokens, plus (``eos``) the log-probability of ending there with any end-of-generation
        token. Returns ``(logprobs, tokens decoded)``.

        Each context is started from the longest cached scoring prefix (the contexts' common
        prefix is decoded once and cached, as in :meth:`next_token_logprobs`), then the
        context's rest and the continuation are decoded in chunks in which every continuation
        token asks for its logits row. A decode has room for ``n_seq_max`` output rows in all
        (llama.cpp's ``n_outputs_max``, sized so), so these runs go after generation in each
        tick and take the rows left: K continuation tokens cost about K / (rows left) ticks
        rather than one tick per token. The decoded sequences stay in the scoring cache.
        """
        if len(contexts) != len(continuations):
            raise ValueError("continuations: need one token list per context")
        if not contexts:
            return np.empty(0), 0
        if any(len(c) == 0 for c in contexts):
            raise ValueError("contexts: every context needs at least one token (the prompt)")
        longest = max(len(c) + len(t) for c, t in zip(contexts, continuations, strict=True))
        if longest + 1 >= self.n_ctx:
            raise BackendError(f"a continuation to score has {longest} tokens in all, more than "
                               f"n_ctx={self.n_ctx} holds; create the engine with a larger "
                               "n_ctx", kind="protocol")
        job = ContinuationJob([list(map(int, c)) for c in contexts],
                              [list(map(int, t)) for t in continuations], eos, params,
                              self.eog_tokens())
        out = await self._submit(job)
        return out, job.prompt_tokens

    def clear_cache(self) -> None:
        """Drop the cached scoring prefixes (done before the next decode)."""
        self._inbox.put(Release(list(self._pool.cache)))

    async def sync(self) -> None:
        """Wait until every message sent so far (releases included) has been processed."""
        await self._submit(Sync())

    @property
    def llama_model(self) -> Any:
        """The loaded ``llama_model`` pointer, for code that opens its own llama.cpp context
        on the same weights (e.g. teacher forcing in ``benchmarks.value.bench_value_features``);
        valid until :meth:`close`."""
        return self._native.model

    @property
    def score_cache_size(self) -> int:
        """How many scored prompts the prefix cache keeps (see :meth:`next_token_logprobs`)."""
        return self._pool.cache_size

    @score_cache_size.setter
    def score_cache_size(self, n: int) -> None:
        self._pool.cache_size = n

    @property
    def live_sequences(self) -> int:
        """KV sequences in use by particles, session roots or running jobs (not counting the
        cached scoring prefixes, which are freed whenever a slot is needed)."""
        return self._pool.live

    @property
    def cached_sequences(self) -> int:
        """KV sequences kept as scoring-prefix cache."""
        return self._pool.cached

    def close(self) -> None:
        """Stop the engine thread and free the context and model (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._inbox.put(None)
        self._thread.join()
        self._native.free()

    def __enter__(self) -> LlamaEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _submit(self, msg: Message) -> Any:
        if self._closed:
            raise BackendError("the llama.cpp engine is closed", kind="protocol")
        self._inbox.put(msg)
        return await asyncio.wrap_future(msg.future)

    # ----------------------------------------------------------------- engine thread

    def _loop(self) -> None:
        sched = self._sched
        while True:
            try:
                if not self._drain(block=not sched.runs and not sched.waiting):
                    return
                sched.reap_cancelled()
                sched.admit()
                sched.sample()  # children forked from a cached root, if any
                if sched.runs:
                    self._tick()
                elif sched.waiting:  # cannot happen unless slots leak: fail rather than hang
                    sched.fail_all(BackendError("no KV sequence can be freed for queued work; "
                                                "raise n_seq_max", kind="protocol"))
            except Exception as e:  # a bug must not hang every caller
                log.exception("llama engine error")
                sched.fail_all(BackendError(f"llama engine error: {e}", kind="protocol"))

    def _drain(self, block: bool) -> bool:
        """Start every queued message; False when asked to stop."""
        while True:
            try:
                msg = self._inbox.get(block=block)
            except queue.Empty:
                return True
            block = False
            if msg is None:
                self._sched.fail_all(BackendError("the llama.cpp engine was closed",
                                                  kind="protocol"))
                return False
            self._sched.take(msg)

    def _tick(self) -> None:
        """One decode: plan the batch from the runs, decode, hand the rows to the jobs."""
        sched, nat, pool, st = self._sched, self._native, self._pool, self.stats
        pool.now += 1
        budget = self.n_batch
        n = 0
        plan: list[tuple[Run, int, list[int]]] = []  # run, tokens taken, output batch indices
        seq_ids = nat.seq_ids
        # Generation steps (one token each) first so they are never starved by long prompts;
        # teacher-forcing runs last: they take the output rows the others leave (at most
        # n_seq_max rows per decode, the size of llama.cpp's output buffer).
        runs = sorted(sched.runs, key=lambda r: (r.forced, len(r.pending) > 1))
        rows_left = self.n_seq_max
        hold_last = False
        if self.embeddings:
            # With embeddings on, llama.cpp outputs (and runs the LM head on) *every* token of
            # a batch. So prompt chunks are decoded in their own ticks with embeddings off,
            # keeping each run's last token for a one-token-per-sequence tick (embeddings on),
            # alternating so that long prompts do not stall generation.
            singles = [r for r in runs if len(r.pending) == 1]
            multis = [r for r in runs if len(r.pending) > 1]
            hold_last = bool(multis) and (not singles or pool.now % 2 == 0)
            runs = multis if hold_last else singles
            nat.set_embeddings(not hold_last)
        for run in runs:
            if n >= budget:
                break
            quiet = len(run.pending) - run.rows  # leading tokens that need no output row
            take = min(len(run.pending) - hold_last, budget - n)
            if run.forced:
                take = min(take, quiet + rows_left)
            if take <= 0:
                continue
            s = run.slot
            nat.token[n:n + take] = run.pending[:take]
            nat.pos[n:n + take] = np.arange(s.n_past, s.n_past + take)
            nat.wants_row[n:n + take] = 0
            for k in range(n, n + take):
                seq_ids[k][0] = s.seq_id
            if run.forced:
                outs = list(range(n + max(quiet, 0), n + take))
            else:
                outs = [n + take - 1] if take == len(run.pending) else []
            nat.wants_row[outs] = 1
            rows_left -= len(outs)
            plan.append((run, take, outs))
            n += take
        t0 = time.perf_counter()
        ret = nat.decode(n)
        while ret == 1:  # KV cache full: evict a parked sequence and retry
            victim = pool.evictable()
            if victim is None:
                break
            pool.free(victim)
            st.evictions += 1
            ret = nat.decode(n)
        st.decode_seconds += time.perf_counter() - t0
        if ret != 0:
            err = BackendError(
                f"llama_decode failed (code {ret}) with {len(plan)} sequences and {n} tokens"
                + ("; the KV cache is full: create the engine with a larger n_ctx" if ret == 1
                   else ""), kind="protocol")
            for job in {id(r.job): r.job for r, _, _ in plan}.values():
                sched.abort(job, err)
            return
        st.decode_calls += 1
        st.decoded_tokens += n
        st.max_sequences_per_decode = max(st.max_sequences_per_decode, len(plan))
        sessions = {id(r.job.state) for r, _, _ in plan if r.job.state is not None}
        st.max_sessions_per_decode = max(st.max_sessions_per_decode, len(sessions))

        finished: list[tuple[Run, int]] = []
        rows: list[int] = []
        forced: list[tuple[Run, list[int]]] = []
        for run, take, outs in plan:
            run.slot.n_past += take
            run.slot.last_used = pool.now
            if run.job.state is not None:
                run.job.state.decoded += take
            del run.pending[:take]
            run.rows = min(run.rows, len(run.pending))
            first = len(rows)
            rows.extend(outs)
            if run.forced and outs:
                forced.append((run, list(range(first, len(rows)))))
            if not run.pending:
                finished.append((run, len(rows) - 1))
        done_ids = {id(r) for r, _ in finished}
        sched.runs = [r for r in sched.runs if id(r) not in done_ids]
        sched.row_logits = [nat.logits_row(b) for b in rows]
        sched.row_features = ([nat.embedding_row(b) for b in rows]
                              if self.embeddings and nat.embeddings_on else None)
        for run, ks in forced:
            if not run.job.aborted:
                run.job.on_rows(sched, run, ks)
        for run, k in finished:
            if not run.job.aborted:
                run.job.on_row(sched, run, k)
        sched.sample()


__all__ = ["EngineStats", "ExtendOutcome", "LlamaEngine", "ParentSpec", "SeqHandle",
           "SessionState", "default_threads", "repack_weights"]
