"""A kill -9 of ``kiln run`` takes the temporary Prefect server it started along (flows.ephemeral)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.flows.test_cli_output import user_env

pytestmark = pytest.mark.slow


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live processes whose parent is `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append((int(stat.parent.name), cmdline))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_kill_9_of_kiln_run_stops_its_temporary_prefect_server(tmp_path: Path) -> None:
    env = user_env(tmp_path)
    for name in ("PREFECT_API_URL",):  # Prefect's embedded server, as for a user's first `kiln run`
        env.pop(name, None)
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "run", "configs/demo.toml", "--until", "clean"],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (servers := [pid for pid, cmd in children(proc.pid) if "uvicorn" in cmd and "prefect" in cmd]):
            assert proc.poll() is None and time.monotonic() < deadline, "kiln run started no Prefect server"
            time.sleep(0.2)
        (server,) = servers
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        deadline = time.monotonic() + 30
        while alive(server):
            assert time.monotonic() < deadline, "the temporary Prefect server outlived kiln run"
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in [p for p, cmd in children(1) if str(tmp_path) in cmd]:
            os.kill(pid, signal.SIGKILL)
