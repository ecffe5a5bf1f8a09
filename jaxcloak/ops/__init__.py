"""Low-level array operations shared by the networks and the converter.

A leaf package: it imports only JAX.
"""
