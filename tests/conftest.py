"""Test-wide settings: offline hubs, a private model cache, CPU only."""

from __future__ import annotations

import os

# Before any test imports jax or a hub client.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The CLI's persistent compile cache is decided once per process at the first compilation;
# in-process CLI tests must not depend on test order, so it is off unless a test turns it on.
os.environ.setdefault("JAXCLOAK_COMPILE_CACHE", "off")
# The float32 precision policy for the whole session, as the CLI sets it (true FP32: the
# parity tolerances mean the same on any backend, and in-process CLI runs do not change the
# setting under later tests, which would retrace everything).
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_model_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep converted models out of the user's cache; shared by the whole session."""
    os.environ["JAXCLOAK_HOME"] = str(tmp_path_factory.mktemp("jaxcloak_home"))
