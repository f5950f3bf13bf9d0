"""A faithful fake of vLLM's OpenAI-compatible server, served for real over HTTP.

It stands in for what cannot run here (a GPU vLLM server) and reproduces vLLM's wire format,
so the client code under test is the code users run against the real thing:

- ``GET /v1/models``: model card with ``owned_by: "vllm"`` and ``max_model_len``.
- ``POST /v1/completions``: ``n`` choices, ``stop`` strings (cut out of the text unless
  ``include_stop_str_in_output``), ``finish_reason`` (``stop``/``length``) and ``stop_reason``
  (the matched stop string, or ``null`` at EOS), ``usage`` (prompt tokens once per request,
  completion tokens summed over choices), ``seed`` (choice ``i`` is sampled with ``seed + i``
  as vLLM v1's ``ParentRequest`` does; same seed and prompt -> same text). Parameters are
  checked as vLLM's ``SamplingParams._verify_args`` checks them (same messages); unknown
  fields are accepted and ignored, as vLLM does (``OpenAIBaseModel`` has ``extra="allow"``),
  and recorded in :attr:`FakeVLLM.ignored_fields`.
- ``echo`` and ``logprobs`` on ``/v1/completions`` (the scoring request of ancestor sampling):
  the choice's text is prompt + completion and ``logprobs`` is the OpenAI legacy object over
  prompt and completion tokens (``tokens``, ``text_offset`` from 0, ``token_logprobs`` with
  ``None`` for the first prompt token, ``top_logprobs`` holding the token itself — no
  alternatives are emulated), as vLLM's ``_create_completion_logprobs`` builds it; the choice
  also carries vLLM's ``prompt_logprobs`` (``None``, then ``{token_id: {logprob, rank,
  decoded_token}}`` per prompt token); ``return_tokens_as_token_ids`` writes tokens as
  ``token_id:N``; more than ``max_logprobs`` is rejected with vLLM's message. The fake
  model's log-probability of a token is ``token_logprob(text before it, token)``.
- ``POST /v1/chat/completions``: ChatML rendering with ``add_generation_prompt`` /
  ``continue_final_message`` (both true is rejected), ``logprobs``/``top_logprobs``.
- ``POST /tokenize``, ``/detokenize``: a reversible fake tokenizer (Qwen's special-token ids).
- ``POST /pooling`` (``runner="pooling"``): STEP pooling at a step tag, ``data[i].data`` one
  row per tag, in the response variants of the vLLM versions users run (``pooling_variant``:
  ``rows``, ``flat``, ``base64``, ``logits``, or the misconfigurations ``all`` = an ALL
  pooler and ``embed`` = one normalised vector per input, what vLLM 0.32 answers for a
  ``*ForCausalLM`` PRM served with ``--runner pooling`` but not ``--convert classify``).
- Errors in vLLM's two dialects (``error_style``: ``new`` = ``{"error": {...}}`` of recent
  vLLM, about 0.10 on; ``old`` = the flat ``{"object": "error", ...}`` before), 404 for an
  unknown model (with vLLM's "Valid aliases" list), FastAPI's ``{"detail": "Not Found"}`` 404
  for a route the server does not have (``/pooling`` on a generation server, completions on
  a pooling server). Context limits as vLLM 0.32 checks them: ``max_tokens`` above
  ``max_model_len`` or a prompt longer than it is a 400 with vLLM's message; otherwise
  ``max_tokens`` is clamped to the room left and the choice ends with ``length`` there.
- ``strict_openai=True`` emulates the official OpenAI API instead: unknown parameters (every
  vLLM extra) are rejected with OpenAI's "Unrecognized request argument supplied" 400, there is
  no ``stop_reason``, no ``/tokenize`` or ``/pooling``.

Server cost model: each request sleeps ``latency + per_prompt_token * prompt_tokens +
per_token * (longest choice in tokens)`` (the choices of one request decode together, as in a
batch), concurrently with other requests. Fault injection (:class:`Fault`): HTTP statuses
(500, 429 with ``Retry-After``, 400...), dropped connections (headers sent, then the socket
closes mid-body), and delays longer than the client's timeout.

The fake language model writes "## Step k: a + b = c" steps separated by blank lines and, at
random, a final "Therefore, the final answer is: $\\boxed{X}$. I hope it is correct." followed
by EOS; its randomness comes only from the request seed.
"""


from __future__ import annotations

import time

from particlescale.testing.fake_vllm.server import FakeVLLM
from particlescale.testing.fake_vllm.wire import (
    OPENAI_CHAT_FIELDS,
    OPENAI_COMPLETION_FIELDS,
    VLLM_SAMPLING_EXTRAS,
    Fault,
    Record,
    Vocab,
    chatml,
    default_lm,
    default_prm,
    default_token_logprob,
    tokenize,
)

__all__ = ["OPENAI_CHAT_FIELDS", "OPENAI_COMPLETION_FIELDS", "VLLM_SAMPLING_EXTRAS", "FakeVLLM",
           "Fault", "Record", "Vocab", "chatml", "default_lm", "default_prm",
           "default_token_logprob", "main", "tokenize"]

def main() -> None:
    """Serve the fake in its own process (benchmarks): prints the port, runs until killed."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="Qwen/Qwen2.5-Math-1.5B-Instruct")
    ap.add_argument("--runner", default="generate", choices=["generate", "pooling"])
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--per-token", type=float, default=0.0)
    ap.add_argument("--per-prompt-token", type=float, default=0.0)
    args = ap.parse_args()
    fake = FakeVLLM(model=args.model, runner=args.runner, latency=args.latency,
                    per_token=args.per_token, per_prompt_token=args.per_prompt_token).start()
    print(fake.port, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        fake.stop()
