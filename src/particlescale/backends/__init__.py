"""Generators: the only code that talks to language models (llamacpp embedded, openai HTTP)."""
