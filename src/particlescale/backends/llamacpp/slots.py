"""The KV sequences of the context ("slots"), who holds them, and the scoring prefix cache.

A slot is one llama.cpp sequence id. Its ``owner`` says what it holds:

    None          free
    a job         busy: tokens are being decoded into it (a prompt, a parent, a prefix)
    a child       busy: a child particle is being generated in it
    a SeqHandle   parked: a finished step (a particle the algorithm may extend later), the
                  session's prompt (its root), or a scored prompt kept as a cache entry

Parked slots are a cache, not a commitment: when a slot is needed and none is free, the
pool evicts a parked one (a cached scoring prefix first, else the least recently used
particle). An evicted handle is not lost: it keeps its tokens, and the job that extends it
rebuilds the sequence from them. Everything here runs on the engine thread, except
``SeqHandle.state``, which the session sets when it consumes or releases a handle.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from particlescale.backends.llamacpp.native import EngineStats, LlamaContext

SHARE_MIN = 8  # shared prefixes shorter than this are not worth a copy


class Slot:
    """One KV sequence id. ``owner`` is what holds it; ``busy`` slots are never evicted."""

    __slots__ = ("busy", "last_used", "n_past", "owner", "seq_id")

    def __init__(self, seq_id: int) -> None:
        self.seq_id = seq_id
        self.n_past = 0
        self.owner: Any = None
        self.busy = False
        self.last_used = 0


class SeqHandle:
    """The engine state of a particle after a step (``Step.handle``).

    One object per sequence *use*: a handle is never recycled, so a stale handle (consumed by
    an extend, released, or evicted from its slot) is recognised by identity, never confused
    with a newer occupant of the same KV sequence. ``tokens`` are all tokens generated after
    the prompt (the last one not yet decoded), so the sequence can always be rebuilt.
    """

    __slots__ = ("carry", "owner", "serial", "slot", "state", "tokens")
    _serials = itertools.count()

    def __init__(self, owner: Any, tokens: tuple[int, ...], carry: bytes = b"") -> None:
        self.owner = owner
        self.tokens = tokens
        self.carry = carry
        self.slot: Slot | None = None
        self.state = "live"  # live | consumed | released
        self.serial = next(SeqHandle._serials)

    @property
    def resident(self) -> bool:
        """True while the KV cache still holds this handle's sequence."""
        slot = self.slot
        return self.state == "live" and slot is not None and slot.owner is self

    def __repr__(self) -> str:
        where = f"seq {self.slot.seq_id}" if self.resident and self.slot else "not resident"
        return f"<SeqHandle #{self.serial} {self.state} {len(self.tokens)} tokens, {where}>"


