"""Presets as code; only the CLI (and tests/benchmarks) read them, library code takes objects."""
