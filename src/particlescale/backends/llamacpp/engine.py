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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from particlescale.backends.llamacpp.native import (
    EngineStats,
    LlamaContext,
    _llama,
    default_threads,
    repack_weights,
)
from particlescale.backends.llamacpp.sampling import Sampler, log_normalizers, proposal_logprob
from particlescale.backends.llamacpp.slots import SHARE_MIN, SeqHandle, Slot, SlotPool
from particlescale.backends.llamacpp.steptext import StepText
from particlescale.backends.llamacpp.tokens import Vocab
from particlescale.errors import BackendError, ModelError
from particlescale.protocols import SamplingParams
from particlescale.types import FinishReason, Step

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Engine-side bookkeeping (all mutated on the engine thread only).


@dataclass
class SessionState:
    """Engine-side state of one generation session (one problem)."""

    prompt: tuple[int, ...]
    root: SeqHandle | None = None
    root_logits: np.ndarray | None = None
    root_features: np.ndarray | None = None
    prompt_decoded: int = 0  # tokens decoded that this session did not generate
    decoded: int = 0  # every token decoded for this session


@dataclass
class ParentSpec:
    """One parent of an extend: its handle if usable, else the tokens to rebuild it from."""

    children: int
    seeds: Sequence[int]
    handle: SeqHandle | None = None
    tokens: tuple[int, ...] = ()
    carry: bytes = b""
    root: bool = False  # the empty prefix: fork from the session's prompt


# ``extend_to_end``'s stopping rule: (parent index, the step just ended, how many steps this
# child has generated so far, counting that one) -> whether the child's solution is over.
StopRule = Callable[[int, Step, int], bool]


@dataclass
class ExtendOutcome:
    """``steps[i][j]``: child j of parent i, a Step (``extend``) or the list of Steps up to
    the end of its solution (``extend_to_end``)."""

    steps: list[list[Any]]
    prompt_tokens: int
    generated_tokens: int


class _Job:
    def __init__(self, state: SessionState | None) -> None:
        self.state = state
        self.future: Future = Future()
        self.aborted = False
        self.prompt_tokens = 0

    def done(self, value: Any) -> bool:
        try:
            self.future.set_result(value)
            return True
        except InvalidStateError:  # cancelled by the caller
            return False

    def fail(self, err: BaseException) -> None:
        self.aborted = True
        with contextlib.suppress(InvalidStateError):
            self.future.set_exception(err)


class _Run:
    """Tokens to decode into a slot; ``on_done(row)`` gets the logits row of the last one.

    A teacher-forcing run (``on_rows`` set) wants a logits row for each of its last ``rows``
    tokens: every tick that decodes some of them calls ``on_rows(rows)`` with their rows, in
    order, before ``on_done``.
    """

    __slots__ = ("job", "on_done", "on_rows", "pending", "rows", "slot")

    def __init__(self, slot: Slot, pending: list[int], job: _Job,
                 on_done: Callable[[int], None], *, rows: int = 1,
                 on_rows: Callable[[list[int]], None] | None = None) -> None:
        self.slot = slot
        self.pending = pending
        self.job = job
        self.on_done = on_done
        self.rows = rows
        self.on_rows = on_rows


@dataclass
class _Want:
    """Something waiting for a free slot; ``admit(slot)`` starts it."""

    job: _Job
    admit: Callable[[Slot], None]


class _Child:
    """One child being generated: its step text, tokens and RNG stream."""

    __slots__ = ("base", "done", "feature", "finish", "job", "logprob", "params", "pos", "rng",
                 "slot", "text", "tokens")

    def __init__(self, job: _ExtendJob, pos: tuple[int, int], base: tuple[int, ...],
                 carry: bytes, seed: int) -> None:
        self.job = job
        self.pos = pos
        self.base = base
        self.params = job.params
        self.rng = np.random.default_rng(int(seed))
        self.text = StepText(job.params.delimiter, carry)
        self.tokens: list[int] = []
        self.logprob = 0.0
        self.slot: Slot | None = None
        self.finish: FinishReason | None = None
        self.feature: np.ndarray | None = None
        self.done: list[Step] = []  # steps already ended, under extend_to_end


