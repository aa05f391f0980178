"""Samplers: ancestral (paper 000 Algorithm 2 / 003 eq. 1) and deterministic DDIM.

Time grid t_n = n / N, n = 0..N. Each step predicts P_theta(x~ | z_t; t), forms
EMB_hat (eq. 2) and moves z_t -> z_s. The coefficients are written with
lambda = log SNR so they stay accurate when s is close to t:
    mean = (alpha_s / alpha_t) e^{lambda_t - lambda_s} z_t + alpha_s (1 - e^{lambda_t - lambda_s}) EMB_hat
    var  = (1 - e^{lambda_t - lambda_s}) sigma_s^2
which equal (alpha_{t|s} sigma_s^2 / sigma_t^2, alpha_s sigma_{t|s}^2 / sigma_t^2,
sigma_{t|s}^2 sigma_s^2 / sigma_t^2) of eq. 1. Finally x ~ P_theta(x | z_0; 0) (or argmax).

Classifier-free guidance (paper 003 eq. 5, on log-probabilities, renormalised):
    log P <- log_softmax((1 + w) log P(x | z, y) - w log P(x | z, null)).
Self-conditioning (``model.self_cond``): each step also reads the previous step's EMB_hat.
Infilling: positions in ``known_mask`` are reset every step to a fresh forward sample
alpha_t EMB(x) + sigma_t eps of the given tokens, and copied into the output.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import CHOICES
from .objective import ddim_point

SAMPLERS = ("ancestral", "ddim")
FINALS = CHOICES["final"]


def guided_log_probs(model, z, t, cond, guidance: float, null_id: int | None, prev=None):
    """log P(x~ | z_t; t[, y]) with classifier-free guidance weight ``guidance``; ``prev`` is
    the previous step's EMB_hat for a self-conditioned model (None: no estimate yet)."""
    def logits(z, t, cond, prev):
        return model.logits(z, t, cond) if prev is None else model.logits(z, t, cond, prev)

    if guidance == 0 or cond is None:
        return F.log_softmax(logits(z, t, cond, prev).float(), -1)
    if null_id is None:
        raise ValueError("guidance > 0 needs a class-conditional model (num_classes > 0)")
    both = logits(torch.cat([z, z]), torch.cat([t, t]), torch.cat([cond, torch.full_like(cond, null_id)]),
                  None if prev is None else torch.cat([prev, prev]))
    logp_c, logp_u = F.log_softmax(both.float(), -1).chunk(2)
    return F.log_softmax((1 + guidance) * logp_c - guidance * logp_u, -1)


@torch.no_grad()
def sample(
    model,
    schedule,
    n: int,
    seq_len: int,
    *,
    steps: int = 100,
    method: str = "ancestral",
    final: str = "argmax",
    cond: torch.Tensor | None = None,
    guidance: float = 0.0,
    null_id: int | None = None,
    known: torch.Tensor | None = None,
    known_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Draw ``n`` token sequences [n, seq_len] from a Denoiser (use the eval EMA)."""
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler {method!r}; choose one of {SAMPLERS}")
    if final not in FINALS:
        raise ValueError(f"unknown final step {final!r}; choose one of {FINALS}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if (known is None) != (known_mask is None):
        raise ValueError("infilling needs both `known` tokens and `known_mask`")
    if known is not None and (known.shape != (n, seq_len) or known_mask.shape != (n, seq_len)):
        raise ValueError(f"known/known_mask must be [{n}, {seq_len}], got {tuple(known.shape)}, {tuple(known_mask.shape)}")

    def randn(*shape):
        return torch.randn(*shape, generator=generator, device="cpu").to(device)

    dim = model.codebook.weight.shape[1]
    e_data = model.codebook.data
    z = randn(n, seq_len, dim)
    if known is not None:
        known, known_mask = known.to(device), known_mask.to(device)
        known_emb = model.codebook(known)
    grid = torch.linspace(0.0, 1.0, steps + 1, device=device)
    prev = None  # self-conditioning: the previous step's EMB_hat
    for i in range(steps, 0, -1):
        t = grid[i].expand(n)
        s = grid[i - 1].expand(n)
        a_t, s_t = schedule.alpha_sigma(t)
        a_s, s_s = schedule.alpha_sigma(s)
        if known is not None:
            fresh = a_t[:, None, None] * known_emb + s_t[:, None, None] * randn(n, seq_len, dim)
            z = torch.where(known_mask[..., None], fresh, z)
        emb_hat = guided_log_probs(model, z, t, cond, guidance, null_id, prev).exp() @ e_data  # eq. 2
        prev = emb_hat if getattr(model, "self_cond", False) else None
        if method == "ddim":
            z = ddim_point(z, emb_hat, a_t, s_t, a_s, s_s)
        else:
            ratio = torch.exp(schedule.logsnr(t) - schedule.logsnr(s))[:, None, None]  # e^{lambda_t - lambda_s} < 1
            a_t, a_s, s_s = (v[:, None, None] for v in (a_t, a_s, s_s))
            mean = (a_s / a_t) * ratio * z + a_s * (1 - ratio) * emb_hat
            z = mean + ((1 - ratio) * s_s**2).sqrt() * randn(n, seq_len, dim)
    t0 = grid[0].expand(n)
    if known is not None:
        a0, s0 = schedule.alpha_sigma(t0)
        z = torch.where(known_mask[..., None], a0[:, None, None] * known_emb + s0[:, None, None] * randn(n, seq_len, dim), z)
    logp = guided_log_probs(model, z, t0, cond, guidance, null_id, prev)
    if final == "argmax":
        x = logp.argmax(-1)
    else:
        gumbel = -torch.log(-torch.log(torch.rand(logp.shape, generator=generator).clamp_min(1e-20).to(device)))
        x = (logp + gumbel).argmax(-1)
    if known is not None:
        x = torch.where(known_mask, known, x)
    return x
