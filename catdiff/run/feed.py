"""The training batches of a run, in (seed, step) order, gathered ahead of the step that uses them.

Step s always trains on the rows drawn from stream ``batch`` of (seed, s) (catdiff.api.streams), whatever the
split is stored in, so a resumed run sees exactly the batches an uninterrupted one would. An
in-memory split lives on the device and is indexed there. A lazy (memory-mapped) split is
read by a background thread ``depth`` steps ahead: rows gathered and range-checked on the
host, pinned on CUDA, then copied with ``non_blocking=True`` when their step comes.
"""
from __future__ import annotations

import queue
import threading

import torch

from ..api import streams
from ..api.task import LazyTokenData


def batch_indices(seed: int, step: int, n: int, batch_size: int) -> torch.Tensor:
    """The global batch of ``step``: i.i.d. row indices from stream ``batch`` of (seed, step)."""
    return torch.randint(n, (batch_size,), generator=streams.generator(seed, "batch", step))


class BatchFeed:
    """``get(step)`` -> (tokens, labels or None) of this rank's share of the global batch
    (rows ``rank::world`` of ``batch_size`` drawn with ``seed``) of split ``data``, on the
    splits' device (catdiff.run.splits.Splits: where rows are gathered and checked)."""

    def __init__(self, splits, data, seed: int, batch_size: int, rank: int, world: int, start: int, stop: int,
                 depth: int = 2):
        self.splits, self.data = splits, data
        self.seed, self.batch_size, self.rank, self.world = seed, batch_size, rank, world
        self.pin = splits.device.type == "cuda"
        self.queue: queue.Queue | None = None
        if isinstance(data, LazyTokenData) and stop > start:
            self.queue = queue.Queue(maxsize=depth)
            self.halt = threading.Event()
            self.thread = threading.Thread(target=self._work, args=(start, stop), daemon=True, name="catdiff-feed")
            self.thread.start()

    def _share(self, step: int) -> torch.Tensor:
        return batch_indices(self.seed, step, len(self.data), self.batch_size)[self.rank :: self.world]

    def _work(self, start: int, stop: int) -> None:
        for step in range(start, stop):
            try:
                item = self.splits.host_rows(self.data, self._share(step), "train")
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
            return self.splits.rows(self.data, self._share(step), "train")
        got, item = self.queue.get()
        if isinstance(item, BaseException):
            raise item
        assert got == step, f"batch feed out of order: got step {got}, expected {step}"
        x, labels = (None if t is None else t.to(self.splits.device, non_blocking=True) for t in item)
        return x, labels  # host_rows dropped the labels the network does not read

    def close(self) -> None:
        if self.queue is not None:
            self.halt.set()
            self.thread.join()
