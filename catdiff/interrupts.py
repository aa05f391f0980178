"""Graceful stops: the first SIGINT / SIGTERM during training is recorded, so the loop can
finish its step, write a checkpoint and raise :class:`catdiff.errors.TrainingInterrupted`;
a second one raises :class:`catdiff.errors.Aborted` at once (the atomic checkpoint writer
keeps the previous file)."""
from __future__ import annotations

import signal
import threading

from .errors import Aborted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class DeferredSignals:
    """``with DeferredSignals() as sig:`` ... ``if sig.received: ...`` (main thread only;
    elsewhere signals keep their handlers and ``received`` stays None)."""

    def __init__(self):
        self.received: int | None = None
        self._old: dict[int, object] = {}

    def __enter__(self) -> "DeferredSignals":
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received = signum
            return
        raise Aborted(signum)

    def __exit__(self, *exc) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
        self._old = {}
