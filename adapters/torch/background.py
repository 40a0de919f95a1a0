"""The background thread that converts a step's host data to Arrow and writes it."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

__all__ = ["BackgroundWriter"]


class BackgroundWriter:
    """Run submitted jobs in order on one daemon thread; re-raise the first failure.

    Args:
        name: Thread name. Defaults to ``'tracefmt-torch-writer'``.
        max_pending: Bound on queued jobs; :meth:`submit` blocks beyond it so a slow disk
            applies back-pressure instead of growing memory. Defaults to 64.
    """

    def __init__(self, *, name: str = "tracefmt-torch-writer", max_pending: int = 64) -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                if self._error is None:
                    job()
            except BaseException as exc:  # noqa: BLE001 - handed to the training thread
                self._error = exc
            finally:
                self._queue.task_done()

    def submit(self, job: Callable[[], None]) -> None:
        """Queue ``job``; raise here if an earlier job failed."""
        self.check()
        self._queue.put(job)

    def drain(self) -> None:
        """Wait until every queued job has run, then raise any failure."""
        self._queue.join()
        self.check()

    def check(self) -> None:
        """Raise the first failure of a job, if any."""
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def close(self) -> None:
        """Finish the queued jobs and stop the thread (idempotent)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
