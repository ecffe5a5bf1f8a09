"""Process-level JAX set-up the CLI does once: compile cache, compile counting, multi-host.

- :func:`enable_compile_cache`: JAX's persistent compilation cache in a jaxcloak folder, so a
  program is compiled once per (shape, config, jaxlib, device) and loaded afterwards.
- :class:`CompileCounter`: counts XLA programs compiled vs loaded from that cache, from JAX's
  own monitoring events (what "no new compilation" on a second run is checked with).
- :func:`init_distributed` / :func:`process_share`: ``jax.distributed`` across hosts (or
  processes) and the deterministic split of the input list among them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import jax

T = TypeVar("T")

_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
_CACHE_HIT = "/jax/compilation_cache/cache_hits"


def default_cache_dir() -> Path:
    """``$JAXCLOAK_HOME/xla-cache`` (default: the user cache dir, :func:`jaxcloak.paths.home`)."""
    from .paths import home

    return home() / "xla-cache"


def enable_compile_cache(path: str | os.PathLike | None) -> Path | None:
    """Turn on JAX's persistent compilation cache in ``path`` (None: leave it off).

    Must run before the first compilation of the process (JAX decides once). Every program
    is cached, however quick to compile: the point is that a rerun compiles nothing.
    """
    if path is None:
        return None
    p = Path(path).expanduser()
    p.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(p))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return p


class CompileCounter:
    """Counts XLA programs this process compiled and loaded from the persistent cache.

    Listens to JAX's monitoring events from construction on (listeners cannot be removed,
    so make one per process).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.programs = 0  # compiled or loaded
        self.cache_hits = 0
        self.seconds = 0.0  # XLA compile (or cache load) time
        jax.monitoring.register_event_duration_secs_listener(self._on_duration)
        jax.monitoring.register_event_listener(self._on_event)

    def _on_duration(self, event: str, duration: float, **_: object) -> None:
        if event == _BACKEND_COMPILE:
            with self._lock:
                self.programs += 1
                self.seconds += duration

    def _on_event(self, event: str, **_: object) -> None:
        if event == _CACHE_HIT:
            with self._lock:
                self.cache_hits += 1

    @property
    def compiled(self) -> int:
        """Programs XLA actually compiled (not found in the persistent cache)."""
        return self.programs - self.cache_hits

    def as_dict(self) -> dict[str, float]:
        return {
            "programs": self.programs,
            "compiled": self.compiled,
            "cache_hits": self.cache_hits,
            "xla_seconds": round(self.seconds, 3),
        }


def init_distributed(
    coordinator: str | None, num_processes: int | None, process_id: int | None
) -> tuple[int, int]:
    """Join a multi-process JAX job when asked; returns ``(process_index, process_count)``.

    With a coordinator (flag, or ``JAX_COORDINATOR_ADDRESS`` with ``JAX_NUM_PROCESSES`` and
    ``JAX_PROCESS_ID``, which JAX reads itself) this calls ``jax.distributed.initialize``;
    otherwise the job is one process. Each process computes on its own devices only.
    """
    if coordinator is None and not os.environ.get("JAX_COORDINATOR_ADDRESS"):
        if num_processes not in (None, 1):
            raise ValueError("--num-processes needs --coordinator HOST:PORT")
        return 0, 1
    if coordinator is not None and (num_processes is None or process_id is None):
        raise ValueError("--coordinator needs --num-processes N and --process-id I")
    if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"--process-id must be in 0..{num_processes - 1}, got {process_id}")
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )
    return jax.process_index(), jax.process_count()


def process_share(items: Sequence[T], index: int, count: int) -> list[T]:
    """This process's part of a sorted job: every ``count``-th item from ``index``.

    Deterministic (depends only on the list and the process numbers), disjoint, and
    together complete; striding balances folders of different photo sizes.
    """
    if not 0 <= index < count:
        raise ValueError(f"process index {index} outside 0..{count - 1}")
    return list(items[index::count])
