"""Sampling: the flow-matching schedule and samplers."""
