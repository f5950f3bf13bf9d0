"""Fakes of what cannot run here (a GPU vLLM server), faithful to the wire format."""
