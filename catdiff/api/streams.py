"""Named random streams: every seed the core and the tasks draw from, in one place.

A stream is named and derived from the run's ``seed`` and, where it varies, the training
``step``, the DDP ``rank`` and the micro-batch ``micro``. The same arguments always give the
same seed, so a resumed run draws exactly what an uninterrupted one would.

The core's streams keep the derivations of earlier catdiff versions (checkpoints' stored
samples and likelihoods stay reproducible); any other name is hashed, so a task can take
streams of its own (``RunContext.generator("my-stream")``) that overlap none of these.
"""
from __future__ import annotations

import hashlib

import torch

# name -> seed of (seed, step, rank, micro), as catdiff has always derived them
STREAMS = {
    "batch": lambda s, step, rank, micro: s * 1_000_003 + step,            # rows of a step's global batch
    "train": lambda s, step, rank, micro: s * 7_919 + step * 104_729 + rank + micro * 1_000_033,  # loss noise
    "sample": lambda s, step, rank, micro: s + 12_345 + rank * 1_000_003,  # Engine.sample's default
    "likelihood": lambda s, step, rank, micro: s + 99,                      # t strata of Engine.likelihood
    "likelihood-noise": lambda s, step, rank, micro: s + 98,                # its noise (torch's global RNG)
    "guidance-sweep": lambda s, step, rank, micro: s + 777,                 # fashion-mnist-cond's sweep
    "rerank": lambda s, step, rank, micro: s * 1_000_003 + step,            # translate's rerank draws
}


def seed(base: int, name: str, step: int = 0, rank: int = 0, micro: int = 0) -> int:
    """The seed of stream ``name`` for (``base`` seed, step, rank, micro-batch)."""
    if name in STREAMS:
        return STREAMS[name](base, step, rank, micro)
    key = f"{name}/{base}/{step}/{rank}/{micro}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1  # 63 bits: a valid torch seed


def generator(base: int, name: str, step: int = 0, rank: int = 0, micro: int = 0,
              device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded from stream ``name``."""
    return torch.Generator(device).manual_seed(seed(base, name, step, rank, micro))


def seed_global(base: int, name: str, step: int = 0, rank: int = 0, micro: int = 0) -> None:
    """Seed torch's global RNG (every device) from stream ``name``: for code that draws from it
    (a method's loss and bound take no generator)."""
    torch.manual_seed(seed(base, name, step, rank, micro))
