"""Test helpers that the tests and the benchmarks share (nothing here runs in production).

- :mod:`~particlescale.testing.scripted`: a generator that samples steps from a known
  distribution over a tiny alphabet (so every trajectory's probability can be enumerated), a
  reward given by a function of the step texts, and :func:`enumerate_paths`.
- :mod:`~particlescale.testing.traces`: real traces of every method over the scripted
  generator, for the viewer.
- :mod:`~particlescale.testing.live_server`: the particlescale server run for real (uvicorn on
  a free port, its own thread), and a slow generator for runs that must last.
- :mod:`~particlescale.testing.fake_vllm`: a faithful fake of vLLM's OpenAI-compatible server,
  over real HTTP, with fault injection (``python -m particlescale.testing.fake_vllm``).
- :mod:`~particlescale.testing.vllm_real`: real vLLM servers from the CPU venv the Makefile
  builds (``make vllm-venv``).

Modules are imported on demand: the live and fake servers need the ``server`` extra.
"""