class _ExtendJob(_Job):
    def __init__(self, state: SessionState, specs: list[ParentSpec],
                 params: SamplingParams, until: StopRule | None = None) -> None:
        super().__init__(state)
        self.specs = specs
        self.params = params
        self.until = until
        self.results: list[list[Any]] = [[None] * s.children for s in specs]
        self.remaining = sum(s.children for s in specs)
        self.generated = 0
        self.handles: list[SeqHandle] = []


class _ScoreJob(_Job):
    def __init__(self, prompts: list[list[int]], token_ids: list[int]) -> None:
        super().__init__(None)
        self.prompts = prompts
        self.token_ids = np.asarray(token_ids, dtype=np.int64)
        self.out = np.full((len(prompts), len(token_ids)), np.nan)
        self.remaining = len(prompts)


class _ContinuationJob(_Job):
    """Teacher-forced log-probabilities of ``targets[k]`` after ``contexts[k]``."""

    def __init__(self, contexts: list[list[int]], targets: list[list[int]], eos: bool,
                 params: SamplingParams, eog: np.ndarray) -> None:
        super().__init__(None)
        self.prompts = contexts  # the shared-prefix logic reads ``prompts``
        self.targets = targets
        self.eos = eos
        self.params = params
        self.eog = eog
        self.out = np.zeros(len(contexts))
        self.remaining = len(contexts)


