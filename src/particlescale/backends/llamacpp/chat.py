"""Chat prompts from the GGUF's own template (``tokenizer.chat_template``), rendered with jinja2.

The template is rendered the way Hugging Face ``transformers`` does it (sandboxed jinja2,
``trim_blocks``/``lstrip_blocks``, ``raise_exception``, ``strftime_now``), so the prompt the
embedded engine decodes is the prompt the model was trained with. A GGUF without a template
gets a plain-text layout (system text, blank line, user text, blank line).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from particlescale.errors import ModelError


def _raise(message: str) -> None:
    raise ModelError(f"chat template: {message}")


@lru_cache(maxsize=8)
def _compile(template: str) -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except Exception as e:  # jinja2.TemplateSyntaxError and friends
        raise ModelError(f"chat template in the GGUF does not compile ({e}); pass a model with "
                         "a valid tokenizer.chat_template") from None


def render_chat(
    template: str | None,
    messages: Sequence[dict[str, str]],
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
) -> str:
    """Render ``messages`` (``{"role", "content"}`` dicts) into the prompt text."""
    if not template:
        parts = [m["content"] for m in messages]
        return "\n\n".join(parts) + ("\n\n" if add_generation_prompt else "")
    return _compile(template).render(
        messages=list(messages),
        add_generation_prompt=add_generation_prompt,
        bos_token=bos_token,
        eos_token=eos_token,
    )
