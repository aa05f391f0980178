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

    logits: torch.Tensor                # [B, M, K] (float32 with token evidence)
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

    ``norm`` > 0 (CATDM's ``embed_norm``; CDCD and Plaid normalise their embeddings): every row
    is used at that L2 norm, ``norm * w / ||w||``, so the rows cannot grow or shrink and the
    schedule's SNR means what it says; the parameters stay free (their direction is learned).
    """

    def __init__(self, vocab_size: int, dim: int, init_std: float | None = None, fixed: bool = False,
                 norm: float = 0.0):
        super().__init__()
        self.vocab_size = vocab_size
        self.mask_id = vocab_size
        self.null_id = vocab_size + 1
        self.norm = float(norm)
        std = dim**-0.25 if init_std is None else init_std
        self.weight = nn.Parameter(torch.randn(vocab_size + 2, dim) * std, requires_grad=not fixed)

    def table(self) -> torch.Tensor:
        """[K + 2, D]: the rows as the model uses them (at the fixed norm when one is set)."""
        if not self.norm:
            return self.weight
        return nn.functional.normalize(self.weight, dim=-1) * self.norm

    @property
    def data(self) -> torch.Tensor:
        """[K, D]: the rows that posteriors average over (paper eq. 2)."""
        return self.table()[: self.vocab_size]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(tokens, self.table())


class Denoiser(nn.Module):
    """f_theta(z_t; t[, y]) -> logits, plus the codebook phi that defines z_t.

    ``forward`` does everything that needs gradients in one call (embedding lookup, noising,
    network), so DistributedDataParallel sees every parameter use inside its forward.

    Self-conditioning (``self_cond``; Chen et al. 2022 "Analog Bits", Strudel et al. 2022
    "SED"; not part of the CATDM paper, off by default): the network also reads a previous
    estimate ``prev`` = EMB_hat [B, M, D] of the clean embeddings, added to its input through a
    zero-initialised D x D map, so every backbone takes it unchanged and training starts as
    without it. ``prev=None`` means no estimate (zeros). :meth:`posterior_logits` is the
    self-conditioned denoiser of z alone: a first pass without an estimate, then a second
    reading it (a deterministic function of z_t, so the likelihood bound stays a bound).

    Token evidence (``schedule`` given: CATDM's ``evidence``, on by default; not part of the
    CATDM paper): the logits become f_theta(z_t; t) + log N(z_t,i; alpha_t e_k, sigma_t^2 I)
    (the k-dependent part). Since P(x_i = k | z_t) is proportional to P(x_i = k | z_t,-i) N(z_t,i; alpha_t e_k,
    sigma_t^2 I), the network is then left with what the *other* positions say about token i,
    and the posterior is exact per token from the start: it sharpens with the SNR as it
    should (a plain network's wrong-token mass stops shrinking at high SNR, where the bound's
    weight grows like e^lambda). Positions whose input was replaced by [mask] (random
    dropping) get no evidence.
    """

    def __init__(self, codebook: Codebook, net: nn.Module, self_cond: bool = False, schedule=None):
        super().__init__()
        self.codebook = codebook
        self.net = net
        self.self_cond = self_cond
        self.schedule = schedule  # token evidence when given
        if self_cond:
            dim = codebook.weight.shape[1]
            self.prev_proj = nn.Linear(dim, dim, bias=False)
            nn.init.zeros_(self.prev_proj.weight)

    def _input(self, z, prev):
        return z if prev is None or not self.self_cond else z + self.prev_proj(prev.to(z.dtype))

    def forward(self, tokens_in, alpha=None, sigma=None, noise=None, t=None, cond=None, targets=None,
                prev=None) -> DenoiserOutput:
        """z = alpha * EMB(tokens_in) + sigma * noise; without ``alpha`` z = EMB(tokens_in), the
        embed-only call of discrete-state methods: ``model(x_t, t=t, cond=cond, targets=x)``.

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
        """The network's logits, plus token evidence at the ``keep`` positions (default: all)."""
        logits = self.net(self._input(z, prev), t, cond)
        return logits if self.schedule is None else logits.float() + self.evidence(z, t, keep)

    def evidence(self, z, t, keep=None):
        """log N(z_i; alpha_t e_k, sigma_t^2 I) up to terms constant in k, [B, M, K], in fp32 even
        under autocast (at high SNR the logits reach ~e^lambda ||e||^2, beyond bf16's resolution);
        zero where ``keep`` [B, M] is False."""
        with torch.autocast(z.device.type, enabled=False):
            alpha, sigma = (v[:, None, None] for v in self.schedule.alpha_sigma(t.float()))
            e = self.codebook.data.float()
            ev = (alpha * z.float() @ e.T - 0.5 * alpha**2 * (e * e).sum(-1)) / sigma**2
        return ev if keep is None else ev * keep[..., None]

    def posterior_logits(self, z, t, cond=None):
        """Logits of P(x~ | z_t; t): one pass, or two with self-conditioning."""
        if not self.self_cond:
            return self.logits(z, t, cond)
        with torch.no_grad():
            prev = predicted_embedding(self.logits(z, t, cond).float(), self.codebook.data.float())
        return self.logits(z, t, cond, prev)


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
