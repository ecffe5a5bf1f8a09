"""Network definitions: Flax modules, their variants and per-architecture key rules.

The model registry that loads them with weights is :mod:`jaxcloak.zoo`.
"""
