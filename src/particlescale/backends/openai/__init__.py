"""Generators for OpenAI-compatible servers (vLLM, SGLang, llama.cpp server, OpenAI)."""

from particlescale.backends.openai.generator import OpenAIGenerator, OpenAISession

__all__ = ["OpenAIGenerator", "OpenAISession"]
