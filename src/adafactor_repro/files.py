"""Files every part of the project writes or reads the same way: atomic writes, a run's summary.json,
stale temporary files. Imports nothing from the package.

Atomic write: the bytes go to a temporary file beside the target (`.<name>.<random>.tmp`), are fsynced,
then renamed over it, so a reader - or a crash - sees the old file or the new one, never half of one.
A full disk is reported as `DiskFullError` naming the file; the previous version stays intact.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SUMMARY = "summary.json"
TMP_SUFFIX = ".tmp"
_umask = os.umask(0)
os.umask(_umask)
FILE_MODE = 0o666 & ~_umask  # what open() would give; mkstemp creates 0600


class DirectoryLocked(RuntimeError):
    """Another process holds the directory's lock; the message names it."""


class DiskFullError(OSError):
    """No space (or quota) left while writing a file; the message names it and the fix."""


def _is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_message(path: str | Path) -> str:
    return (f"{path}: no space left on the device; free space there (or point run_dir / data.root at "
            "another disk) and rerun - the files written before are intact")


def atomic_write(path: str | Path, write, binary: bool = False) -> None:
    """Write `path` through `write(file)` into a temporary file beside it, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if _is_disk_full(e) or _is_disk_full(e.__context__):
            raise DiskFullError(errno.ENOSPC, disk_full_message(path)) from None
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path, default: Any = None, *, strict: bool = False) -> Any:
    """The JSON content of `path`; `default` when it is missing (or, unless `strict`, unreadable - a file
    this project writes atomically is only unreadable when someone edited it)."""
    path = Path(path)
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        if strict:
            raise ValueError(f"{path}: not valid JSON ({e}); delete it or rerun the run that writes it") from None
        return default


def read_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """A run directory's summary.json (None when it has none or it is unreadable)."""
    s = read_json(Path(run_dir) / SUMMARY)
    return s if isinstance(s, dict) else None


def run_status(run_dir: str | Path) -> str:
    """missing | running (interrupted or in progress) | completed | diverged | failed (an error stopped it;
    its summary names the error and the update reached, and rerunning resumes from the last checkpoint)."""
    p = Path(run_dir) / SUMMARY
    if not p.exists():
        return "missing"
    return (read_summary(run_dir) or {}).get("status", "running")


def sweep_stale_temps(directory: str | Path, older_than_s: float = 0.0) -> list[Path]:
    """Delete the temporary files a killed writer left in `directory` (`.<name>.*.tmp`); returns them.
    Call it while holding the directory's lock, so no live writer owns one."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    now, gone = time.time(), []
    for p in directory.glob(f".*{TMP_SUFFIX}"):
        try:
            if p.is_file() and now - p.stat().st_mtime >= older_than_s:
                p.unlink()
                gone.append(p)
        except FileNotFoundError:
            pass
    return gone


class DirLock:
    """An exclusive lock on a directory for as long as a process works in it (`<dir>/.lock`, flock: the
    kernel drops it when the process dies, so a killed run never leaves a stale lock). The file says who
    holds it, so the process turned away can name the holder."""

    NAME = ".lock"

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._fd: int | None = None

    def acquire(self) -> DirLock:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / self.NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise DirectoryLocked(f"{self.directory} is in use by {holder}; wait for it to finish or stop it, "
                                  "or use another run_dir") from None
        note = (f"pid {os.getpid()} on {socket.gethostname()} since {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%S} "
                f"UTC ({' '.join(sys.argv) or 'python'})")
        os.ftruncate(fd, 0)
        os.pwrite(fd, note.encode() + b"\n", 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
