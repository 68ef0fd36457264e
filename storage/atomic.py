"""Atomic file writes: write beside the target, fsync, then rename into place.

A reader (or a resumed run) therefore sees either the old file or the complete
new one, never a prefix. A full disk becomes a one-line `KilnError` naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from kiln.errors import KilnError


def disk_error(path: str | os.PathLike, exc: OSError) -> KilnError:
    """Turn an OSError during a write into the one-line error users should see."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return KilnError(f"{path}: disk full while writing; free space or point KILN_HOME at a larger disk")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return KilnError(f"{path}: not writable ({exc.strerror}); fix permissions or choose another KILN_HOME")
    return KilnError(f"{path}: write failed: {exc}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is fsynced and renamed onto `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise disk_error(target, exc) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))
