"""A trainer lives no longer than the stage that launched it, and alone in its run directory.

    die_with_parent()                      # first thing in a launched trainer (every rank)
    with hold_run_dir(cfg.run.out_dir):    # rank 0, for the whole run
        train(cfg, recipe)
    python -m trainer.lifeline -m torch.distributed.run --standalone ...   # torchrun's agent, the same way

Why: a training stage runs the trainer as a child process. If the stage's process is
killed (``kill -9`` of a Prefect flow run), an unguarded trainer keeps training as an
orphan, and a retry starts a second trainer in the same build directory: both append
the same steps to ``metrics.jsonl`` and overwrite each other's checkpoints.

- **Parent death.** `tasks.launch.run_trainer` puts its pid in ``KILN_TRAINER_PARENT``.
  A process that finds it set asks Linux for ``SIGKILL`` when its parent dies
  (``prctl(PR_SET_PDEATHSIG)``), then checks that its parent is still that pid: a
  parent that died between fork and ``prctl`` would never send the signal. The signal
  fires when the parent *thread* that forked exits; `run_trainer`'s thread blocks on
  the trainer until it ends, so that is the stage's lifetime. Under torchrun the chain
  is stage → agent (this module's ``__main__``, which then runs ``torch.distributed.run``
  in-process and names itself the workers' parent) → workers (`trainer.loop.run_main`).
  A trainer started by hand (no ``KILN_TRAINER_PARENT``) is left alone: ``nohup`` works.
  Linux only; elsewhere a no-op (the run-directory lock still holds).
- **One trainer per run directory.** Rank 0 holds an exclusive ``flock`` on the run
  directory itself for its whole life (no lock file: nothing extra lands in the
  artifact); the kernel drops it when the process dies, however it dies. A second
  trainer fails at once with one line naming the holder's pid. A holder that is
  exiting (killed a moment ago: the kernel drops its locks only when its last thread
  is gone) is waited for, briefly. Under torchrun a restart is safe: the agent stops
  (and waits for) the old workers before starting new ones, so the new rank 0 finds
  the lock free.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import runpy
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from kiln.errors import KilnError

PARENT_ENV = "KILN_TRAINER_PARENT"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
EXIT_ORPHANED = 1
LOCK_GRACE_S = 10.0  # how long a holder that is exiting (or unknown) may take to let go of the run directory


def die_with_parent() -> bool:
    """Arm SIGKILL-on-parent-death when launched by a stage; exit at once if that parent is already gone.

    Returns whether it was armed (False: not launched by a stage, or not Linux).
    """
    expected = os.environ.get(PARENT_ENV, "")
    if not expected.isdigit() or not sys.platform.startswith("linux"):
        return False
    parent_death_signal(signal.SIGKILL)()
    if os.getppid() != int(expected):  # the parent died before the signal was armed: nobody will stop us
        with contextlib.suppress(OSError):
            print(f"error: the launching process {expected} is gone; not training as an orphan", file=sys.stderr)
        os._exit(EXIT_ORPHANED)
    return True


def parent_death_signal(sig: int) -> Callable[[], None]:
    """A function that, called in a (child) process, has the kernel send it `sig` when its parent dies.

    libc is resolved here, in the caller, so that the returned function is safe to run as a
    ``subprocess.Popen(preexec_fn=...)`` between fork and exec (no dynamic loading there). Linux only.
    """
    libc = ctypes.CDLL(None, use_errno=True)

    def arm() -> None:
        if libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")

    return arm


@contextlib.contextmanager
def hold_run_dir(run_dir: str | os.PathLike[str]) -> Iterator[None]:
    """Exclusive, non-blocking lock on `run_dir` (created if missing) while the block runs; KilnError if held."""
    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        deadline = time.monotonic() + LOCK_GRACE_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = lock_holder(fd)
                if time.monotonic() >= deadline or holder is not None and not _exiting(holder):
                    raise KilnError(f"another trainer is already building {path} (pid {holder or 'unknown'}); "
                                    f"wait for it or kill it") from None
                time.sleep(0.1)
            except OSError as exc:  # a file system without flock (some network mounts): run unguarded, say so
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
                    raise
                print(f"warning: {path}: cannot lock the run directory ({exc.strerror}); make sure no other "
                      f"trainer builds it", file=sys.stderr)
                break
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def _exiting(pid: int) -> bool:
    """`pid` is gone or dying (its main thread a zombie while the others are torn down)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def lock_holder(fd: int) -> int | None:
    """The pid holding a flock on `fd`'s file, from /proc/locks (Linux); None if unknown."""
    inode = os.fstat(fd).st_ino
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:  # "1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234567 0 EOF"
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode):
            with contextlib.suppress(ValueError):
                return int(fields[4])
    return None


def main(argv: list[str]) -> None:
    """``python -m trainer.lifeline -m <module> args...``: run `module` as __main__, dying with our parent."""
    if len(argv) < 2 or argv[0] != "-m":
        sys.exit("usage: python -m trainer.lifeline -m <module> [args...]")
    die_with_parent()
    if os.environ.get(PARENT_ENV, "").isdigit():
        os.environ[PARENT_ENV] = str(os.getpid())  # the module's children (torchrun's workers) watch us
    sys.argv = [argv[1], *argv[2:]]
    runpy.run_module(argv[1], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
