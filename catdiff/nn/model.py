"""The denoiser: a learnable codebook (phi) and a backbone network (theta)."""
from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from torch import nn


def predicted_embedding(logits: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Paper eq. 2: EMB_hat_i = sum_k P(x_i = k | z_t; t) e_k."""
    return torch.softmax(logits, -1) @ codebook


class DenoiserOutput(NamedTuple):
    """What :meth:`Denoiser.forward` returns."""

    logits: torch.Tensor                # [B, M, K] (float32 where a subclass adds fp32 terms)
    z: torch.Tensor                     # [B, M, D] the network input: noisy or plain embeddings
    target_emb: torch.Tensor | None     # [B, M, D] EMB_phi(targets) when targets are given
    codebook: torch.Tensor              # [K, D] the data rows (paper eq. 2's e_k)
    aux: torch.Tensor | None            # [B] the backbone's own loss, when it has one


class Codebook(nn.Module):
    """Rows 0..K-1 embed data tokens; row K is the learned [mask] (random dropping), row
    K+1 the [null] token (padding of variable-length sequences).

    Initialisation: the paper writes N(0, D^{-1/2}). We read the second argument as the
    *variance*, as the notation N(mean, variance) says: ``std = D ** -0.25``, so
    E||e_k||^2 = sqrt(D). The other reading (std = D^-1/2, E||e_k||^2 = 1) starts the
    embeddings 4x smaller at D = 256 and trained worse on digits (docs/method.md, "Choices
    where the paper is silent").
    ``init_std`` (config ``embed_init_std``; None = the above) overrides it.
    A subclass may change how the rows are used by overriding :meth:`table`.
    """

    def __init__(self, vocab_size: int, dim: int, init_std: float | None = None, fixed: bool = False):
        super().__init__()
        self.vocab_size = vocab_size
        self.mask_id = vocab_size
        self.null_id = vocab_size + 1
        std = dim**-0.25 if init_std is None else init_std
        self.weight = nn.Parameter(torch.randn(vocab_size + 2, dim) * std, requires_grad=not fixed)

    @classmethod
    def of(cls, cfg, vocab_size: int, **kwargs) -> "Codebook":
        """The codebook of a run's config (``embed_dim``, ``embed_init_std``, ``fixed_codebook``)."""
        return cls(vocab_size, cfg.embed_dim, cfg.embed_init_std, fixed=cfg.fixed_codebook, **kwargs)

    def table(self) -> torch.Tensor:
        """[K + 2, D]: the rows as the model uses them."""
        return self.weight

    @property
    def data(self) -> torch.Tensor:
        """[K, D]: the rows that posteriors average over (paper eq. 2)."""
        return self.table()[: self.vocab_size]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(tokens, self.table())


class Denoiser(nn.Module):
    """f_theta(z_t; t[, y]) -> logits, plus the codebook phi that defines z_t: the network every
    method trains unless its ``Method.build`` returns a subclass of its own (e.g.
    catdiff.methods.catdm.network).

    ``forward`` does everything that needs gradients in one call (embedding lookup, noising,
    network), so DistributedDataParallel sees every parameter use inside its forward.
    """

    def __init__(self, codebook: Codebook, net: nn.Module):
        super().__init__()
        self.codebook = codebook
        self.net = net

    def forward(self, tokens_in, alpha=None, sigma=None, noise=None, t=None, cond=None, targets=None,
                prev=None) -> DenoiserOutput:
        """z = alpha * EMB(tokens_in) + sigma * noise; without ``alpha`` z = EMB(tokens_in), the
        embed-only call of discrete-state methods: ``model(x_t, t=t, cond=cond, targets=x)``.
        ``prev`` is passed on to :meth:`logits`.

        ``aux`` is the backbone's own per-sequence loss [B] (e.g. target-length prediction)
        when the backbone defines ``aux_loss(cond, targets)`` and ``targets`` are given, else
        None; every method adds its mean to the training loss.
        """
        z = self.codebook(tokens_in)
        if alpha is not None:
            z = alpha[:, None, None] * z + sigma[:, None, None] * noise
        logits = self.logits(z, t, cond, prev, keep=tokens_in != self.codebook.mask_id)
        emb_targets = aux = None
        if targets is not None:
            emb_targets = self.codebook(targets)
            if hasattr(self.net, "aux_loss"):
                aux = self.net.aux_loss(cond, targets)
        return DenoiserOutput(logits, z, emb_targets, self.codebook.data, aux)

    def logits(self, z, t, cond=None, prev=None, keep=None):
        """The network's logits [B, M, K]. ``prev`` (a previous estimate of the clean embeddings)
        and ``keep`` (positions whose input is not [mask]) are read by subclasses only."""
        return self.net(z, t, cond)

    def posterior_logits(self, z, t, cond=None):
        """Logits of P(x~ | z_t; t) as a function of z_t alone (a subclass may take several passes)."""
        return self.logits(z, t, cond)


def ema_copy(model: nn.Module) -> nn.Module:
    ema = copy.deepcopy(model).eval()
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, rate: float) -> None:
    """theta_bar <- rate * theta_bar + (1 - rate) * theta (stop-gradient), for every parameter."""
    ema_params = list(ema.parameters())
    params = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_params, params, 1.0 - rate)
