"""One writer per run directory: an ``fcntl`` lock on ``DIR/.catdiff.lock``.

The kernel drops the lock when its holder dies (even by kill -9), so a lock left by a dead
process is simply taken over; the file records the holder's pid and host for the message a
second run gets. Readers (``catdiff sample`` / ``eval``) take no lock.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from .errors import UserError

LOCK_NAME = ".catdiff.lock"


class RunLock:
    """Re-entrant within one object: nested ``with lock:`` blocks hold it once."""

    def __init__(self, directory: Path):
        self.path = Path(directory) / LOCK_NAME
        self._fd: int | None = None
        self._depth = 0
        self._made_dir = False  # the directory did not exist: remove it again if the run wrote nothing

    def __enter__(self) -> "RunLock":
        if self._depth == 0:
            self._acquire()
        self._depth += 1
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
            if self._made_dir and [p.name for p in self.path.parent.iterdir()] == [LOCK_NAME]:
                self.path.unlink()  # e.g. bad data: leave no empty run directory behind
                self.path.parent.rmdir()

    def _acquire(self) -> None:
        try:
            self._made_dir = not self.path.parent.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"cannot use run directory {self.path.parent}: {e.strerror}; "
                            f"pass a writable --out directory") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(os.pread(fd, 4096, 0))
            os.close(fd)
            raise UserError(f"run directory {self.path.parent} is in use by another catdiff run ({holder}); "
                            f"wait for it to finish or stop it, or pass another --out") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd


def _describe(raw: bytes) -> str:
    try:
        info = json.loads(raw)
        return f"pid {info['pid']} on {info['host']} since {info['since']}: {info['command']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"
