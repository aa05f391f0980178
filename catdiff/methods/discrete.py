"""Discrete-state machinery shared by D3PM, VQ-Diffusion and MaskGIT.

:class:`MaskReplace` is the forward process of VQ-Diffusion (paper 004 eqs. 1-4) over the
K data states plus [mask] (state K, the codebook's ``mask_id``); D3PM-uniform (Austin et al.
2021) is its special case gamma = 0, in which [mask] is never reached. All probabilities
are computed in float64 (the tensors are [B, M, K+1], small next to the network).

A transition from s to t (s < t; s = 0 is the data) keeps a token with probability
a_{t|s}, masks it with probability g_{t|s}, and otherwise replaces it by a uniform data
token, b_{t|s} = (1 - a_{t|s} - g_{t|s}) / K each (eq. 2 with alpha, beta, gamma):

    a_{t|s} = abar_t / abar_s,    1 - g_{t|s} = (1 - gbar_t) / (1 - gbar_s)

because products of such matrices stay in the family with the keep probabilities and the
no-mask probabilities multiplying. With s = 0 this is eq. 4; note eq. 4 of paper 004
prints beta_bar = (1 - abar - gbar) / (K + 1), but the columns of Q_bar sum to one only
with / K (as in VQ-Diffusion's code); tests/test_methods.py checks this by simulation.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .shared import check_sampling, draw, guided_log_probs


class MaskReplace:
    """q(x_t | x_s) for integer times 0 <= s < t <= T from cumulative ``abar``, ``gbar`` [T + 1]
    (abar_0 = 1, gbar_0 = 0)."""

    def __init__(self, abar: torch.Tensor, gbar: torch.Tensor, vocab_size: int):
        if abar.shape != gbar.shape or abar.dim() != 1 or abar[0] != 1 or gbar[0] != 0:
            raise ValueError("abar and gbar must be [T + 1] with abar_0 = 1 and gbar_0 = 0")
        if (abar + gbar > 1 + 1e-12).any():
            raise ValueError("need abar_t + gbar_t <= 1 for every t")
        self.abar = abar.double()
        self.gbar = gbar.double()
        self.K = vocab_size
        self.T = len(abar) - 1

    def coefs(self, t: torch.Tensor, s: torch.Tensor | None = None):
        """(a_{t|s}, g_{t|s}, b_{t|s}) shaped [B, 1, 1] for integer times [B]; s = None means 0."""
        abar, gbar = self.abar.to(t.device), self.gbar.to(t.device)
        a, g = abar[t], gbar[t]
        if s is not None:
            a = a / abar[s]
            g = 1 - (1 - g) / (1 - gbar[s])
        b = ((1 - a - g) / self.K).clamp_min(0)
        return a.view(-1, 1, 1), g.view(-1, 1, 1), b.view(-1, 1, 1)

    def marginal(self, p0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0) [B, M, K+1] for a distribution ``p0`` [B, M, K] over x_0 (eq. 4)."""
        a, g, b = self.coefs(t)
        return torch.cat([a * p0.double() + b, g.expand(*p0.shape[:-1], 1)], -1)

    def likelihood(self, x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor | None) -> torch.Tensor:
        """q(x_t | x_s = j) for every state j, [B, M, K+1] (a row of Q_{t|s}, eq. 1-2)."""
        a, g, b = self.coefs(t, s)
        shape = (*x_t.shape, 1)
        onehot = F.one_hot(x_t.clamp_max(self.K - 1), self.K).double()
        from_data = torch.cat([a * onehot + b, torch.zeros(shape, dtype=torch.float64, device=x_t.device)], -1)
        to_mask = torch.cat([g.expand(*x_t.shape, self.K), torch.ones(shape, dtype=torch.float64, device=x_t.device)], -1)
        return torch.where((x_t == self.K)[..., None], to_mask, from_data)

    def posterior(self, x_t, p0, t, s, reweight: bool) -> torch.Tensor:
        """q(x_s | x_t, x_0) [B, M, K+1] (eq. 3) averaged over x_0 ~ ``p0`` [B, M, K].

        ``reweight=False``: proportional to q(x_t | x_s) sum_x0 q(x_s | x_0) p0(x_0), the
        D3PM x0-parameterisation (Austin et al. eq. 4). ``reweight=True``:
        sum_x0 q(x_s | x_t, x_0) p0(x_0), VQ-Diffusion's (paper 004 eq. 5), which divides
        p0 by q(x_t | x_0) before the same product. Both equal eq. 3 for a one-hot p0.
        """
        p0 = p0.double()
        if reweight:
            p0 = p0 / self.likelihood(x_t, t, None)[..., : self.K]
            p0 = p0 / p0.sum(-1, keepdim=True)
        joint = self.likelihood(x_t, t, s) * self.marginal(p0, s)
        return joint / joint.sum(-1, keepdim=True)

    def prior(self, shape, device) -> torch.Tensor:
        """p(x_T) [*shape, K+1]: the marginal at T of a uniform x_0."""
        p0 = torch.full((*shape, self.K), 1.0 / self.K, dtype=torch.float64, device=device)
        return self.marginal(p0, torch.full(shape[:1], self.T, device=device))


def kl(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """KL(q || p) over the last axis from probabilities (terms with q = 0 count 0)."""
    return torch.where(q > 0, q * (q.clamp_min(1e-300).log() - p.clamp_min(1e-300).log()), 0.0).sum(-1)






def time_grid(T: int, steps: int) -> list[int]:
    """Integer times T = t_N > ... > t_0 = 0 for ``steps`` reverse steps (at most T)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    grid = torch.linspace(0, T, min(steps, T) + 1).round().long().unique()
    return grid.flip(0).tolist()




def x0_log_probs(model, x_t, t, cond, guidance: float, null_id: int | None) -> torch.Tensor:
    """log p_theta(x~_0 | x_t[, y]) [B, M, K] with discrete classifier-free guidance
    (paper 004 eq. 7 on the x0 prediction, the learnable null condition being ``null_id``):
    log p = log p(x|null) + (1 + w)(log p(x|y) - log p(x|null)), renormalised."""
    return guided_log_probs(model, model.codebook(x_t), t, cond, guidance, null_id)


def integer_times(t: torch.Tensor, T: int) -> torch.Tensor:
    """Continuous t in [0, 1) (as the engine draws them) -> integer times 1..T, uniformly."""
    return (t * T).floor().long().clamp(0, T - 1) + 1


def choose(score: torch.Tensor, eligible: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Boolean [B, M]: the ``count`` [B] eligible positions with the highest ``score`` per row."""
    score = torch.where(eligible, score, -math.inf)
    rank = score.argsort(1, descending=True).argsort(1)
    return eligible & (rank < count[:, None])


def masked_start(model, n: int, seq_len: int, final: str, known, known_mask, device, steps: int) -> torch.Tensor:
    """The sampling arguments checked (shared.check_sampling), then :func:`all_masked` with the
    model's [mask] id: the first lines of the MaskGIT and MDLM samplers."""
    known, known_mask = check_sampling(n, seq_len, final, known, known_mask, device, steps)
    return all_masked(n, seq_len, model.codebook.mask_id, known, known_mask, device)


def all_masked(n: int, seq_len: int, mask_id: int, known, known_mask, device) -> torch.Tensor:
    """[n, seq_len] token ids, all [mask] but the ``known`` positions: where absorbing-state
    samplers (VQ-Diffusion's fewer-tokens, MaskGIT, MDLM) start."""
    x = torch.full((n, seq_len), mask_id, dtype=torch.long, device=device)
    return x if known is None else torch.where(known_mask, known, x)
