"""RunContext: what a task may use of the engine, in one place.

The engine hands one to ``Task.generate(ctx, n)`` when it evaluates (``Engine.evaluate``, and
every ``eval_every`` steps during training). Everything a task needs to sample, score
likelihoods, draw reproducible randomness and gather across ranks is here; the engine's own
attributes (optimizer, EMA copies, process group) are not part of the interface.

    ctx.sample(n, labels=..., guidance=..., known=..., known_mask=..., seed=...)   tokens [n, M] on the CPU
    ctx.default_labels(n)          the conditions Engine.sample uses when given none
    ctx.data(split)                a split of the task, checked (TokenData on the device, or lazy)
    ctx.likelihood(split, ...)     the bound per token on a split (Engine.likelihood)
    ctx.nll_bound(x, cond, t, seed=)  the bound of each row at times t (needs ctx.has_bound)
    ctx.network, ctx.autocast      the sampling network (slow EMA), for a task's own heads
    ctx.seed_of(name, step=), ctx.generator(name, step=)   named random streams (catdiff.api.streams)
    ctx.world, ctx.rank, ctx.all_gather(tensor)   the ranks sharing this evaluation
    ctx.out                        the directory for the task's own files (None: write none)
    ctx.seed, ctx.device, ctx.has_bound
"""
from __future__ import annotations

from pathlib import Path

import torch

from . import streams


class RunContext:
    def __init__(self, engine, out: str | Path | None = None, shared: bool = False):
        """``shared``: every rank of the engine's process group evaluates together (else this
        process evaluates alone: world 1, rank 0)."""
        self._engine = engine
        self.out = Path(out) if out is not None else None
        self.world, self.rank = (engine.group.world, engine.group.rank) if shared else (1, 0)

    # ------------------------------------------------------------- facts
    @property
    def seed(self) -> int:
        return self._engine.cfg.seed

    @property
    def device(self) -> torch.device:
        return self._engine.device

    @property
    def has_bound(self) -> bool:
        """Whether the method has a likelihood bound (``likelihood`` / ``nll_bound``)."""
        return self._engine.method.has_bound

    # ------------------------------------------------------------- data and sampling
    def data(self, split: str):
        return self._engine.data(split)

    def default_labels(self, n: int) -> torch.Tensor | None:
        return self._engine.default_labels(n)

    def sample(self, n: int, **kwargs) -> torch.Tensor:
        """``Engine.sample``: ``n`` sequences from the slow EMA model, tokens [n, M] on the CPU."""
        return self._engine.sample(n, **kwargs)

    # ------------------------------------------------------------- likelihood
    def likelihood(self, split: str = "test", **kwargs) -> dict[str, float]:
        """``Engine.likelihood``: the bound per token (nats, bits, standard errors) on ``split``."""
        return self._engine.likelihood(split, **kwargs)

    @torch.no_grad()
    def nll_bound(self, x: torch.Tensor, cond, t: torch.Tensor, seed: int | None = None) -> dict[str, torch.Tensor]:
        """The method's bound of rows ``x`` [B, M] (conditions ``cond``) at times ``t`` [B], per row
        in nats (``"total"`` and its terms), on the device; ``seed`` fixes its noise (the global
        RNG is restored afterwards), e.g. common random numbers across candidates."""
        eng, dev = self._engine, self._engine.device
        cond = None if cond is None else cond.to(dev)
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            with eng.autocast:
                return eng.method.nll_bound(eng.ema_eval, x.to(dev), cond, t.to(dev))

    @property
    def network(self) -> torch.nn.Module:
        """The sampling network (the slow EMA's backbone), e.g. for a length head of the task's
        backbone; call it under ``ctx.autocast`` and never train it."""
        return self._engine.ema_eval.net

    @property
    def autocast(self):
        """The engine's mixed-precision context (``with ctx.autocast:``; a no-op in fp32)."""
        return self._engine.autocast

    # ------------------------------------------------------------- randomness and ranks
    def seed_of(self, name: str, step: int = 0, micro: int = 0) -> int:
        """The seed of stream ``name`` for this rank (catdiff.api.streams)."""
        return streams.seed(self.seed, name, step, self.rank, micro)

    def generator(self, name: str, step: int = 0, micro: int = 0) -> torch.Generator:
        """A CPU generator of stream ``name`` for this rank."""
        return streams.generator(self.seed, name, step, self.rank, micro)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's ``tensor`` (same shape on each), concatenated in rank order, on the CPU."""
        return self._engine.group.all_gather(tensor) if self.world > 1 else tensor.cpu()
