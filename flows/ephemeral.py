"""The embedded Prefect server dies with the ``kiln run`` that started it.

    server_dies_with_this_process()   # in kiln run, before the flow (and so the server) starts

Without a ``PREFECT_API_URL``, Prefect starts a temporary server (``python -m uvicorn …``)
for the run and stops it when the run ends. A ``kill -9`` (or OOM kill) of ``kiln run``
skips that, and the server lives on as an orphan holding ``prefect.db``: the next run
starts a second server on the same SQLite file. So its process gets a parent-death
signal (SIGTERM: uvicorn shuts down cleanly), as the trainers do (`trainer.lifeline`).
Prefect starts the server in the main thread (the signal follows the thread that forked,
so a short-lived thread would be wrong), through `SubprocessASGIServer._run_uvicorn_command`,
which is wrapped here to pass a ``preexec_fn``. A standing server (``prefect server start``,
the deployment setup) is not touched. Linux only; elsewhere nothing changes.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from typing import Any

from trainer.lifeline import parent_death_signal


def server_dies_with_this_process() -> None:
    """Make Prefect's temporary server, if this process starts one, exit when this process dies."""
    if not sys.platform.startswith("linux"):
        return
    from prefect.server.api import server as api

    cls: Any = api.SubprocessASGIServer
    if getattr(cls._run_uvicorn_command, "kiln_dies_with_parent", False):
        return
    original = cls._run_uvicorn_command
    arm = parent_death_signal(signal.SIGTERM)
    parent = os.getpid()

    def preexec() -> None:  # between fork and exec, in the child
        arm()
        if os.getppid() != parent:  # we died before the signal was armed: nobody would send it
            os.kill(os.getpid(), signal.SIGTERM)

    class Popen(subprocess.Popen):  # type: ignore[type-arg]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("preexec_fn", preexec)
            super().__init__(*args, **kwargs)

    @functools.wraps(original)
    def run_uvicorn_command(self: Any) -> Any:
        real, api.subprocess.Popen = api.subprocess.Popen, Popen  # server.py calls subprocess.Popen(...)
        try:
            return original(self)
        finally:
            api.subprocess.Popen = real

    run_uvicorn_command.kiln_dies_with_parent = True  # type: ignore[attr-defined]
    cls._run_uvicorn_command = run_uvicorn_command
