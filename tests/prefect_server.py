"""A real Prefect server on 127.0.0.1 for the end-to-end tests, and the helpers to start and stop it.

Why the end-to-end tests run `kiln run` against one server per test session instead of
Prefect's ephemeral mode: measured on the 2-core machine, a `kiln run --until download`
took 38.4 s in a fresh Prefect home (the ephemeral server starts and migrates a new
database), 16.6 s in a warm one, and 5.4-7.3 s against a running server. Every test
keeps its own Prefect home (result storage) and artifact store; only the API is shared,
and cache keys carry the store's build tokens, so tests cannot see each other's results.
The ephemeral path itself is what `make demo` uses, and CI runs that twice.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop(proc: subprocess.Popen[Any]) -> None:
    """Stop a process we started and everything it started (flow runs, trainers): its own process group."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def wait_healthy(api: str, proc: subprocess.Popen[Any], log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"prefect server exited:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"{api}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"prefect server not healthy after {timeout}s:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)


def server_env(home: Path, api: str) -> dict[str, str]:
    """The environment of a process talking to the server at `api`, with its own Prefect home."""
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_KEY", None)
    return env


@contextmanager
def prefect_server(home: Path, extra_env: dict[str, str] | None = None) -> Iterator[tuple[str, dict[str, str]]]:
    """Start ``prefect server start`` with its own home under `home`; yield (api url, its environment)."""
    home.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):  # a free port can be taken by another process (an xdist worker) before we bind it
        port = free_port()
        api = f"http://127.0.0.1:{port}/api"
        env = {**server_env(home / "prefect", api), **(extra_env or {})}
        with open(home / "server.log", "w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_healthy(api, proc, home / "server.log")
            time.sleep(1)
            if proc.poll() is None:  # healthy and ours: another server on that port would have made ours exit
                break
        except AssertionError:
            stop(proc)
            if attempt == 2:
                raise
    try:
        yield api, env
    finally:
        stop(proc)
