"""The exceptions that say "the user asked for something wrong", as opposed to a bug.

The CLI prints a :class:`UserError` as one line ``catdiff: error: ...`` and exits 2; any
other exception is a bug (in catdiff or in a plugin) and is shown with its traceback.
Plugins raise :class:`UserError` (or an ``OSError`` naming the file) for a mistake of the
user: missing or malformed data, a bad option value, a file that does not fit.
"""
from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path


class UserError(ValueError):
    """A mistake in the user's input; the message says what is wrong and what to provide.
    A ValueError, so code that catches ValueError for bad values keeps working."""


class UnknownName(UserError, KeyError):
    """A task, method, backbone, ... name that no plugin registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT / SIGTERM stopped training after a step; ``checkpoint`` holds that step (or None
    without an output directory). A KeyboardInterrupt, so ``except Exception`` lets it pass."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        where = f"; checkpoint {checkpoint}; rerun the same command to resume" if checkpoint else ""
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}{where}")


class Stopped(KeyboardInterrupt):
    """SIGTERM outside training (evaluation): stop at once; the files written before are complete."""

    def __init__(self, signum: int, what: str):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name} during {what}; the checkpoint and the files "
                         f"written before it are complete (`catdiff eval` evaluates the checkpoint again)")


class Aborted(KeyboardInterrupt):
    """A second SIGINT / SIGTERM: stop at once (the last complete checkpoint is kept)."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"aborted by a second {signal.Signals(signum).name}; the last complete checkpoint is kept")


BOM = "\ufeff"


def read_text(path: str | Path, what: str = "file") -> str:
    """``path`` as UTF-8 text, a leading byte-order mark removed (editors on Windows write one;
    it is not part of the text). A file that is not UTF-8, or holds NUL bytes (a binary file,
    or UTF-16 text), is a UserError naming the file and the byte offset."""
    path = Path(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {path} is not UTF-8 text: byte {e.start} is {data[e.start:e.start + 1]!r} "
                        f"({e.reason}); convert it to UTF-8 (e.g. iconv -t utf-8)") from None
    nul = data.find(b"\0")
    if nul >= 0:
        raise UserError(f"{what} {path} is not text: byte {nul} is NUL (a binary file, or UTF-16 text); "
                        f"give a UTF-8 text file (convert UTF-16 with iconv -f utf-16 -t utf-8)")
    return text[1:] if text.startswith(BOM) else text


def check_writable(directory: str | Path, what: str, flag: str = "--out") -> None:
    """Fail before the work, not after it, when ``what`` cannot be written into ``directory``
    (made later if missing, given as ``flag``): its nearest existing ancestor must be a writable
    directory."""
    directory = Path(directory)
    base = directory.absolute()
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise UserError(f"cannot write {what} into {directory}: {base} is a file, not a directory; "
                        f"pass another {flag}")
    if not os.access(base, os.W_OK | os.X_OK):  # also false on a read-only file system, even for root
        raise UserError(f"cannot write {what} into {directory}: {base} is not writable; "
                        f"pass a writable {flag} directory")


@contextlib.contextmanager
def naming(path: str | Path):
    """An OSError raised inside without a file name (a full disk on ``write()`` names none) is
    raised again naming ``path``, so the one-line error says where the write failed."""
    try:
        yield
    except OSError as e:
        if e.filename is not None or e.errno is None:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from e
