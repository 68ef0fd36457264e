"""No orphaned and no concurrent trainers (trainer.lifeline), with real trainer processes.

- A process that launched a trainer through `tasks.launch.run_trainer` is ``kill -9``-ed
  mid-training (what a worker-side kill of a flow run does to the stage): the trainer
  (plain python, or torchrun's agent and both workers) is gone within seconds, and its
  run directory is free for the retry.
- A second trainer on a directory that a live trainer is building fails at once with
  one line naming the holder, and the first one keeps training.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.trainer.conftest import train_args
from trainer.config import LaunchSection
from trainer.lifeline import PARENT_ENV, die_with_parent, hold_run_dir

REPO_ROOT = Path(__file__).resolve().parents[2]
LONG = ("run.steps=100000", "run.val_every=100000", "checkpoint.every_steps=100000")  # trains until killed

# The stage's side of a launch, in a process of its own so that the test can kill -9 it.
LAUNCHER = """
import json, sys
from pathlib import Path
from tasks.launch import run_trainer
run_trainer(json.loads(sys.argv[1]), Path(sys.argv[2]))
"""

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")


def env() -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if k != PARENT_ENV}
    return {**inherited, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper that never comes, as in some containers, is dead)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def descendants(pid: int) -> list[int]:
    """Every live process under `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return [p for p in found if alive(p)]


def wait_training(out_dir: Path, proc: subprocess.Popen[str], log: Path, timeout: float = 180) -> None:
    """Until the trainer has logged a training step (its start-up, torch imports included, is over)."""
    deadline = time.monotonic() + timeout
    metrics = out_dir / "metrics.jsonl"
    while not (metrics.is_file() and '"kind": "train"' in metrics.read_text()):
        assert proc.poll() is None, f"exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no training step after {timeout}s:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def survivors() -> Iterator[list[int]]:
    """Pids the test started; whatever still runs at the end is killed (no orphan outlives a failed test)."""
    pids: list[int] = []
    yield pids
    kill_all(pids)


@pytest.mark.parametrize("launch", [
    pytest.param(LaunchSection(), id="python"),
    pytest.param(LaunchSection(nproc_per_node=2), marks=pytest.mark.slow, id="torchrun"),  # ~2 torch start-ups more
])
def test_kill_9_of_the_launching_process_kills_its_trainer(pattern_data, tmp_path, survivors, launch) -> None:
    from tasks.launch import launch_command

    out = tmp_path / "run"
    (tmp_path / "cfg.toml").write_text("[model]\npreset = \"debug\"\n")
    cmd = launch_command("trainer.pretrain", launch, tmp_path / "cfg.toml") + train_args(pattern_data, out, *LONG)
    out.mkdir()
    log = out / "train.log"
    parent = subprocess.Popen([sys.executable, "-c", LAUNCHER, json.dumps(cmd), str(log)], cwd=REPO_ROOT,
                              env=env(), text=True, start_new_session=True)
    survivors.append(parent.pid)
    wait_training(out, parent, log)
    trainers = descendants(parent.pid)
    survivors.extend(trainers)
    assert len(trainers) == (1 if not launch.use_torchrun else 3), trainers  # trainer | agent + 2 workers

    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(10)
    deadline = time.monotonic() + 10
    while any(map(alive, trainers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in trainers if alive(p)], "trainer(s) kept running after their launcher was killed"
    with hold_run_dir(out):  # the retry can start: the dead trainer's lock went with it
        pass


def test_second_trainer_on_a_directory_fails_while_the_first_trains(pattern_data, tmp_path, survivors) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "trainer.pretrain", *train_args(pattern_data, out, *LONG)]
    out.mkdir()
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env(), stdout=log, stderr=subprocess.STDOUT, text=True)
    survivors.append(first.pid)
    wait_training(out, first, tmp_path / "first.log")

    second = subprocess.run(cmd, cwd=REPO_ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
    assert second.stdout.strip() == (f"error: another trainer is already building {out} (pid {first.pid}); "
                                     "wait for it or kill it"), second.stdout
    assert first.poll() is None  # the first one is untouched
    lines = (out / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(x)["step"] for x in lines if '"kind": "train"' in x]
    assert steps == sorted(set(steps))  # one writer: no step twice


def test_a_trainer_whose_launcher_is_already_gone_does_not_start() -> None:
    probe = "from trainer.lifeline import die_with_parent; print('armed', die_with_parent())"

    def run(parent: str | None) -> subprocess.CompletedProcess[str]:
        extra = {} if parent is None else {PARENT_ENV: parent}
        return subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, env={**env(), **extra},
                              capture_output=True, text=True, timeout=60)

    assert run(str(os.getpid())).stdout.strip() == "armed True"  # launched by us, and we are alive
    assert run(None).stdout.strip() == "armed False"  # started by hand: left alone (nohup works)
    gone = run("1")  # our pid is not 1: as if the launcher died and the trainer was re-parented
    assert gone.returncode == 1 and "armed" not in gone.stdout and "is gone" in gone.stderr
    assert die_with_parent() is False  # the test process itself has no launcher


def test_run_dir_lock_is_exclusive_and_names_the_holder(tmp_path) -> None:
    from kiln.errors import KilnError

    other = f"from trainer.lifeline import hold_run_dir\nwith hold_run_dir({str(tmp_path / 'run')!r}): pass"
    with hold_run_dir(tmp_path / "run"):
        holder = subprocess.run([sys.executable, "-c", other], cwd=REPO_ROOT, env=env(), capture_output=True,
                                text=True, timeout=60)
        assert holder.returncode != 0 and f"(pid {os.getpid()})" in holder.stderr
        with pytest.raises(KilnError, match="another trainer is already building"), hold_run_dir(tmp_path / "run"):
            pass  # a second open file description, even in one process
    assert list((tmp_path / "run").iterdir()) == []  # no lock file lands in the artifact
