"""CATDM's network: the plain Denoiser plus three choices the paper does not make, each a
setting of this method (off, on, off by default).

- :class:`NormedCodebook` (``embed_norm`` > 0; CDCD and Plaid normalise their embeddings): every
  row is used at that L2 norm, ``norm * w / ||w||``, so the rows cannot grow or shrink and the
  schedule's SNR means what it says; the parameters stay free (their direction is learned).
- Token evidence (``evidence``, on by default): the logits become
  f_theta(z_t; t) + log N(z_t,i; alpha_t e_k, sigma_t^2 I) (the k-dependent part). Since
  P(x_i = k | z_t) is proportional to P(x_i = k | z_t,-i) N(z_t,i; alpha_t e_k, sigma_t^2 I), the
  network is left with what the *other* positions say about token i, and the posterior is exact
  per token from the start: it sharpens with the SNR as it should (a plain network's
  wrong-token mass stops shrinking at high SNR, where the bound's weight grows like e^lambda).
  Positions whose input was replaced by [mask] (random dropping) get no evidence.
- Self-conditioning (``self_cond``; Chen et al. 2022 "Analog Bits", Strudel et al. 2022 "SED"):
  the network also reads a previous estimate ``prev`` = EMB_hat [B, M, D] of the clean
  embeddings, added to its input through a zero-initialised D x D map, so every backbone takes
  it unchanged and training starts as without it. ``prev=None`` means no estimate (zeros).
  :meth:`CATDMDenoiser.posterior_logits` is the self-conditioned denoiser of z alone: a first
  pass without an estimate, then a second reading it (a deterministic function of z_t, so the
  likelihood bound stays a bound).

The state-dict keys are the plain Denoiser's (plus ``prev_proj`` with self-conditioning), so
checkpoints written before these classes existed load unchanged.
"""
from __future__ import annotations

import torch
from torch import nn

from ...nn.model import Codebook, Denoiser, predicted_embedding


class NormedCodebook(Codebook):
    """A codebook whose rows are used at the fixed L2 norm ``norm``."""

    def __init__(self, vocab_size: int, dim: int, init_std: float | None = None, fixed: bool = False,
                 norm: float = 1.0):
        super().__init__(vocab_size, dim, init_std, fixed)
        if norm <= 0:
            raise ValueError(f"NormedCodebook needs norm > 0, got {norm}")
        self.norm = float(norm)

    def table(self) -> torch.Tensor:
        return nn.functional.normalize(self.weight, dim=-1) * self.norm


class CATDMDenoiser(Denoiser):
    """The Denoiser with token evidence (when ``schedule`` is given) and self-conditioning."""

    def __init__(self, codebook: Codebook, net: nn.Module, self_cond: bool = False, schedule=None):
        super().__init__(codebook, net)
        self.self_cond = self_cond
        self.schedule = schedule  # token evidence when given
        if self_cond:
            dim = codebook.weight.shape[1]
            self.prev_proj = nn.Linear(dim, dim, bias=False)
            nn.init.zeros_(self.prev_proj.weight)

    def logits(self, z, t, cond=None, prev=None, keep=None):
        """The network's logits, plus token evidence at the ``keep`` positions (default: all)."""
        if prev is not None and self.self_cond:
            z_in = z + self.prev_proj(prev.to(z.dtype))
        else:
            z_in = z
        logits = self.net(z_in, t, cond)
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
