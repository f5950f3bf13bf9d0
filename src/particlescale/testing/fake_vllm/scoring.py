"""The fake vLLM's scoring routes: log-probabilities of prompt and completion tokens,
``/tokenize``, ``/detokenize`` and ``/pooling`` (a mixin of :class:`FakeVLLM`)."""

from __future__ import annotations

import base64
import time
import uuid
import zlib
from typing import Any

import numpy as np

from particlescale.testing.fake_vllm.wire import SPECIAL, chatml, tokenize


class ScoringRoutes:
    """Routes of :class:`~particlescale.testing.fake_vllm.server.FakeVLLM` that score text
    rather than generate it; they read the fake's fields (``model``, ``vocab``, ``prm``...)."""

    def _scored(self, text: str) -> list[tuple[str, float | None]]:
        """(piece, log p(piece | text before it)) for each token of ``text``; None first."""
        out: list[tuple[str, float | None]] = []
        at = 0
        for piece in tokenize(text):
            out.append((piece, self.token_logprob(text[:at], piece) if out else None))
            at += len(piece)
        return out

    def _logprobs(self, prompt: str, text: str, n_gen: int, echo: bool,
                  body: dict[str, Any]) -> dict[str, Any]:
        """The legacy completions ``logprobs`` object, as vLLM's _create_completion_logprobs."""
        entries = self._scored(prompt) if echo else []
        at = len(prompt)
        for piece in tokenize(text):
            entries.append((piece, self.token_logprob(prompt[:at], piece)))
            at += len(piece)
        if n_gen > len(tokenize(text)):  # the EOS token: counted, its text not shown
            entries.append(("", self.token_logprob(prompt + text, "<|im_end|>")))
        as_ids = bool(body.get("return_tokens_as_token_ids"))
        tokens, offsets, lps, tops = [], [], [], []
        offset = 0
        for piece, lp in entries:
            token = f"token_id:{self.vocab.encode(piece)[0] if piece else SPECIAL['<|im_end|>']}" \
                if as_ids else piece
            tokens.append(token)
            offsets.append(offset)
            offset += len(token)
            lps.append(None if lp is None else max(lp, -9999.0))
            tops.append(None if lp is None else {token: max(lp, -9999.0)})
        return {"text_offset": offsets, "token_logprobs": lps, "tokens": tokens,
                "top_logprobs": tops}

    def _prompt_logprobs(self, prompt: str) -> list[Any]:
        out: list[Any] = []
        for piece, lp in self._scored(prompt):
            out.append(None if lp is None else {str(self.vocab.encode(piece)[0]): {
                "logprob": lp, "rank": 1, "decoded_token": piece}})
        return out


    async def _tokenize(self, body: dict[str, Any]) -> Any:
        if err := self._check_model(body):
            return err
        if "messages" in body:
            add_gen = body.get("add_generation_prompt", True)
            cont = body.get("continue_final_message", False)
            if add_gen and cont:
                return self._error(400, "Cannot set both `continue_final_message` and "
                                   "`add_generation_prompt` to True.")
            text = chatml(body["messages"], add_generation_prompt=add_gen,
                          continue_final_message=cont)
        elif isinstance(body.get("prompt"), str):
            text = body["prompt"]
        else:
            return self._error(400, "prompt: Field required")
        tokens = self.vocab.encode(text)
        return {"count": len(tokens), "max_model_len": self.max_model_len, "tokens": tokens,
                "token_strs": None}

    async def _detokenize(self, body: dict[str, Any]) -> Any:
        if err := self._check_model(body):
            return err
        try:
            return {"prompt": self.vocab.decode(list(body["tokens"]))}
        except (KeyError, TypeError) as e:
            return self._error(400, f"tokens: invalid token ids ({e})")

    # -- pooling ------------------------------------------------------------------------------

    def _rows(self, text: str) -> Any:
        probs = []
        start = 0
        while (at := text.find(self.step_tag, start)) >= 0:
            probs.append(self.prm(text[:at]))
            start = at + len(self.step_tag)
        rows = [[1 - q, q] if self.positive_index == 1 else [q, 1 - q] for q in probs]
        v = self.pooling_variant
        if v == "flat":
            return [x for r in rows for x in r]
        if v == "base64":
            return base64.b64encode(np.asarray(rows, dtype="<f4").tobytes()).decode()
        if v == "logits":
            return [[0.0, float(np.log(r[1] / r[0]))] for r in rows]
        if v == "all":
            return [[0.5, 0.5] for _ in tokenize(text)]
        if v == "embed":  # a *ForCausalLM under --runner pooling without --convert classify
            rng = np.random.default_rng(zlib.crc32(text.encode()))
            vec = rng.normal(size=64)
            return [float(x) for x in vec / np.linalg.norm(vec)]
        return rows

    async def _pooling(self, body: dict[str, Any]) -> Any:
        if err := self._check_model(body):
            return err
        if "normalize" in body:
            return self._error(400, "Parameter `normalize` was removed; use `use_activation` "
                               "instead.")
        task = body.get("task")
        if task is not None and task != "token_classify":
            return self._error(400, f"Unsupported task: {task!r} Supported tasks: "
                               "('token_classify',)")
        if "messages" in body:
            add_gen = body.get("add_generation_prompt", False)
            cont = body.get("continue_final_message", False)
            if add_gen and cont:
                return self._error(400, "Cannot set both `continue_final_message` and "
                                   "`add_generation_prompt` to True.")
            texts = [chatml(body["messages"], add_generation_prompt=add_gen,
                            continue_final_message=cont)]
        elif "input" in body:
            inp = body["input"]
            texts = [inp] if isinstance(inp, str) else list(inp)
            if not texts or not all(isinstance(t, str) for t in texts):
                return self._error(400, "input: Input should be a valid string or list of "
                                   "strings")
        else:
            return self._error(400, "input: Field required")
        n_tokens = sum(len(tokenize(t)) for t in texts)
        await self._cost(n_tokens, [])
        if err := self._context_error(max(len(tokenize(t)) for t in texts), 0):
            return err
        return {"id": f"pooling-{uuid.uuid4().hex}", "object": "list",
                "created": int(time.time()), "model": self.model,
                "data": [{"index": i, "object": "pooling", "data": self._rows(t)}
                         for i, t in enumerate(texts)],
                "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens,
                          "completion_tokens": 0, "prompt_tokens_details": None,
                          "completion_tokens_details": None}}
