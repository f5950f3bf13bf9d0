"""Learned process rewards: value heads on the generator's hidden states (issue: value PRM)."""
