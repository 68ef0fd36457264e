"""`SaveThread`: one checkpoint write at a time in a background thread, its errors raised in the loop's thread.

    thread = SaveThread()
    thread.submit("step-00001000", write)   # write() -> a metrics record (or None)
    ...
    records = thread.poll()                 # each step: finished records; a failed write raises here
    thread.wait()                           # before the next save, and at the end

The loop never has two saves in flight: `submit` refuses while one is, so the caller
waits first, which is also what makes reusing the host buffers of `trainer.staging`
safe. A write that failed raises its own exception (a full disk stays the one-line
`KilnError` it is in a synchronous save) with a note naming the checkpoint, at the
first `poll` or `wait` after it failed: never lost, and never later than the next
save. `close` is for the way out of a failed or stopped run: it waits for the write in
flight (a stopped run keeps the checkpoint it was writing) but only logs its error,
so that the exception already on its way out is the one reported.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

log = logging.getLogger("trainer")

Record = dict[str, Any]


class SaveThread:
    """With ``background=False`` (``checkpoint.async_save=false``) `submit` runs the write at once in the
    caller's thread: the same code path and records, minus the overlap."""

    def __init__(self, *, background: bool = True) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kiln-checkpoint") if background else None
        self._future: Future[Record | None] | None = None
        self._what = ""
        self._records: list[Record] = []

    def submit(self, what: str, fn: Callable[[], Record | None]) -> None:
        if self._future is not None:
            raise RuntimeError(f"{what}: a checkpoint write ({self._what}) is still in flight; wait() first")
        if self._pool is None:
            record = fn()
            if record is not None:
                self._records.append(record)
            return
        self._what, self._future = what, self._pool.submit(fn)

    def poll(self) -> list[Record]:
        """Records of the writes finished since the last call; raises the error of one that failed."""
        if self._future is not None and self._future.done():
            self._collect()
        records, self._records = self._records, []
        return records

    def wait(self) -> float:
        """Block until the write in flight is done (raising its error); returns the seconds waited."""
        start = time.perf_counter()
        if self._future is not None:
            self._collect()
        return time.perf_counter() - start

    def close(self) -> None:
        """Wait for the write in flight, logging (not raising) its error; then stop the thread."""
        try:
            self.wait()
        except Exception:  # the caller is already raising something; this one must not replace it
            log.exception("the background checkpoint write failed as well")
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _collect(self) -> None:
        future, what = self._future, self._what
        assert future is not None
        self._future = None
        try:
            record = future.result()
        except BaseException as exc:
            exc.add_note(f"raised by the background write of checkpoint {what}")
            log.error("checkpoint %s: background write failed: %s", what, exc)
            raise
        if record is not None:
            self._records.append(record)
