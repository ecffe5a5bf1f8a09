"""Gradient transformations used by the attacks (optax-compatible and pure)."""
