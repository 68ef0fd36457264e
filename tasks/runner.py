"""The one runner of every data stage's units (clean, pretokenize): in this process, in local processes, or on Dask.

    with open_runner("dask", workers=4) as runner:
        runner.run(run_unit, [(name, args), ...], on_done=lambda name, result: ...)

- ``serial``: a plain loop; no start-up cost, and monkeypatching works (tests use it).
- ``processes``: a spawn-based process pool on this machine (no Dask needed; spawn, not fork,
  because the caller may be a Prefect worker with threads and an event loop running).
- ``dask``: a `distributed.LocalCluster` of `workers` single-threaded processes (the GIL-bound
  cleaning needs processes), or an existing cluster at `address`. The cluster starts on the
  first call that has work, so a resumed stage with nothing left to do never starts one.
  Measured on the 2-core dev box: ~1.6 s to start 1 worker, ~3 s for 2 (benchmarks/clean_scaling.py).

`on_done` runs in the calling process, in completion order; callers key results by unit
name, never by arrival order, so the output does not depend on scheduling. A unit's error
cancels the rest and is re-raised here (a `KilnError` keeps its one-line message).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Literal

log = logging.getLogger("kiln.runner")
Job = tuple[str, tuple[Any, ...]]
EngineName = Literal["auto", "serial", "processes", "dask"]
ENGINES = ("serial", "processes", "dask")


def choose_engine(engine: str, address: str, input_bytes: int, serial_below: int, n_units: int,
                  workers: int = 0) -> str:
    """The engine ``auto`` stands for: Dask for a cluster address, or for inputs worth a cluster's start-up
    (several units, at least `serial_below` bytes, and more than one worker); else serial."""
    if engine != "auto":
        return engine
    if address:
        return "dask"
    return "serial" if input_bytes < serial_below or n_units < 2 or workers == 1 else "dask"


def default_workers() -> int:
    """CPUs this process may use (cgroup/affinity aware where the OS says)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class SerialRunner:
    """Runs units one after another in this process."""

    workers = 1

    def run(self, fn: Callable[..., Any], jobs: Sequence[Job], on_done: Callable[[str, Any], None]) -> None:
        for name, args in jobs:
            on_done(name, fn(*args))


class ProcessRunner:
    """Runs units in a pool of `workers` spawned processes on this machine."""

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def run(self, fn: Callable[..., Any], jobs: Sequence[Job], on_done: Callable[[str, Any], None]) -> None:
        if not jobs:
            return
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=max(1, min(self.workers, len(jobs))), mp_context=ctx) as pool:
            futures = {pool.submit(fn, *args): name for name, args in jobs}
            try:
                for future in as_completed(futures):
                    on_done(futures[future], future.result())
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise


class DaskRunner:
    """Runs units on a Dask cluster: a local one started on first use, or the one at `address`."""

    def __init__(self, workers: int, address: str = "") -> None:
        self.workers = workers
        """Local workers to start; with `address`, the cluster's worker count once connected."""
        self.address = address
        self._stack = contextlib.ExitStack()
        self._client: Any = None

    def run(self, fn: Callable[..., Any], jobs: Sequence[Job], on_done: Callable[[str, Any], None]) -> None:
        if not jobs:
            return
        from distributed import as_completed as dask_as_completed

        client = self._connect(len(jobs))
        tag = uuid.uuid4().hex[:8]  # Dask keys must be unique per submission
        futures = {client.submit(fn, *args, key=f"{name}-{tag}", pure=False): name for name, args in jobs}
        try:
            for future in dask_as_completed(futures):
                on_done(futures[future], future.result())
        except BaseException:
            client.cancel(list(futures))
            raise

    def _connect(self, n_jobs: int) -> Any:
        if self._client is not None:
            return self._client
        import dask.config
        from distributed import Client

        # Its start and shutdown chatter (dozens of INFO lines) would bury the stage's own log; worker
        # processes read dask config from the environment when they import dask, so set it there too.
        quiet = logging.getLogger("distributed")
        self._stack.callback(quiet.setLevel, quiet.level)
        quiet.setLevel(logging.WARNING)
        self._stack.enter_context(dask.config.set({"logging.distributed": "warning"}))
        self._stack.enter_context(_env("DASK_LOGGING__DISTRIBUTED", "warning"))
        if self.address:
            log.info("connecting to the Dask cluster at %s", self.address)
            self._client = self._stack.enter_context(Client(self.address))
            self.workers = len(self._client.scheduler_info()["workers"])
        else:
            n = max(1, min(self.workers, n_jobs))
            log.info("starting a local Dask cluster of %d worker processes", n)
            cluster = self._stack.enter_context(local_cluster(n))
            self._client = self._stack.enter_context(Client(cluster))
        return self._client

    def close(self) -> None:
        self._stack.close()


def local_cluster(n: int) -> Any:
    """A LocalCluster of `n` single-threaded worker processes that leaves this process's environment alone.

    Dask's nannies set ``distributed.nanny.pre-spawn-environ`` in the *parent's* environment
    before spawning; later stages started from this process (torchrun) would inherit
    ``OMP_NUM_THREADS=1``. We restore it. We also drop ``MALLOC_TRIM_THRESHOLD_``: a fixed
    threshold turns off glibc's adaptive mmap threshold, and cleaning (1 MiB reads, bz2 and
    XML buffers, numpy arrays) then ran ~35 % slower per page in a worker than in process.
    Our workers live for one stage and stream, so returning memory to the OS early buys nothing.
    """
    import dask.config
    from distributed import LocalCluster

    saved = dict(os.environ)
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
            return LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True,
                dashboard_address=None,  # type: ignore[arg-type]  # None: no dashboard (start-up time, a port)
                # The scheduler still serves /health on an HTTP port: any free one, not 8787
                # (taken by any other cluster on the box, which costs a warning).
                scheduler_kwargs={"dashboard_address": ":0"},
                silence_logs=logging.ERROR,
            )
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


Runner = SerialRunner | ProcessRunner | DaskRunner


@contextlib.contextmanager
def open_runner(engine: str, workers: int = 0, address: str = "") -> Iterator[Runner]:
    """A runner for `engine` (one of `ENGINES`), closed (cluster stopped) on exit."""
    if engine == "serial":
        yield SerialRunner()
        return
    if engine == "processes":
        yield ProcessRunner(workers or default_workers())
        return
    if engine != "dask":
        raise ValueError(f"engine {engine!r}: use one of {', '.join(ENGINES)}")
    runner = DaskRunner(workers or default_workers(), address)
    try:
        yield runner
    finally:
        runner.close()
