"""Rendering the problem prompt once, by the model's own chat template.

The generator sends ``/v1/completions`` requests whose prompt is the rendered chat prefix
(system + user + the assistant header) followed by the steps so far, as plain text. The
prefix is rendered once per problem, from the first source that can:

1. the server (``server``): vLLM ``POST /tokenize`` with ``messages`` then ``POST
   /detokenize`` (vLLM >= 0.5.1; the tokenizer's own template, special tokens kept), or
   llama.cpp ``POST /apply-template`` (llama-server, 2024-12 on);
2. a Hugging Face tokenizer (``hf``) when ``transformers`` is installed and the model name
   is a repository it can load (``auto``: from the local cache only; ``hf`` may download);
3. a built-in template for the common families (``qwen`` = ChatML, also SmolLM2; ``llama3``).

``auto`` tries them in that order (1 only for servers that expose a template). The built-in
Llama 3 template is the plain Llama 3 format: Llama 3.1's template also adds a "Cutting
Knowledge Date" preamble to the system message, which only the server or tokenizer route
reproduces exactly.
"""

from __future__ import annotations

from collections.abc import Callable

from particlescale.errors import ConfigError

Messages = list[dict[str, str]]
Template = Callable[[Messages], str]


def chatml(messages: Messages) -> str:
    """Qwen / ChatML: ``<|im_start|>role\\ncontent<|im_end|>\\n`` per message, then
    ``<|im_start|>assistant\\n``."""
    out = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    return "".join(out) + "<|im_start|>assistant\n"


def llama3(messages: Messages) -> str:
    """Llama 3 instruct format, generation prompt included."""
    out = ["<|begin_of_text|>"]
    for m in messages:
        out.append(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n"
                   f"{m['content']}<|eot_id|>")
    out.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "".join(out)


BUILTIN: dict[str, Template] = {"qwen": chatml, "chatml": chatml, "llama3": llama3}

# Substrings of a model name -> built-in family, checked in order.
_FAMILIES = (("llama-3", "llama3"), ("llama3", "llama3"), ("qwen", "qwen"),
             ("smollm", "qwen"), ("chatml", "qwen"))


def builtin_for(model: str) -> Template | None:
    name = model.lower()
    for needle, family in _FAMILIES:
        if needle in name:
            return BUILTIN[family]
    return None


def hf_template(model: str, *, download: bool) -> Template | None:
    """The chat template of a Hugging Face tokenizer, or None if it cannot be had here.

    ``download=False`` looks in the local Hugging Face cache only (``auto`` does this: an
    offline hub lookup would retry for half a minute per problem set).
    """
    try:
        from transformers import AutoTokenizer  # optional dependency
    except ImportError:
        return None
    try:
        tok = AutoTokenizer.from_pretrained(model, local_files_only=not download)
    except Exception:  # offline, unknown repo, no tokenizer files: fall back quietly
        return None
    if not getattr(tok, "chat_template", None):
        return None

    def render(messages: Messages) -> str:
        return str(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    return render


def local_template(model: str, template: str) -> Template:
    """A client-side template: ``hf``, a built-in name, or ``auto`` (hf, then built-in)."""
    if template in BUILTIN:
        return BUILTIN[template]
    if template in ("hf", "auto"):
        t = hf_template(model, download=template == "hf")
        if t is not None:
            return t
        if template == "hf":
            raise ConfigError(
                f"template: 'hf' needs transformers and a loadable tokenizer for {model!r}; "
                "install particlescale[transformers] or pick the template 'qwen' or 'llama3' "
                "(--template qwen on the command line, template='qwen' in Python)")
        t = builtin_for(model)
        if t is not None:
            return t
    raise ConfigError(
        f"template: cannot tell the chat template of model {model!r}; name it: --template qwen "
        "(ChatML), llama3 or hf on the command line, template='qwen' in Python and in the "
        "server's generator options; or let the server apply it with mode='chat' (Python, "
        "server generator options)")
