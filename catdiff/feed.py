"""The training batches of a run, in (seed, step) order, gathered ahead of the step that uses them.

Step s always trains on the rows drawn from stream ``batch`` of (seed, s) (catdiff.streams), whatever the
split is stored in, so a resumed run sees exactly the batches an uninterrupted one would. An
in-memory split lives on the device and is indexed there. A lazy (memory-mapped) split is
read by a background thread ``depth`` steps ahead: rows gathered and range-checked on the
host, pinned on CUDA, then copied with ``non_blocking=True`` when their step comes.
"""
from __future__ import annotations

import queue
import threading

import torch

from . import streams
from .task import LazyTokenData


def batch_indices(seed: int, step: int, n: int, batch_size: int) -> torch.Tensor:
    """The global batch of ``step``: i.i.d. row indices from stream ``batch`` of (seed, step)."""
    return torch.randint(n, (batch_size,), generator=streams.generator(seed, "batch", step))


class BatchFeed:
    """``get(step)`` -> (tokens, labels or None) of this rank's share, on the device."""

    def __init__(self, engine, data, start: int, stop: int, depth: int = 2):
        self.engine, self.data = engine, data
        self.pin = engine.device.type == "cuda"
        self.queue: queue.Queue | None = None
        if isinstance(data, LazyTokenData) and stop > start:
            self.queue = queue.Queue(maxsize=depth)
            self.halt = threading.Event()
            self.thread = threading.Thread(target=self._work, args=(start, stop), daemon=True, name="catdiff-feed")
            self.thread.start()

    def _share(self, step: int) -> torch.Tensor:
        cfg, eng = self.engine.cfg, self.engine
        return batch_indices(cfg.seed, step, len(self.data), cfg.batch_size)[eng.rank :: eng.world]

    def _work(self, start: int, stop: int) -> None:
        for step in range(start, stop):
            try:
                item = self.engine.splits.host_rows(self.data, self._share(step), "train")
                if self.pin:
                    item = tuple(None if t is None else t.pin_memory() for t in item)
            except BaseException as e:  # noqa: BLE001 - re-raised in the training thread
                item = e
            while not self.halt.is_set():
                try:
                    self.queue.put((step, item), timeout=0.1)
                    break
                except queue.Full:
                    continue
            if self.halt.is_set() or isinstance(item, BaseException):
                return

    def get(self, step: int):
        if self.queue is None:
            return self.engine.rows(self.data, self._share(step), "train")
        got, item = self.queue.get()
        if isinstance(item, BaseException):
            raise item
        assert got == step, f"batch feed out of order: got step {got}, expected {step}"
        x, labels = (None if t is None else t.to(self.engine.device, non_blocking=True) for t in item)
        return x, labels if self.engine.conditional else None

    def close(self) -> None:
        if self.queue is not None:
            self.halt.set()
            self.thread.join()
