"""``python -m particlescale.testing.fake_vllm``: serve the fake in its own process."""

from particlescale.testing.fake_vllm import main

main()