class SlotPool:
    """Every slot of a context: allocation, parking, eviction, and the scoring cache.

    ``now`` is the engine's tick number: slots remember when they were last used, and
    eviction takes the least recently used parked particle.
    """

    def __init__(self, native: LlamaContext, n_seq_max: int, stats: EngineStats,
                 cache_size: int) -> None:
        self.native = native
        self.stats = stats
        self.slots = [Slot(i) for i in range(n_seq_max)]
        self._free: deque[Slot] = deque(self.slots)
        self.now = 0
        self.cache: list[SeqHandle] = []  # scoring prefixes, oldest first
        self.cache_owner = object()  # the owner of every cache handle
        self.cache_size = cache_size

    # -- allocation and parking

    def free(self, s: Slot) -> None:
        """Drop the slot's sequence and make it free (a handle parked there stops being
        resident)."""
        self.native.seq_rm(s.seq_id)
        if isinstance(s.owner, SeqHandle) and s.owner.slot is s:
            s.owner.slot = None
        s.owner, s.busy, s.n_past = None, False, 0
        self._free.append(s)

    def free_where(self, pred: Callable[[Any], bool]) -> None:
        """Free every slot whose owner satisfies ``pred`` (in slot order)."""
        for s in self.slots:
            if pred(s.owner):
                self.free(s)

    def free_parked(self, handles: Iterable[SeqHandle]) -> None:
        """Free the slots these handles still hold (busy or not)."""
        for h in handles:
            if h.slot is not None and h.slot.owner is h:
                self.free(h.slot)

    def release(self, handles: Iterable[SeqHandle]) -> None:
        """Free the slots these handles have parked (a busy one is being extended: kept)."""
        for h in handles:
            s = h.slot
            if s is not None and s.owner is h and not s.busy:
                self.free(s)

    def evictable(self) -> Slot | None:
        """The parked slot to evict: a cached scoring prefix first, else the least recently
        used particle (its handle will rebuild the sequence from its tokens)."""
        parked = [s for s in self.slots if not s.busy and isinstance(s.owner, SeqHandle)]
        if not parked:
            return None
        return min(parked, key=lambda x: (x.owner.owner is not self.cache_owner, x.last_used))

    def alloc(self, owner: Any) -> Slot | None:
        """A free slot, else an evicted parked one (see :meth:`evictable`), else None."""
        if self._free:
            s = self._free.popleft()
        else:
            s = self.evictable()
            if s is None:
                return None
            self.free(s)
            self._free.remove(s)
            self.stats.evictions += 1
        s.owner, s.busy, s.n_past, s.last_used = owner, True, 0, self.now
        return s

    def park(self, s: Slot, handle: SeqHandle) -> None:
        """``handle`` now holds ``s`` (not busy: evictable)."""
        s.owner, s.busy, s.last_used = handle, False, self.now
        handle.slot = s

    def copy(self, src: Slot, dst: Slot) -> None:
        """``dst`` becomes a fork of ``src``: it shares every KV cell of ``src``."""
        self.native.seq_cp(src.seq_id, dst.seq_id)
        dst.n_past = src.n_past

    # -- the scoring prefix cache

    def best_cached(self, tokens: Sequence[int]) -> tuple[SeqHandle | None, int]:
        """The cached scoring sequence sharing the longest prefix with ``tokens`` (at most
        ``len(tokens) - 1``: one token must be decoded to get logits)."""
        best, best_n = None, 0
        if not tokens:
            return None, 0
        t = np.asarray(tokens, dtype=np.int64)
        for h in self.cache:
            if not h.resident:
                continue
            c = np.asarray(h.tokens, dtype=np.int64)
            n = min(len(c), len(t) - 1)
            diff = np.flatnonzero(c[:n] != t[:n])
            common = int(diff[0]) if diff.size else n
            if common > best_n:
                best, best_n = h, common
        return best, best_n

    def start_from_cache(self, slot: Slot, tokens: Sequence[int]) -> list[int]:
        """Copy the best cached prefix into ``slot``, cut it to the common part; return the
        tokens still to decode."""
        h, n = self.best_cached(tokens)
        if h is not None and n >= SHARE_MIN and h.slot is not None:
            self.native.seq_cp(h.slot.seq_id, slot.seq_id)
            if self.native.seq_rm(slot.seq_id, n):
                slot.n_past = n
                h.slot.last_used = self.now
                self.stats.cached_prefix_tokens += n
                return list(tokens[n:])
            self.native.seq_rm(slot.seq_id)
        return list(tokens)

    def cache_prefix(self, slot: Slot, tokens: Sequence[int]) -> None:
        """Keep a scored sequence as a cache entry (evicted first when slots run out)."""
        h = SeqHandle(self.cache_owner, tuple(tokens))
        self.park(slot, h)
        self.cache = [c for c in self.cache if c.resident] + [h]
        while len(self.cache) > self.cache_size:
            self.free_parked([self.cache.pop(0)])

    # -- counts (read from any thread)

    @property
    def live(self) -> int:
        """Slots held by particles, session roots or running jobs (not the cache)."""
        return sum(1 for s in self.slots if s.owner is not None
                   and not (isinstance(s.owner, SeqHandle) and s.owner.owner is self.cache_owner))

    @property
    def cached(self) -> int:
        """Slots kept as scoring-prefix cache."""
        return sum(1 for h in self.cache if h.resident)
