"""jaxcloak: fast, trustworthy face-privacy protection in JAX/Flax."""

__version__ = "0.1.0"
