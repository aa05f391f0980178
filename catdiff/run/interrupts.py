"""Graceful stops: the first SIGINT / SIGTERM during training is recorded, so the loop can
finish its step, write a checkpoint and raise :class:`catdiff.api.errors.TrainingInterrupted`;
a second one raises :class:`catdiff.api.errors.Aborted` at once (the atomic checkpoint writer
keeps the previous file).

A signal that was ignored when training started (SIGINT under ``nohup`` or in a background
job of a script) stays ignored, as Python itself leaves it; the others (SIGTERM) still stop
training with a checkpoint. On exit every handler is put back as it was before."""
from __future__ import annotations

import contextlib
import signal
import threading

from ..api.errors import Aborted, Stopped

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class DeferredSignals:
    """``with DeferredSignals() as sig:`` ... ``if sig.received: ...`` (main thread only;
    elsewhere signals keep their handlers and ``received`` stays None)."""

    def __init__(self):
        self.received: int | None = None
        self._old: dict[int, object] = {}

    def __enter__(self) -> "DeferredSignals":
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                if signal.getsignal(s) is signal.SIG_IGN:  # ignored by whoever started us: keep it so
                    continue
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received = signum
            return
        raise Aborted(signum)

    def __exit__(self, *exc) -> None:
        for s, handler in self._old.items():
            # None: a handler installed outside Python, which cannot be put back; the default is closest
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        self._old = {}


@contextlib.contextmanager
def stop_on_sigterm(what: str):
    """While inside (main thread), SIGTERM raises :class:`catdiff.api.errors.Stopped` as SIGINT raises
    KeyboardInterrupt, so the caller's cleanup runs (the default action would end the process at
    once, leaving the run lock behind). An ignored SIGTERM stays ignored; the old handler is put back."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        yield
        return

    def stop(signum, frame):
        raise Stopped(signum, what)

    old = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if old is None else old)
