"""What `kiln run` prints: a failing stage is one ``kiln: error:`` line and no traceback; a normal run no
SQLite "database is locked" traces (flows.quiet, and the telemetry default in cli.main).

The end-to-end runs go through the real CLI in subprocesses, as a user runs it, with Prefect's
default INFO logging (the test session sets WARNING for everything else).
"""

from __future__ import annotations

import bz2
import json
import logging
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flows.quiet import KilnErrorFilter
from kiln.errors import KilnError
from tests.conftest import REPO_ROOT
from tests.prefect_server import server_env


def kiln(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def user_env(home: Path, **extra: str) -> dict[str, str]:
    return {**server_env(home / "prefect", "unused"), "KILN_HOME": str(home / "artifacts"),
            "PREFECT_LOGGING_LEVEL": "INFO", **extra}


@pytest.mark.slow
def test_a_failing_stage_is_one_error_line_and_debug_shows_the_traceback(tmp_path: Path, prefect_api: str) -> None:
    dump = tmp_path / "bad.xml.bz2"  # a real bzip2 file whose XML ends mid-page: the clean stage rejects it
    dump.write_bytes(bz2.compress(b"<mediawiki><page><title>x</title><revision><text>cut off here"))
    config = tmp_path / "bad.toml"
    config.write_text(f'[[download.sources]]\nname = "bad.xml.bz2"\nurl = "{dump}"\n')
    env = user_env(tmp_path, PREFECT_API_URL=prefect_api)

    proc = kiln(env, "run", str(config), "--until", "clean")
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "kiln: error:" in line]
    assert len(errors) == 1 and "bad.xml.bz2" in errors[0] and "malformed dump XML" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("malformed dump XML") == 1, proc.stderr  # Prefect's own lines do not repeat it
    assert "Task run 'clean-" in proc.stderr  # the progress lines stay: they say which stage failed
    # Prefect always saves a failed flow's exception; it must be JSON, never a pickle (issue 14.4).
    saved = list((Path(env["PREFECT_HOME"]) / "storage").glob("*"))
    assert saved, "Prefect saved nothing: the check below would be empty"
    for path in saved:
        assert json.loads(path.read_bytes())["__exc_type__"] == "kiln.errors.KilnError", path.read_bytes()[:200]

    debug = kiln(env, "run", str(config), "--until", "clean", "--debug")
    assert debug.returncode == 2
    assert "Traceback" in debug.stderr and "KilnError" in debug.stderr, debug.stderr[-3000:]
    assert "kiln: error:" in debug.stderr


@pytest.mark.slow
def test_a_normal_run_on_the_embedded_server_prints_no_database_locked_traces(tmp_path: Path) -> None:
    env = user_env(tmp_path)
    for name in ("PREFECT_API_URL", "PREFECT_SERVER_ANALYTICS_ENABLED"):  # a fresh home, Prefect's ephemeral server
        env.pop(name, None)
    proc = kiln(env, "run", "configs/demo.toml", "--until", "download")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "database is locked" not in proc.stderr, proc.stderr[-5000:]
    assert "Traceback" not in proc.stderr and "| ERROR" not in proc.stderr, proc.stderr[-5000:]
    assert "Starting temporary server" in proc.stderr  # it did use the embedded server
    # The cause: the server's telemetry service writing its session row while the server starts.
    with sqlite3.connect(tmp_path / "prefect" / "prefect.db") as db:
        keys = {row[0] for row in db.execute("SELECT key FROM configuration")}
    assert "TELEMETRY_SESSION" not in keys


# -- the filter itself ----------------------------------------------------------------------------
def record(name: str, msg: str, exc: BaseException | None = None, level: int = logging.ERROR) -> logging.LogRecord:
    exc_info: Any = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord(name, level, __file__, 1, msg, None, exc_info)


def test_filter_drops_kiln_error_records_and_shortens_failed_state_lines() -> None:
    flt = KilnErrorFilter()
    assert not flt.filter(record("prefect.task_runs", "Task run failed with exception: KilnError('x')",
                                 KilnError("x")))
    assert not flt.filter(record("prefect.flow_runs", "Encountered exception during execution", KilnError("x")))
    failed = record("prefect.task_runs", "Finished in state Failed('Task run encountered an exception KilnError: x')")
    assert flt.filter(failed) and failed.getMessage() == "Finished in state Failed (the error is below)"


def test_filter_keeps_everything_else_with_its_traceback() -> None:
    flt = KilnErrorFilter()
    try:
        raise ValueError("a bug")
    except ValueError as exc:
        bug = record("prefect.task_runs", "Task run failed with exception: ValueError('a bug')", exc)
    assert flt.filter(bug) and bug.exc_info is not None and bug.exc_info[1] is not None
    failed = record("prefect.task_runs", "Finished in state Failed('Task run encountered an exception ValueError')")
    assert flt.filter(failed) and "ValueError" in failed.getMessage()
    done = record("prefect.task_runs", "Finished in state Completed()", level=logging.INFO)
    assert flt.filter(done) and done.getMessage() == "Finished in state Completed()"
