"""Methods: a training objective together with its sampler and likelihood bound.

The engine owns data, the network, optimisation, EMAs, checkpoints and metrics; a method
owns what is specific to one kind of diffusion. Every method trains the same
:class:`catdiff.model.Denoiser` (codebook + backbone): continuous methods diffuse the
codebook embeddings, discrete-state methods use the codebook as the input embedding table
of (masked / corrupted) token ids. Methods arrive through the ``catdiff_methods`` hook (the
first-party ones in :mod:`catdiff.methods`, one module or package each, registered by
:mod:`catdiff.builtins` exactly as a plugin registers its own); the config key ``method``
picks one (default ``catdm``). This module is the interface alone.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from .settings import declared


class Method:
    """Interface every method implements (subclass it).

    Attributes:
      name            registry name
      description     one line for ``catdiff list`` (a string literal in the class body: it is read
                      from the source, without importing the method)
      continuous      True when tokens are embedded and diffused in R^D (the engine then
                      reports the embedding-collapse diagnostics with ``schedule``)
      uses_target_ema True when ``loss`` reads the fast EMA ``target`` (rate ``ema_cm``);
                      otherwise the engine does not maintain it
      samplers        names accepted by config key ``sampler`` (the first is the default)
      settings        the method's own config keys, a tuple of :class:`catdiff.settings.Setting`
                      (type, default, doc, allowed values, whether a resume may change it);
                      accepted when the run uses this method (``--set method=NAME --set key=...``)
                      and read as ``self.cfg.key``. catdiff 0.1's ``options`` (name -> default)
                      and ``mutable_options`` are still read (catdiff.settings.declared)
      backbone_options keyword arguments the engine passes to the backbone factory, e.g.
                      ``{"causal": True}`` (the ``ar`` method); a backbone that cannot honour
                      one fails with a TypeError naming it
    """

    name: str = ""
    description: str = ""
    continuous: bool = False
    uses_target_ema: bool = False
    samplers: tuple[str, ...] = ()
    settings: tuple = ()
    backbone_options: Mapping[str, Any] = {}
    cfg: Any = None

    def __init__(self, cfg):
        self.cfg = cfg

    def option(self, name: str) -> Any:
        """The resolved value of one of this method's settings (as ``self.cfg.name``)."""
        if self.cfg is not None and name in self.cfg.options:
            return self.cfg.options[name]
        return {s.name: s.default for s in declared(self)}[name]

    def state_dict(self) -> dict[str, Any]:
        """What the method learns besides the network (e.g. CATDM's time warp): saved with
        checkpoints and exports, restored by :meth:`load_state_dict`. A (nested) dict of tensors
        or plain values; an export stores tensors as lists, so accept both when loading."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""

    def loss(self, model, target, x: torch.Tensor, cond) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Scalar training loss and detached logs for a batch ``x`` [B, M]. ``model`` may be
        DDP-wrapped: run everything that needs gradients through ``model(...)`` once."""
        raise NotImplementedError

    def sample(self, model, n: int, seq_len: int, *, steps: int, sampler: str, final: str, cond, guidance: float,
               null_id: int | None, known, known_mask, generator: torch.Generator, device) -> torch.Tensor:
        """``n`` token sequences [n, seq_len]; infill when ``known``/``known_mask`` are given.
        The engine has already checked ``sampler`` against ``samplers``."""
        raise NotImplementedError

    def nll_bound(self, model, x: torch.Tensor, cond, t: torch.Tensor) -> dict[str, torch.Tensor]:
        """An upper bound on -log P(x) per sequence in nats (``"total"`` [B] plus named parts),
        one Monte-Carlo draw at the times ``t`` in [0, 1) (stratified by the engine)."""
        raise NotImplementedError(f"method {self.name!r} has no likelihood bound")

    @property
    def has_bound(self) -> bool:
        """Whether this method implements :meth:`nll_bound`."""
        return type(self).nll_bound is not Method.nll_bound

