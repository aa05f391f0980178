"""This process's place in a ``torchrun`` job, and the process group while it trains.

``WORLD_SIZE`` / ``RANK`` come from the environment (1 / 0 without torchrun). The group
exists while ``Engine.fit`` runs: :meth:`ProcessGroup.training` creates it (unless the caller
made one), beats the heartbeat, and tears it down when training ends, so sampling and
evaluation afterwards run per process (rank 0 alone under the CLI).
"""
from __future__ import annotations

import contextlib
import datetime
import functools
import os
import time

import torch
import torch.distributed as dist

from ..api.errors import UserError
from .heartbeat import Heartbeat


@functools.lru_cache(maxsize=None)
def free_cores() -> int:
    """The CPU threads a process of this run should use when ``threads=0`` (auto): the cores it
    may run on, less those the rest of the machine keeps busy (the 1-minute load average,
    rounded), shared among the ``LOCAL_WORLD_SIZE`` ranks torchrun started on this machine; at
    least 1. Torch's own default takes every core, which on a busy machine oversubscribes it:
    on 2 cores at load 3, 100 digits steps took 8x the wall time and 7x the CPU time of one
    thread (benchmarks/threads.py; docs/notes.md, "CPU threads on a busy machine"). Decided once
    per process, so every Engine of a process computes alike."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        busy = round(os.getloadavg()[0])
    except OSError:
        busy = 0
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    return max(1, (cores - busy) // local)


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else CPU. ``auto`` and a bare ``cuda`` take the GPU of
    ``LOCAL_RANK`` (torchrun's one GPU per process)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name!r} requested but CUDA is not available; use device=cpu or auto")
    if name == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if name.startswith("cuda"):
        if torch.device(name).index >= torch.cuda.device_count():
            raise UserError(f"device={name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("device=mps requested but MPS is not available; use device=cpu or auto")
    return torch.device(name)


class ProcessGroup:
    def __init__(self, device: torch.device, timeout: float):
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.rank = int(os.environ.get("RANK", 0))
        self.device, self.timeout = device, timeout
        self.beat: Heartbeat | None = None  # the peers' heartbeats while the group trains
        if self.world > 1 and device.type == "cuda":
            torch.cuda.set_device(device)

    @property
    def active(self) -> bool:
        return self.world > 1 and dist.is_initialized()

    @contextlib.contextmanager
    def training(self):
        """The group for one ``fit``: created (gloo on CPU, nccl on CUDA) unless it exists, with
        heartbeats every timeout / 10 seconds (at most 5) so a silent peer is told from a busy
        one; torn down after training ends normally if this object created it."""
        if self.world == 1:
            yield
            return
        created = not dist.is_initialized()
        if created:
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo",
                                    timeout=datetime.timedelta(seconds=self.timeout))
        with Heartbeat(self.store, self.rank, self.world, min(5.0, self.timeout / 10)) as self.beat:
            try:
                yield
            finally:
                self.beat = None
        if created:
            self._leave()

    def _leave(self) -> None:
        """A barrier, then the group is destroyed, so no rank tears down gloo while a peer still
        talks to it (which aborts with "terminate called without an active exception"); and no
        rank exits before every rank has torn its group down (a peer that exits first closes its
        sockets under one still tearing down, which gloo also aborts on), nor rank 0 before every
        rank has seen that (rank 0 may host the store they read)."""
        store = self.store
        dist.barrier()
        dist.destroy_process_group()
        deadline = time.monotonic() + self.timeout
        for key in ("catdiff/left", "catdiff/saw-all-left"):
            store.add(key, 1)
            # the store's host (rank 0 without torchrun) waits until every peer is done with it
            if key == "catdiff/left" or self.rank == 0:
                while store.add(key, 0) < self.world and time.monotonic() < deadline:
                    time.sleep(0.01)

    @property
    def store(self):
        return dist.distributed_c10d._get_default_store()

    def agree(self, signum: int) -> int:
        """The largest ``signum`` over the ranks (the signal that stops them all at one step)."""
        if not self.active:
            return signum
        flag = torch.tensor([signum], device=self.device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's ``tensor`` (same shape on each), concatenated in rank order, on the CPU."""
        if not self.active:
            return tensor.cpu()
        tensor = tensor.to(self.device if dist.get_backend() == "nccl" else "cpu").contiguous()
        parts = [torch.empty_like(tensor) for _ in range(self.world)]
        dist.all_gather(parts, tensor)
        return torch.cat([p.cpu() for p in parts])

    def wait_for(self, key: str, lost) -> None:
        """Wait (peers of rank 0) until rank 0 :meth:`announce`s ``key``, as long as rank 0 beats;
        ``lost(reason)`` builds the error raised when it goes silent."""
        while not self.store.check([key]):
            if self.beat is not None and 0 in self.beat.silent():
                raise UserError(lost("evaluating"))
            time.sleep(0.2)

    def mark(self, step: int, phase: str) -> None:
        """Where this rank's training is (catdiff.run.heartbeat.PHASES), for naming a hung peer."""
        if self.beat is not None:
            self.beat.mark(step, phase)

    def announce(self, key: str) -> None:
        if self.active:
            self.store.set(key, "1")

    def lost_message(self, error: str, step: int, last) -> str:
        """The message of a rank whose peers did not answer: which went silent, what was kept."""
        silent = self.beat.silent() if self.beat is not None else {}
        behind = self.beat.behind() if self.beat is not None else {}
        if silent:
            who = ", ".join(f"rank {r} (silent for {s:.0f}s)" for r, s in silent.items())
            what = f"{who} stopped answering (stopped, killed or cut off) at step {step}; check that process"
        elif behind:
            who = ", ".join(f"rank {r} is alive but has been in {where} for {s:.0f}s" for r, (where, s) in behind.items())
            what = (f"{who}, while this rank waits in {self.beat.describe(self.beat.position)} (hung: a deadlock, an "
                    f"endless loop or a read that never returns); check that process")
        else:
            what = (f"the other processes did not answer within dist_timeout={self.timeout:g}s at step {step} "
                    f"(busy or hung: {error})")
        kept = f"The last checkpoint, {last}, is intact" if last is not None and last.exists() else \
            "No checkpoint was written yet"
        return f"rank {self.rank}: {what}. {kept}; rerun the same command to resume"
