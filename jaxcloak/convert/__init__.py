"""Host-side conversion of third-party model files into JAX functions and params."""
