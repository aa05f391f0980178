"""One writer per run directory: an ``fcntl`` lock on ``DIR/.catdiff.lock``.

The kernel drops the lock when its holder dies (even by kill -9), so a lock left by a dead
process is simply taken over; the file records the holder's pid and host for the message a
second run gets. A run that ends (done, failed or interrupted) removes the file: it unlinks
it before unlocking, and a run that locked a file someone unlinked meanwhile tries again, so
two runs never hold locks on two different files. Readers (``catdiff sample`` / ``eval``)
take no lock.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from ..api.errors import UserError

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
            self.path.unlink(missing_ok=True)  # before unlocking: see the module docstring
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
            if self._made_dir and not any(self.path.parent.iterdir()):
                self.path.parent.rmdir()  # e.g. bad data: leave no empty run directory behind

    def _acquire(self) -> None:
        self._made_dir = not self.path.parent.exists()
        while not self._try_acquire():  # the file was removed by its last holder after we opened it
            pass

    def _try_acquire(self) -> bool:
        try:
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
        try:
            current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if not current:
            os.close(fd)
            return False
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join(sys.argv)}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        except OSError as e:  # a full disk: no empty lock file left behind, and the directory said
            self.path.unlink(missing_ok=True)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise OSError(e.errno, e.strerror, str(self.path)) from None
        self._fd = fd
        return True


def _describe(raw: bytes) -> str:
    try:
        info = json.loads(raw)
        return f"pid {info['pid']} on {info['host']} since {info['since']}: {info['command']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"
