"""The llama.cpp side of the engine: one model, one context, the batch the engine fills.

Everything here is a thin layer over llama-cpp-python's ctypes binding: load a GGUF, create
one context whose KV cache holds ``n_seq_max`` sequences (``kv_unified``: forked sequences
share their cells), and keep one ``llama_batch`` whose arrays the engine writes in place
(numpy views, no per-token allocation). Rows of the output (logits, hidden states) are read
as views of llama.cpp's buffers, valid until the next decode.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from particlescale.errors import ModelError


def _llama() -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise ModelError(
            "the embedded engine needs llama-cpp-python; run: pip install 'particlescale[llamacpp]'"
        ) from None
    return llama_cpp


def repack_weights(L: Any) -> bool:
    """Whether to let llama.cpp use its "extra" weight buffers (repacked CPU kernels).

    They are faster, but a build compiled with ``-march=native`` on a CPU that advertises AMX
    also routes batched matrix products through AMX tile instructions, which crash with an
    illegal instruction on virtual machines that do not enable AMX. So the default is on unless
    the llama.cpp build contains AMX kernels; ``PARTICLESCALE_LLAMA_REPACK=1|0`` overrides.
    (Build llama-cpp-python with ``-mno-amx-tile -mno-amx-int8 -mno-amx-bf16`` to get both.)
    """
    env = os.environ.get("PARTICLESCALE_LLAMA_REPACK")
    if env in ("0", "1"):
        return env == "1"
    return b"AMX_INT8 = 1" not in L.llama_print_system_info()


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class EngineStats:
    """Counters since the engine started (read them between runs)."""

    decode_calls: int = 0
    decoded_tokens: int = 0
    sampled_tokens: int = 0
    evictions: int = 0
    deferred: int = 0
    max_sequences_per_decode: int = 0
    max_sessions_per_decode: int = 0
    decode_seconds: float = 0.0
    cached_prefix_tokens: int = 0  # scoring tokens not decoded thanks to the prefix cache


class LlamaContext:
    """A loaded model, its context and the engine's batch (see :class:`LlamaEngine` for the
    options). ``n_batch`` must already be at least ``n_seq_max``."""

    def __init__(self, path: Path, *, n_ctx: int, n_seq_max: int, n_batch: int, threads: int,
                 embeddings: bool, repack: bool | None, flash_attn: bool | None,
                 verbose: bool) -> None:
        L = self.L = _llama()
        if not verbose:
            from llama_cpp._logger import set_verbose

            set_verbose(False)
        L.llama_backend_init()
        mparams = L.llama_model_default_params()
        mparams.use_extra_bufts = repack_weights(L) if repack is None else repack
        self.model = L.llama_model_load_from_file(str(path).encode(), mparams)
        if not self.model:
            raise ModelError(f"model: llama.cpp could not load {path}; is it a valid GGUF for "
                             "this llama.cpp version?")
        cp = L.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = n_batch
        cp.n_ubatch = n_batch
        cp.n_seq_max = n_seq_max
        cp.n_threads = threads
        cp.n_threads_batch = threads
        cp.kv_unified = True
        cp.embeddings = embeddings
        # At most one output row per sequence per decode: size the logits buffer for that,
        # not for n_batch rows (n_batch x 152k floats would be ~300 MB for nothing).
        cp.n_outputs_max = n_seq_max
        if flash_attn is not None:
            cp.flash_attn_type = (L.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                                  else L.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        cp.pooling_type = L.LLAMA_POOLING_TYPE_NONE
        cp.no_perf = True
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            L.llama_model_free(self.model)
            raise ModelError(f"llama.cpp could not create a context (n_ctx={n_ctx}, "
                             f"n_seq_max={n_seq_max}); try smaller values")
        self.mem = L.llama_get_memory(self.ctx)
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = int(L.llama_vocab_n_tokens(self.vocab))
        self.n_embd = int(L.llama_model_n_embd(self.model))
        self.n_ctx = int(L.llama_n_ctx(self.ctx))
        self.embeddings_on = embeddings  # switched per tick when embeddings are wanted
        tmpl = L.llama_model_chat_template(self.model, None)
        self.chat_template: str | None = tmpl.decode("utf-8") if tmpl else None
        # The batch: one token per entry; the engine writes these arrays in place.
        self.batch = L.llama_batch_init(n_batch, 0, 1)
        self.token = np.ctypeslib.as_array(self.batch.token, shape=(n_batch,))
        self.pos = np.ctypeslib.as_array(self.batch.pos, shape=(n_batch,))
        self.wants_row = np.ctypeslib.as_array(self.batch.logits, shape=(n_batch,))
        self.seq_ids = self.batch.seq_id  # seq_ids[k][0]: the sequence of entry k
        np.ctypeslib.as_array(self.batch.n_seq_id, shape=(n_batch,))[:] = 1

    def decode(self, n_tokens: int) -> int:
        """Decode the first ``n_tokens`` entries of the batch; llama.cpp's return code."""
        self.batch.n_tokens = n_tokens
        return int(self.L.llama_decode(self.ctx, self.batch))

    def set_embeddings(self, on: bool) -> None:
        if on != self.embeddings_on:
            self.L.llama_set_embeddings(self.ctx, on)
            self.embeddings_on = on

    def logits_row(self, b: int) -> np.ndarray:
        """A view of llama.cpp's logits buffer: valid until the next decode, so rows are used
        within the tick (the root's logits, kept across ticks, are copied)."""
        ptr = self.L.llama_get_logits_ith(self.ctx, b)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def embedding_row(self, b: int) -> np.ndarray | None:
        ptr = self.L.llama_get_embeddings_ith(self.ctx, b)
        if not ptr:
            return None
        return np.ctypeslib.as_array(ptr, shape=(self.n_embd,)).copy()

    def seq_cp(self, src: int, dst: int) -> None:
        """Make sequence ``dst`` share every KV cell of ``src`` (no copy of the cells)."""
        self.L.llama_memory_seq_cp(self.mem, src, dst, -1, -1)

    def seq_rm(self, seq: int, p0: int = -1) -> bool:
        """Drop sequence ``seq``'s cells from position ``p0`` on (all with -1)."""
        return bool(self.L.llama_memory_seq_rm(self.mem, seq, p0, -1))

    def free(self) -> None:
        L = self.L
        L.llama_batch_free(self.batch)
        L.llama_free(self.ctx)
        L.llama_model_free(self.model)
