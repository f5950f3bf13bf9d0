"""Text and tokens of a llama.cpp model: tokenising, token pieces, end-of-generation tokens
and the GGUF's chat template.

Any thread may call these (the engine thread reads pieces and end-of-generation flags of
every sampled token): the caches are plain dicts filled idempotently, and every call uses
its own buffers.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

import numpy as np

from particlescale.backends.llamacpp.chat import render_chat


class Vocab:
    """The vocabulary (``vocab``: llama.cpp's pointer) and chat template of one model."""

    def __init__(self, L: Any, vocab: Any, n_vocab: int, chat_template: str | None) -> None:
        self._L = L
        self._vocab = vocab
        self.n_vocab = n_vocab
        self.chat_template = chat_template
        self._pieces: dict[int, bytes] = {}
        self._eog: dict[int, bool] = {}
        self._eog_ids: np.ndarray | None = None

    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = False
                 ) -> list[int]:
        """Text → token ids (``parse_special`` turns ``<|im_start|>`` etc. into their ids)."""
        raw = text.encode("utf-8")
        cap = len(raw) + 8
        buf = (self._L.llama_token * cap)()
        n = self._L.llama_tokenize(self._vocab, raw, len(raw), buf, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            buf = (self._L.llama_token * cap)()
            n = self._L.llama_tokenize(self._vocab, raw, len(raw), buf, cap, add_special,
                                       parse_special)
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """The bytes of one token (special tokens render as nothing)."""
        p = self._pieces.get(token)
        if p is None:  # once per token id; a local buffer, as any thread may call this
            buf = ctypes.create_string_buffer(64)
            n = self._L.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = self._L.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            p = buf.raw[:n]
            self._pieces[token] = p
        return p

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.piece(int(t)) for t in tokens).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        e = self._eog.get(token)
        if e is None:
            e = self._eog[token] = bool(self._L.llama_vocab_is_eog(self._vocab, token))
        return e

    def eog_tokens(self) -> np.ndarray:
        """Every end-of-generation token id (EOS, end of turn...): generation stops at any."""
        if self._eog_ids is None:
            self._eog_ids = np.array([t for t in range(self.n_vocab) if self.is_eog(t)],
                                     dtype=np.int64)
        return self._eog_ids

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        buf = ctypes.create_string_buffer(128)
        n = self._L.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True)
        return buf.raw[: max(n, 0)].decode("utf-8", errors="replace")

    def render_chat(self, messages: Sequence[dict[str, str]], *,
                    add_generation_prompt: bool = True) -> str:
        """The model's chat template (from the GGUF) applied to ``messages``."""
        return render_chat(
            self.chat_template, messages, add_generation_prompt=add_generation_prompt,
            bos_token=self._special_text(self._L.llama_vocab_bos(self._vocab)),
            eos_token=self._special_text(self._L.llama_vocab_eos(self._vocab)),
        )

    def chat_tokens(self, messages: Sequence[dict[str, str]], *,
                    add_generation_prompt: bool = True) -> list[int]:
        """Rendered chat prompt → tokens (special tokens parsed; BOS added if the model wants it
        and the template did not write it)."""
        text = self.render_chat(messages, add_generation_prompt=add_generation_prompt)
        toks = self.tokenize(text, parse_special=True)
        bos = int(self._L.llama_vocab_bos(self._vocab))
        if (self._L.llama_vocab_get_add_bos(self._vocab) and bos >= 0
                and (not toks or toks[0] != bos)):
            toks.insert(0, bos)
        return toks
