"""Methods: a training objective together with its sampler and likelihood bound.

The engine owns data, optimisation, the sampling EMA, checkpoints and metrics; a method owns
what is specific to one kind of diffusion: the network it trains (:meth:`Method.build`, by
default the plain :class:`catdiff.nn.model.Denoiser` of codebook + backbone; continuous methods
diffuse the codebook embeddings, discrete-state methods use the codebook as the input
embedding table of masked / corrupted token ids), any copy of it the method keeps (CATDM's CM
teacher), its loss, sampler and likelihood bound. Methods arrive through the
``catdiff_methods`` hook (the first-party ones in :mod:`catdiff.methods`, one module or
package each, registered by :mod:`catdiff.builtins` exactly as a plugin registers its own);
the config key ``method`` picks one (default ``catdm``). This module is the interface alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .settings import declared

if TYPE_CHECKING:  # the interface imports no torch: a one-module plugin keeps `catdiff list` fast
    import torch
    from torch import nn


@dataclass(frozen=True)
class SampleRequest:
    """One :meth:`Method.sample` call: ``n`` token sequences of ``seq_len``.

      steps       sampling steps (``--steps`` / ``sample_steps``)
      sampler     one of the method's ``samplers`` (checked by the engine)
      final       how the last step reads tokens: ``argmax`` | ``sample``
      cond        class labels [n], a task's condition tensor, or None
      guidance    classifier-free guidance weight; ``null_id`` is the null class (None: no classes)
      known       infilling: tokens [n, seq_len] to keep where ``known_mask`` [n, seq_len] is set
      generator   the CPU ``torch.Generator`` every random draw must use (reproducible samples)
      device      where the tokens go
    """

    n: int
    seq_len: int
    steps: int
    sampler: str
    final: str = "argmax"
    cond: Any = None
    guidance: float = 0.0
    null_id: int | None = None
    known: Any = None
    known_mask: Any = None
    generator: Any = None
    device: Any = "cpu"


class Method:
    """Interface every method implements (subclass it).

    Attributes:
      name            registry name
      description     one line for ``catdiff list`` (a string literal in the class body: it is read
                      from the source, without importing the method)
      samplers        names accepted by config key ``sampler`` (the first is the default)
      settings        the method's own config keys, a tuple of :class:`catdiff.api.settings.Setting`
                      (type, default, doc, allowed values, whether a resume may change it);
                      accepted when the run uses this method (``--set method=NAME --set key=...``)
                      and read as ``self.cfg.key``. catdiff 0.1's ``options`` (name -> default)
                      and ``mutable_options`` are still read, deprecated (catdiff.api.settings.declared)
      backbone_options keyword arguments the engine passes to the backbone factory, e.g.
                      ``{"causal": True}`` (the ``ar`` method); a backbone that cannot honour
                      one fails with a TypeError naming it
      v1_auto         setting name -> predicate: the sentinel numbers by which a catdiff 0.1
                      (format 1) config spelled "choose for me" for that setting; they load as
                      None (catdiff.run.config.migrate). Only methods that 0.1 shipped need it
    """

    name: str = ""
    description: str = ""
    samplers: tuple[str, ...] = ()
    settings: tuple = ()
    v1_auto: Mapping[str, Callable[[Any], bool]] = {}
    backbone_options: Mapping[str, Any] = {}
    cfg: Any = None

    def __init__(self, cfg):
        self.cfg = cfg

    def option(self, name: str) -> Any:
        """The resolved value of one of this method's settings (as ``self.cfg.name``)."""
        if self.cfg is not None and name in self.cfg.options:
            return self.cfg.options[name]
        return {s.name: s.default for s in declared(self)}[name]

    def build(self, backbone: nn.Module, spec) -> nn.Module:
        """The network this method trains, around the backbone the engine built for the task's
        :class:`catdiff.api.task.DataSpec` ``spec``: by default the plain Denoiser of a codebook of the
        run's config. It must have the Denoiser's ``codebook``, ``net``, ``forward`` and ``logits``
        (the task initialises ``codebook``, e.g. from a VQGAN; the engine compiles ``net``)."""
        from ..nn.model import Codebook, Denoiser

        return Denoiser(Codebook.of(self.cfg, spec.vocab_size), backbone)

    def start(self, model: nn.Module) -> None:
        """Called once with the built network on its device, its codebook initialised, before
        any checkpoint is loaded: a method that keeps a copy of it (a teacher EMA) makes it here
        and lists it in :meth:`networks`."""

    def networks(self) -> dict[str, nn.Module]:
        """The networks this method keeps besides the trained one, by name: saved in checkpoints
        (not exports) and restored on resume. Default: none."""
        return {}

    def after_step(self, model: nn.Module) -> None:
        """Called after every optimizer step with the (unwrapped) trained network, e.g. to move
        a teacher EMA."""

    def collapse_report(self, model: nn.Module, x: torch.Tensor, cond) -> dict[str, Any] | None:
        """Embedding-collapse diagnostics (catdiff.nn.diagnostics.collapse_report) of ``model`` on
        test rows ``x``, for a method that diffuses embeddings; None (the default): none."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """What the method learns besides the network (e.g. CATDM's time warp): saved with
        checkpoints and exports, restored by :meth:`load_state_dict`. A (nested) dict of tensors
        or plain values; an export stores tensors as lists, so accept both when loading."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""

    def loss(self, model, x: torch.Tensor, cond) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Scalar training loss and detached logs for a batch ``x`` [B, M]. ``model`` may be
        DDP-wrapped: run everything that needs gradients through ``model(...)`` once, and reach
        its attributes through ``catdiff.methods.shared.unwrap(model)``. Random draws use torch's
        global generator, which the engine seeds per step and rank."""
        raise NotImplementedError

    def sample(self, model, req: SampleRequest) -> torch.Tensor:
        """``req.n`` token sequences [n, seq_len] in 0..K-1 from ``model`` (the sampling EMA,
        unwrapped, in eval mode); copy ``req.known`` where ``req.known_mask`` is set."""
        raise NotImplementedError

    def nll_bound(self, model, x: torch.Tensor, cond, t: torch.Tensor) -> dict[str, torch.Tensor]:
        """An upper bound on -log P(x) per sequence in nats (``"total"`` [B] plus named parts),
        one Monte-Carlo draw at the times ``t`` in [0, 1) (stratified by the engine). Other
        random draws use torch's global generator, which the engine seeds."""
        raise NotImplementedError(f"method {self.name!r} has no likelihood bound")

    @property
    def has_bound(self) -> bool:
        """Whether this method implements :meth:`nll_bound`."""
        return type(self).nll_bound is not Method.nll_bound

