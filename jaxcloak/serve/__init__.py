"""The local web app and HTTP API behind ``jaxcloak serve``."""