# ---------------------------------------------------------------------------------------------


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
        self._model = nat.model  # benchmarks/bench_value_features.py opens a second context
        self.n_vocab = nat.n_vocab
        self.n_embd = nat.n_embd
        self.n_ctx = nat.n_ctx
        self.n_seq_max = n_seq_max
        self.n_batch = n_batch
        self.embeddings = embeddings
        self.chat_template = nat.chat_template
        self._vocab = Vocab(nat.L, nat.vocab, nat.n_vocab, nat.chat_template)
        self._sampler = Sampler(self.n_vocab)  # used on the engine thread only

        self.stats = EngineStats()
        self._pool = SlotPool(nat, n_seq_max, self.stats, score_cache_size)
        self._runs: list[_Run] = []
        self._waiting: deque[_Want] = deque()
        self._jobs: list[_Job] = []
        # (child, logits row, feature row, index) to sample, filled by forks and decodes
        self._sample_queue: list[tuple[_Child, np.ndarray, np.ndarray | None, int]] = []
        self._row_logits: list[np.ndarray] = []
        self._row_features: list[np.ndarray | None] | None = None
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
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
        job = _ExtendJob(state, specs, params)
        return await self._submit("extend", job)

    async def extend_to_end(self, state: SessionState, specs: list[ParentSpec],
                            params: SamplingParams, until: StopRule) -> ExtendOutcome:
        """Like ``extend``, but each child goes on past its step ends until ``until`` says its
        solution is over (an end-of-generation token always is), without waiting for the
        other children: a child whose step ends keeps its slot and decodes its next step in
        the very next batch. Children are independent samples (no resampling between
        steps), so nothing needs the others' steps first. The whole job runs on the engine
        thread: its batches do not depend on when the caller gets to ask for a next step.
        """
        job = _ExtendJob(state, specs, params, until)
        return await self._submit("extend", job)

    def release(self, handles: Sequence[SeqHandle]) -> None:
        """Free the sequences of these handles (non-blocking; done before the next decode)."""
        if handles:
            self._inbox.put(("release", list(handles)))

    async def close_session(self, state: SessionState) -> None:
        job = _Job(state)
        await self._submit("close_session", job)

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
        job = _ScoreJob([list(map(int, p)) for p in prompts], list(map(int, token_ids)))
        return await self._submit("score", job)

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
        job = _ContinuationJob([list(map(int, c)) for c in contexts],
                               [list(map(int, t)) for t in continuations], eos, params,
                               self.eog_tokens())
        out = await self._submit("continuation", job)
        return out, job.prompt_tokens

    async def sync(self) -> None:
        """Wait until every message sent so far (releases included) has been processed."""
        await self._submit("sync", _Job(None))

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
        self._inbox.put(("stop", None))
        self._thread.join()
        self._native.free()

    def __enter__(self) -> LlamaEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _submit(self, kind: str, job: _Job) -> Any:
        if self._closed:
            raise BackendError("the llama.cpp engine is closed", kind="protocol")
        self._inbox.put((kind, job))
        return await asyncio.wrap_future(job.future)

    # ----------------------------------------------------------------- engine thread

    def _loop(self) -> None:
        while True:
            try:
                if not self._drain(block=not self._runs and not self._waiting):
                    return
                self._reap_cancelled()
                self._admit()
                self._sample_pending()  # children forked from a cached root, if any
                if self._runs:
                    self._tick()
                elif self._waiting:  # cannot happen unless slots leak: fail rather than hang
                    self._fail_all(BackendError("no KV sequence can be freed for queued work; "
                                                "raise n_seq_max", kind="protocol"))
            except Exception as e:  # a bug must not hang every caller
                log.exception("llama engine error")
                self._fail_all(BackendError(f"llama engine error: {e}", kind="protocol"))

    def _drain(self, block: bool) -> bool:
        """Handle queued messages; False when asked to stop."""
        while True:
            try:
                kind, payload = self._inbox.get(block=block)
            except queue.Empty:
                return True
            block = False
            if kind == "stop":
                self._fail_all(BackendError("the llama.cpp engine was closed", kind="protocol"))
                return False
            if kind == "release":
                self._pool.release(payload)
            elif kind == "extend":
                self._jobs.append(payload)
                self._start_extend(payload)
            elif kind == "score":
                self._jobs.append(payload)
                self._start_score(payload)
            elif kind == "continuation":
                self._jobs.append(payload)
                self._start_shared(payload, self._continuation_admit)
            elif kind == "close_session":
                self._close_session(payload.state)
                payload.done(None)
            elif kind == "sync":
                payload.done(None)

    # -- slots

    def _admit(self) -> None:
        while self._waiting:
            want = self._waiting[0]
            if want.job.aborted:
                self._waiting.popleft()
                continue
            s = self._pool.alloc(want.job)
            if s is None:
                return
            self._waiting.popleft()
            want.admit(s)

    def _root_ready(self, state: SessionState) -> bool:
        r = state.root
        return (r is not None and r.resident and r.slot is not None and not r.slot.busy
                and state.root_logits is not None and r.slot.n_past == len(state.prompt))

    def _prefill(self, job: _Job, slot: Slot, tokens: list[int], state: SessionState | None,
                 on_done: Callable[[int], None], *, from_root: bool) -> None:
        """Start decoding ``tokens`` after the prompt (``from_root``: copy the session's root
        sequence first) or, without a usable root, after re-reading the prompt too."""
        if from_root and state is not None and self._root_ready(state):
            assert state.root is not None and state.root.slot is not None
            self._native.seq_cp(state.root.slot.seq_id, slot.seq_id)
            slot.n_past = len(state.prompt)
            state.root.slot.last_used = self._pool.now
            pending = list(tokens)
        else:
            prompt = list(state.prompt) if (from_root and state is not None) else []
            pending = prompt + list(tokens)
        self._runs.append(_Run(slot, pending, job, on_done))

    # -- extend

    def _start_extend(self, job: _ExtendJob) -> None:
        state = job.state
        assert state is not None
        for i, spec in enumerate(job.specs):
            h = spec.handle
            if spec.children == 0:
                if h is not None and h.resident and h.slot is not None and not h.slot.busy:
                    self._pool.free(h.slot)
                continue
            if spec.root or (not spec.tokens and (h is None or not h.tokens)):
                self._start_root(job, i)
            elif h is not None and h.slot is not None and h.slot.owner is h and not h.slot.busy:
                s = h.slot
                s.owner, s.busy = job, True
                h.slot = None
                full = state.prompt + h.tokens
                pending = list(full[s.n_past:])
                if not pending:  # cannot happen: the last sampled token is always pending
                    raise RuntimeError("resident parent without a pending token")
                self._runs.append(_Run(s, pending, job, self._fork_cb(job, i, s, keep=False)))
            else:
                toks = list(h.tokens if h is not None else spec.tokens)

                def admit(slot: Slot, i: int = i, toks: list[int] = toks) -> None:
                    n0 = len(self._runs)
                    self._prefill(job, slot, toks, state, self._fork_cb(job, i, slot, keep=False),
                                  from_root=True)
                    job.prompt_tokens += len(self._runs[n0].pending) - 1

                self._waiting.append(_Want(job, admit))
        if job.remaining == 0:
            self._complete_extend(job)

    def _start_root(self, job: _ExtendJob, i: int) -> None:
        state = job.state
        assert state is not None
        if self._root_ready(state):
            assert state.root is not None and state.root.slot is not None
            s = state.root.slot
            s.busy = True
            self._fork(job, i, s, keep=True, logits=state.root_logits,
                       feature=state.root_features)
            return

        def admit(slot: Slot) -> None:
            if state.root is not None and state.root.slot is not None \
                    and state.root.slot.owner is state.root:
                self._pool.free(state.root.slot)
            root = SeqHandle(state, ())
            state.root = root
            state.root_logits = None

            def done(row: int) -> None:
                old = state.root
                if old is not root:  # a concurrent extend rebuilt the root meanwhile
                    if old is not None and old.slot is not None and old.slot.owner is old:
                        self._pool.free(old.slot)
                    state.root = root
                state.root_logits = self._row_logits[row].copy()
                state.root_features = self._row_feature(row)
                self._fork(job, i, slot, keep=True, logits=state.root_logits,
                           feature=state.root_features)

            job.prompt_tokens += len(state.prompt)
            self._runs.append(_Run(slot, list(state.prompt), job, done))

        self._waiting.append(_Want(job, admit))

    def _fork_cb(self, job: _ExtendJob, i: int, slot: Slot, keep: bool) -> Callable[[int], None]:
        def done(row: int) -> None:
            self._fork(job, i, slot, keep=keep, logits=self._row_logits[row],
                       feature=self._row_feature(row))
        return done

    def _fork(self, job: _ExtendJob, i: int, slot: Slot, *, keep: bool, logits: np.ndarray,
              feature: np.ndarray | None) -> None:
        """The parent's logits are ready: make its children, copy its KV, sample first tokens."""
        state = job.state
        assert state is not None
        spec = job.specs[i]
        base = spec.tokens if spec.handle is None else spec.handle.tokens
        carry = spec.carry if spec.handle is None else spec.handle.carry
        if spec.root:
            base, carry = (), b""
        kids = [_Child(job, (i, j), base, carry, spec.seeds[j]) for j in range(spec.children)]
        n_copies = len(kids) if keep else len(kids) - 1
        for child in kids[:n_copies]:
            target = self._pool.alloc(child)
            if target is None:
                self.stats.deferred += 1
                continue
            self._native.seq_cp(slot.seq_id, target.seq_id)
            target.n_past = slot.n_past
            child.slot = target
        if keep:
            assert state.root is not None
            self._pool.park(slot, state.root)
        else:
            slot.owner = kids[-1]
            kids[-1].slot = slot
        for j, child in enumerate(kids):
            self._sample_queue.append((child, logits, feature, j))

    def _child_step(self, child: _Child, token: int, logprob: float,
                    feature: np.ndarray | None) -> None:
        """Accept a sampled token; finish the step or schedule the token's decode."""
        child.tokens.append(token)
        child.logprob += logprob
        child.job.generated += 1
        if feature is not None:
            child.feature = feature
        p = child.params
        carry = b""
        if self._vocab.is_eog(token):
            child.finish = "eos"
            text, _ = child.text.cut(final=True)
        else:
            at = child.text.add(self._vocab.piece(token))
            if at >= 0:
                child.finish = "step"
                text, carry = child.text.split(at)
            elif len(child.tokens) >= p.max_step_tokens:
                child.finish = "length"
                text, carry = child.text.cut(final=False)
            else:
                self._continue(child, token)
                return
        job = child.job
        if job.until is not None and child.finish != "eos":
            step = Step(text=text, tokens=len(child.tokens), finish=child.finish,
                        logprob=float(child.logprob), features=child.feature)
            if not job.until(child.pos[0], step, len(child.done) + 1):
                # Not over: keep the step, start the next one on the same sequence (the token
                # that ended this step is decoded next, exactly as if the step had not ended).
                child.done.append(step)
                child.base = child.base + tuple(child.tokens)
                child.tokens, child.logprob, child.feature = [], 0.0, None
                child.finish = None
                child.text = StepText(p.delimiter, carry)
                self._continue(child, token)
                return
        self._finish_child(child, text, carry)

    def _continue(self, child: _Child, token: int) -> None:
        job = child.job
        if child.slot is not None:
            self._runs.append(_Run(child.slot, [token], job, self._child_cb(child)))
            return

        def admit(slot: Slot) -> None:  # a deferred child: rebuild its sequence, then go on
            slot.owner = child
            child.slot = slot
            n0 = len(self._runs)
            self._prefill(job, slot, list(child.base) + child.tokens, job.state,
                          self._child_cb(child), from_root=True)
            job.prompt_tokens += len(self._runs[n0].pending) - 1

        self._waiting.append(_Want(job, admit))

    def _child_cb(self, child: _Child) -> Callable[[int], None]:
        def done(row: int) -> None:
            self._sample_queue.append((child, self._row_logits[row], self._row_feature(row), -1))
        return done

    def _finish_child(self, child: _Child, text: str, carry: bytes) -> None:
        job = child.job
        handle = SeqHandle(job.state, child.base + tuple(child.tokens), carry)
        if child.slot is not None:
            self._pool.park(child.slot, handle)
        job.handles.append(handle)
        step = Step(text=text, tokens=len(child.tokens), finish=child.finish or "step",
                    logprob=float(child.logprob), handle=handle, features=child.feature)
        i, j = child.pos
        job.results[i][j] = step if job.until is None else [*child.done, step]
        job.remaining -= 1
        if job.remaining == 0:
            self._complete_extend(job)

    def _complete_extend(self, job: _ExtendJob) -> None:
        self._jobs.remove(job)
        state = job.state
        assert state is not None
        state.prompt_decoded += job.prompt_tokens
        out = ExtendOutcome(steps=[list(r) for r in job.results],  # type: ignore[misc]
                            prompt_tokens=job.prompt_tokens, generated_tokens=job.generated)
        if not job.done(out):  # the caller gave up: nobody will ever release these
            for h in job.handles:
                if h.slot is not None and h.slot.owner is h:
                    self._pool.free(h.slot)

    # -- scoring (judge rewards)

    def _start_score(self, job: _ScoreJob) -> None:
        """Score prompts; their common prefix is decoded once (starting from the longest
        cached prefix), and every decoded prompt stays cached for later calls."""
        self._start_shared(job, self._score_admit)

    def _start_shared(self, job: _ScoreJob | _ContinuationJob,
                      admit_k: Callable[[Any, int], Callable[[Slot], None]]) -> None:
        """Queue ``admit_k(job, k)`` for every ``job.prompts[k]``, after decoding (and
        caching) their common prefix once when it is long and not cached yet."""
        prompts = job.prompts
        lcp = 0
        if len(prompts) > 1:
            shortest = min(len(p) for p in prompts) - 1
            first = prompts[0]
            while lcp < shortest and all(p[lcp] == first[lcp] for p in prompts):
                lcp += 1
        prefix = prompts[0][:lcp]
        if lcp < SHARE_MIN or lcp - self._pool.best_cached(prefix)[1] < SHARE_MIN:
            for k in range(len(prompts)):
                self._waiting.append(_Want(job, admit_k(job, k)))
            return

        def admit_prefix(slot: Slot) -> None:
            def done(row: int) -> None:
                self._pool.cache_prefix(slot, prefix)
                for k in range(len(prompts)):
                    self._waiting.append(_Want(job, admit_k(job, k)))
            self._runs.append(_Run(slot, self._pool.start_from_cache(slot, prefix), job, done))

        self._waiting.append(_Want(job, admit_prefix))

    def _score_admit(self, job: _ScoreJob, k: int) -> Callable[[Slot], None]:
        def admit(slot: Slot) -> None:
            prompt = job.prompts[k]

            def done(row: int) -> None:
                lg = self._row_logits[row]
                lz = log_normalizers(lg[None, :])[0]
                job.out[k] = lg[job.token_ids].astype(np.float64) - lz
                self._pool.cache_prefix(slot, prompt)
                job.remaining -= 1
                if job.remaining == 0:
                    self._jobs.remove(job)
                    job.done(job.out)

            self._runs.append(_Run(slot, self._pool.start_from_cache(slot, prompt), job, done))
        return admit

    def _continuation_admit(self, job: _ContinuationJob, k: int) -> Callable[[Slot], None]:
        def admit(slot: Slot) -> None:
            context, target = job.prompts[k], job.targets[k]
            # Row j (j = 0..) predicts target[j]; with eos one more row predicts the end.
            n_rows = len(target) + job.eos
            decoded = context + (target if job.eos else target[:-1])
            pending = self._pool.start_from_cache(slot, context) + decoded[len(context):]
            job.prompt_tokens += len(pending)
            p = job.params
            state = {"j": 0, "sum": 0.0}

            def on_rows(rows: list[int]) -> None:
                for r in rows:
                    j = state["j"]
                    want = job.eog if j == len(target) else target[j]
                    state["sum"] += proposal_logprob(self._row_logits[r], want, p.temperature,
                                                     p.top_p)
                    state["j"] = j + 1

            def done(row: int) -> None:
                job.out[k] = state["sum"]
                self._pool.cache_prefix(slot, decoded)
                self._score_done(job)

            if n_rows == 0:  # nothing to score: log 1
                self._pool.free(slot)
                self._score_done(job)
                return
            self._runs.append(_Run(slot, pending, job, done, rows=n_rows, on_rows=on_rows))
        return admit

    def _score_done(self, job: _ContinuationJob) -> None:
        job.remaining -= 1
        if job.remaining == 0:
            self._jobs.remove(job)
            job.done(job.out)

    def clear_cache(self) -> None:
        """Drop the cached scoring prefixes (done before the next decode)."""
        self._inbox.put(("release", list(self._pool.cache)))

    # -- the decode tick

    def _tick(self) -> None:
        nat = self._native
        self._pool.now += 1
        budget = self.n_batch
        n = 0
        plan: list[tuple[_Run, int, list[int]]] = []  # run, tokens taken, output batch indices
        seq_ids = nat.seq_ids
        # Generation steps (one token each) first so they are never starved by long prompts;
        # teacher-forcing runs last: they take the output rows the others leave (at most
        # n_seq_max rows per decode, the size of llama.cpp's output buffer).
        runs = sorted(self._runs, key=lambda r: (r.on_rows is not None, len(r.pending) > 1))
        rows_left = self.n_seq_max
        hold_last = False
        if self.embeddings:
            # With embeddings on, llama.cpp outputs (and runs the LM head on) *every* token of
            # a batch. So prompt chunks are decoded in their own ticks with embeddings off,
            # keeping each run's last token for a one-token-per-sequence tick (embeddings on),
            # alternating so that long prompts do not stall generation.
            singles = [r for r in runs if len(r.pending) == 1]
            multis = [r for r in runs if len(r.pending) > 1]
            hold_last = bool(multis) and (not singles or self._pool.now % 2 == 0)
            runs = multis if hold_last else singles
            nat.set_embeddings(not hold_last)
        for run in runs:
            if n >= budget:
                break
            quiet = len(run.pending) - run.rows  # leading tokens that need no output row
            take = min(len(run.pending) - hold_last, budget - n)
            if run.on_rows is not None:
                take = min(take, quiet + rows_left)
            if take <= 0:
                continue
            s = run.slot
            nat.token[n:n + take] = run.pending[:take]
            nat.pos[n:n + take] = np.arange(s.n_past, s.n_past + take)
            nat.wants_row[n:n + take] = 0
            for k in range(n, n + take):
                seq_ids[k][0] = s.seq_id
            if run.on_rows is not None:
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
            victim = self._pool.evictable()
            if victim is None:
                break
            self._pool.free(victim)
            self.stats.evictions += 1
            ret = nat.decode(n)
        self.stats.decode_seconds += time.perf_counter() - t0
        if ret != 0:
            err = BackendError(
                f"llama_decode failed (code {ret}) with {len(plan)} sequences and {n} tokens"
                + ("; the KV cache is full: create the engine with a larger n_ctx" if ret == 1
                   else ""), kind="protocol")
            for job in {id(r.job): r.job for r, _, _ in plan}.values():
                self._abort(job, err)
            return
        st = self.stats
        st.decode_calls += 1
        st.decoded_tokens += n
        st.max_sequences_per_decode = max(st.max_sequences_per_decode, len(plan))
        sessions = {id(r.job.state) for r, _, _ in plan if r.job.state is not None}
        st.max_sessions_per_decode = max(st.max_sessions_per_decode, len(sessions))

        finished: list[tuple[_Run, int]] = []
        rows: list[int] = []
        forced: list[tuple[_Run, list[int]]] = []
        for run, take, outs in plan:
            run.slot.n_past += take
            run.slot.last_used = self._pool.now
            if run.job.state is not None:
                run.job.state.decoded += take
            del run.pending[:take]
            run.rows = min(run.rows, len(run.pending))
            first = len(rows)
            rows.extend(outs)
            if run.on_rows is not None and outs:
                forced.append((run, list(range(first, len(rows)))))
            if not run.pending:
                finished.append((run, len(rows) - 1))
        done_ids = {id(r) for r, _ in finished}
        self._runs = [r for r in self._runs if id(r) not in done_ids]
        self._row_logits = [nat.logits_row(b) for b in rows]
        self._row_features = ([nat.embedding_row(b) for b in rows]
                              if self.embeddings and nat.embeddings_on else None)
        for run, ks in forced:
            if not run.job.aborted:
                run.on_rows(ks)  # type: ignore[misc]
        for run, k in finished:
            if not run.job.aborted:
                run.on_done(k)
        self._sample_pending()

    def _sample_pending(self) -> None:
        """Sample one token for every child whose logits arrived this tick (fixed order)."""
        queue_ = self._sample_queue
        while queue_:
            batch, self._sample_queue = queue_, []
            for child, logits, feature, _j in batch:
                if child.job.aborted:
                    continue
                p = child.params
                u = child.rng.random()
                token, lp = self._sampler.sample(logits, p.temperature, p.top_p, u)
                self.stats.sampled_tokens += 1
                self._child_step(child, token, lp, feature)
            queue_ = self._sample_queue

    def _row_feature(self, row: int) -> np.ndarray | None:
        return self._row_features[row] if self._row_features is not None else None

    # -- failures, cancellation, session close

    def _abort(self, job: _Job, err: BaseException | None) -> None:
        """Drop a job: free every slot it holds (running or parked results)."""
        job.aborted = True
        if err is not None:
            job.fail(err)
        self._runs = [r for r in self._runs if r.job is not job]
        self._waiting = deque(w for w in self._waiting if w.job is not job)
        for s in self._pool.slots:
            o = s.owner
            if o is job or (isinstance(o, _Child) and o.job is job):
                self._pool.free(s)
        if isinstance(job, _ExtendJob):
            for h in job.handles:
                if h.slot is not None and h.slot.owner is h:
                    self._pool.free(h.slot)
        if job in self._jobs:
            self._jobs.remove(job)

    def _reap_cancelled(self) -> None:
        for job in [j for j in self._jobs if j.future.cancelled()]:
            self._abort(job, None)

    def _close_session(self, state: SessionState | None) -> None:
        for job in [j for j in self._jobs if j.state is state]:
            self._abort(job, BackendError("the session was closed", kind="protocol"))
        for s in self._pool.slots:
            if isinstance(s.owner, SeqHandle) and s.owner.owner is state:
                self._pool.free(s)
        if state is not None:
            state.root, state.root_logits, state.root_features = None, None, None

    def _fail_all(self, err: BaseException) -> None:
        for job in list(self._jobs):
            self._abort(job, err)
        self._runs.clear()
        self._waiting.clear()


__all__ = ["EngineStats", "ExtendOutcome", "LlamaEngine", "ParentSpec", "SeqHandle",
           "SessionState", "default_threads", "repack_weights"]
