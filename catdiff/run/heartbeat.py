"""Which DDP peer stopped answering: a heartbeat per rank in the process group's store.

Each rank's daemon thread adds 1 to ``catdiff/beat/<rank>`` every ``interval`` seconds and
notes when each peer's count last changed (on its own clock: no clocks are compared across
hosts). A peer that is alive beats even while it is busy (evaluating, writing a checkpoint);
one that is stopped (SIGSTOP, a frozen machine), killed or cut off does not. When a collective
times out after ``dist_timeout``, :meth:`Heartbeat.silent` names the ranks that went quiet.

A peer that is alive but hung (a deadlock, an endless loop, a read that never returns) still
beats; so each beat also publishes where its rank is (:meth:`Heartbeat.mark`: the training step
and its phase), and :meth:`Heartbeat.behind` names the peers that are still short of where
this rank waits.
"""
from __future__ import annotations

import threading
import time

SILENT_BEATS = 3  # a peer is silent after this many of its beats were missed
PHASES = ("batch", "forward", "backward", "optimizer step", "evaluation", "checkpoint")


class Heartbeat:
    def __init__(self, store, rank: int, world: int, interval: float):
        self.store, self.rank, self.interval = store, rank, interval
        now = time.monotonic()
        self._seen = {r: (-1, now) for r in range(world) if r != rank}  # rank -> (count, when it changed)
        self.position = 0  # this rank's step * len(PHASES) + phase, published with each beat
        self._published = 0
        self._where = {r: (0, now) for r in self._seen}  # rank -> (position, when it changed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="catdiff-heartbeat", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.store.add(f"catdiff/beat/{self.rank}", 1)
                position = self.position
                if position != self._published:  # the store adds: publish the difference
                    self.store.add(f"catdiff/at/{self.rank}", position - self._published)
                    self._published = position
                for r, (count, _) in self._seen.items():
                    now = self.store.add(f"catdiff/beat/{r}", 0)
                    if now != count:
                        self._seen[r] = (now, time.monotonic())
                    at = self.store.add(f"catdiff/at/{r}", 0)
                    if at != self._where[r][0]:
                        self._where[r] = (at, time.monotonic())
            except Exception:  # noqa: BLE001 - the store is gone (its host died): the peers are silent
                return
            self._stop.wait(self.interval)

    def mark(self, step: int, phase: str) -> None:
        """Where this rank is now (no I/O: the next beat publishes it)."""
        self.position = step * len(PHASES) + PHASES.index(phase)

    @staticmethod
    def describe(position: int) -> str:
        step, phase = divmod(position, len(PHASES))
        return f"step {step}'s {PHASES[phase]}"  # step: the steps done before it (Engine.step)

    def behind(self) -> dict[int, tuple[str, float]]:
        """Peers that still beat but were last short of this rank's position: rank -> (where,
        seconds there)."""
        now, silent = time.monotonic(), self.silent()
        return {r: (self.describe(at), now - t) for r, (at, t) in sorted(self._where.items())
                if at < self.position and r not in silent}

    def silent(self) -> dict[int, float]:
        """Peers that missed their last ``SILENT_BEATS`` beats: rank -> seconds since their last one."""
        now = time.monotonic()
        return {r: now - t for r, (_, t) in sorted(self._seen.items()) if now - t > SILENT_BEATS * self.interval}
