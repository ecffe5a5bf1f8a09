"""The server's jobs: a bounded queue, one worker thread that owns the warm models, a folder per
job under the server's root, and expiry after a time to live.

Uploaded names are kept only as display names: every file a job stores is named by the job
(``in/000.jpg``), so no upload can name a path. A job's folder, inputs included, is removed once
its time to live has passed after it finished (or after it was submitted, if it never ran).
"""

from __future__ import annotations

import queue
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Limits:
    """What one server accepts: checked before any photo is decoded."""

    max_files: int = 20
    max_file_bytes: int = 25 << 20
    max_total_bytes: int = 100 << 20
    max_pixels: int = 40_000_000
    queue: int = 4  # jobs waiting or running; more get HTTP 429
    ttl_seconds: float = 3600.0


class QueueFull(Exception):
    """The queue holds ``Limits.queue`` jobs; the client should retry later."""


@dataclass
class Job:
    id: str
    folder: Path
    names: list[str]  # the uploads' display names, in order
    options: dict[str, Any]
    kind: str = "protect"
    status: str = "queued"  # queued, running, done, failed
    created: float = field(default_factory=time.time)
    finished: float | None = None
    done: int = 0
    results: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def public(self) -> dict[str, Any]:
        """What ``GET /api/jobs/{id}`` shows."""
        return {
            "id": self.id,
            "status": self.status,
            "photos": len(self.names),
            "done": self.done,
            "results": self.results,
            "error": self.error,
            "created": self.created,
            "finished": self.finished,
        }


class JobStore:
    """Jobs by id, the queue, the worker thread and the sweeper.

    Args:
      root: the folder every job's files live under (nothing is written elsewhere).
      run: protects one job (called on the worker thread, one job at a time).
      limits: the server's limits.
    """

    def __init__(self, root: Path, run: Callable[[Job], None], limits: Limits):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.run, self.limits = run, limits
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()
        self.pending: queue.Queue[Job | None] = queue.Queue()
        self.active = 0  # queued + running
        self.worker = threading.Thread(target=self._work, name="jaxcloak-serve", daemon=True)
        self.worker.start()
        self.stopping = threading.Event()
        self.sweeper = threading.Thread(target=self._sweep, name="jaxcloak-sweep", daemon=True)
        self.sweeper.start()

    def submit(
        self, files: list[tuple[str, str, bytes]], options: dict[str, Any], kind: str = "protect"
    ) -> Job:
        """A new job from ``(display name, suffix, bytes)`` uploads; raises QueueFull."""
        self.reserve()
        job = Job(uuid.uuid4().hex, Path(), [n for n, _, _ in files], options, kind)
        job.folder = self.root / job.id
        try:
            (job.folder / "in").mkdir(parents=True)
            for k, (_, suffix, data) in enumerate(files):
                (job.folder / "in" / f"{k:03d}{suffix}").write_bytes(data)
        except BaseException:  # give the slot back, leave nothing behind
            shutil.rmtree(job.folder, ignore_errors=True)
            self.release()
            raise
        with self.lock:
            self.jobs[job.id] = job
        self.pending.put(job)
        return job

    def reserve(self) -> None:
        """Take a place in the queue (a job, or a synchronous mask request); QueueFull."""
        with self.lock:
            if self.active >= self.limits.queue:
                raise QueueFull
            self.active += 1

    def release(self) -> None:
        with self.lock:
            self.active -= 1

    def get(self, job_id: str) -> Job | None:
        with self.lock:
            return self.jobs.get(job_id)

    def inputs(self, job: Job) -> list[Path]:
        return sorted((job.folder / "in").iterdir())

    def queued(self) -> int:
        with self.lock:
            return self.active

    def sweep(self, now: float | None = None) -> int:
        """Remove the jobs whose time to live has passed; returns how many."""
        now = time.time() if now is None else now
        gone = []
        with self.lock:
            for job in list(self.jobs.values()):
                since = job.finished if job.finished is not None else job.created
                if job.status in ("done", "failed") and now - since > self.limits.ttl_seconds:
                    gone.append(self.jobs.pop(job.id))
        for job in gone:
            shutil.rmtree(job.folder, ignore_errors=True)
        return len(gone)

    def close(self) -> None:
        self.stopping.set()
        self.pending.put(None)
        self.worker.join(timeout=60)

    def _sweep(self) -> None:
        """Expire jobs on time, whether or not others arrive."""
        while not self.stopping.wait(min(60.0, max(self.limits.ttl_seconds / 4, 0.5))):
            self.sweep()

    def _work(self) -> None:
        while (job := self.pending.get()) is not None:
            job.status = "running"
            status, error = "done", None
            try:
                self.run(job)
            except BaseException as e:  # one job's failure is its own, the server goes on
                reason = str(e).replace(str(self.root), "")
                status, error = "failed", f"{type(e).__name__}: {reason}"
            with self.lock:  # a client sees "done" only once the slot is free
                job.finished = time.time()
                job.status, job.error = status, error
                self.active -= 1
