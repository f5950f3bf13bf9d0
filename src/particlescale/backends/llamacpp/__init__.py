"""The embedded llama.cpp backend: a batched multi-sequence engine and the generator on it.

>>> from particlescale.backends.llamacpp import LlamaCppGenerator
>>> gen = LlamaCppGenerator("qwen2.5-0.5b")          # after `particlescale models pull`

Share one :class:`LlamaEngine` between generators and judge rewards with
``LlamaCppGenerator(engine)``. Needs ``pip install 'particlescale[llamacpp]'``.
"""

from particlescale.backends.llamacpp.engine import LlamaEngine, SeqHandle
from particlescale.backends.llamacpp.generator import LlamaCppGenerator, LlamaCppSession

__all__ = ["LlamaCppGenerator", "LlamaCppSession", "LlamaEngine", "SeqHandle"]
