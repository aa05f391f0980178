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

from ..shared import check_sampling, guided_log_probs, read_final
from .objective import ddim_point

SAMPLERS = ("ancestral", "ddim")


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
    grid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw ``n`` token sequences [n, seq_len] from a Denoiser (use the eval EMA); ``grid``
    [steps + 1] are the times t_0 = 0 < ... < t_N = 1 (default n / N; a time warp's grid)."""
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler {method!r}; choose one of {SAMPLERS}")
    known, known_mask = check_sampling(n, seq_len, final, known, known_mask, device, steps)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, device="cpu").to(device)

    dim = model.codebook.weight.shape[1]
    e_data = model.codebook.data
    z = randn(n, seq_len, dim)
    if known is not None:
        known_emb = model.codebook(known)
    if grid is None:
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
    x = read_final(logp, final, generator)
    if known is not None:
        x = torch.where(known_mask, known, x)
    return x
