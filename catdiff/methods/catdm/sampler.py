"""Samplers: ancestral (paper 000 Algorithm 2 / 003 eq. 1) and three solvers of the
probability-flow ODE: DDIM (Euler), DPM-Solver++(2M) and Heun.

Every step predicts P_theta(x~ | z_t; t) and forms the data prediction EMB_hat (eq. 2), then
moves z_t -> z_s on a time grid t_N = 1 > ... > t_0 = 0. Finally x ~ P_theta(x | z_0; 0) (or
argmax): N steps cost N network calls (2N - 1 for Heun) plus that last read.

``final_call=False`` skips that last read and takes x from the last step's own prediction
P_theta(x | z_{t_1}; t_1), so N steps cost N calls, as MaskGIT's N steps do. Not in the paper
(eq. 1 ends with the read at t = 0); docs/results.md measures what it costs in FID. With one
step it reads P_theta(x | z_1; 1), which is near the tokens' marginal at every position.

Notation: lambda = log SNR = log(alpha^2 / sigma^2) (the schedule's); DPM-Solver's
lambda^DPM = log(alpha / sigma) = lambda / 2, so its step h = (lambda_s - lambda_t) / 2.

- ``ancestral``: z_s ~ q(z_s | z_t, x = EMB_hat) (eq. 1), written with lambda so it stays
  accurate when s is close to t:
      mean = (alpha_s / alpha_t) e^{lambda_t - lambda_s} z_t + alpha_s (1 - e^{lambda_t - lambda_s}) EMB_hat
      var  = (1 - e^{lambda_t - lambda_s}) sigma_s^2
- ``ddim``: z_s = alpha_s EMB_hat + (sigma_s / sigma_t)(z_t - alpha_t EMB_hat) (Song et al.
  2021 eq. 12 with eta = 0): the Euler step of the probability-flow ODE in x = z / alpha,
  sigma~ = sigma / alpha (Karras et al. 2022 eq. 4), and the first-order DPM-Solver++.
- ``dpmpp_2m``: DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2), multistep
  with data prediction D = EMB_hat: r = h_prev / h,
      D_n = (1 + 1 / (2r)) EMB_hat_n - (1 / (2r)) EMB_hat_{n-1}       (first step: D = EMB_hat)
      z_s = (sigma_s / sigma_t) z_t + alpha_s (1 - e^{-h}) D_n
  One network call per step, second order from the second step on. The last step keeps the
  second-order correction (Algorithm 2 as written; diffusers' ``lower_order_final`` drops it).
- ``heun``: Heun's second-order step (Karras et al. 2022, Algorithm 1, deterministic, no
  churn) in x = z / alpha, sigma~ = e^{-lambda/2}: d = (x - EMB_hat) / sigma~,
      x' = x_t + (sigma~_s - sigma~_t) d_t,   x_s = x_t + (sigma~_s - sigma~_t) (d_t + d'(x', s)) / 2.
  As in Algorithm 1, whose last step ends at sigma = 0, the last step (to t = 0, where
  sigma~ = e^{-logsnr_max / 2} ~ 0.02) is the Euler step alone: 2N - 1 calls. One step is DDIM.

Time grid (``grid`` argument; CATDM's ``sample_grid`` setting): uniform in t by default (the
shifted cosine puts the steps where it puts its training density), uniform in log-SNR
(DPM-Solver's ``logSNR`` grid), or a time warp's. docs/results.md measures the choice.

Classifier-free guidance (paper 003 eq. 5, on log-probabilities, renormalised):
    log P <- log_softmax((1 + w) log P(x | z, y) - w log P(x | z, null)).
Self-conditioning (``model.self_cond``): each call also reads the previous call's EMB_hat.
Infilling: positions in ``known_mask`` are reset before every call to a fresh forward sample
alpha_t EMB(x) + sigma_t eps of the given tokens, and copied into the output.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..shared import check_sampling, guided_log_probs, read_final
from .objective import ddim_point

SAMPLERS = ("ancestral", "ddim", "dpmpp_2m", "heun")
GRIDS = ("t", "logsnr")  # CATDM's ``sample_grid``

# denoise(z, t) -> (z, EMB_hat): the network's data prediction at time t (a 0-d tensor); the
# returned z is the input with the infilled positions reset (what the step must continue from)
Denoise = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def time_grid(schedule, steps: int, kind: str = "t", device="cpu") -> torch.Tensor:
    """[steps + 1] times 0 = t_0 < ... < t_N = 1: uniform in t, or uniform in log-SNR."""
    if kind == "t":
        return torch.linspace(0.0, 1.0, steps + 1, device=device)
    if kind == "logsnr":
        lam = torch.linspace(schedule.logsnr_max, schedule.logsnr_min, steps + 1, dtype=torch.float64)
        g = schedule.time_of(lam).float()
        g[0], g[-1] = 0.0, 1.0
        return g.to(device)
    raise ValueError(f"unknown sampling grid {kind!r}; choose one of {GRIDS}")


def _coefs(schedule, t):
    lam = schedule.logsnr(t)
    return lam, torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()


def ancestral(denoise: Denoise, z, grid, schedule, randn) -> torch.Tensor:
    for i in range(len(grid) - 1, 0, -1):
        (l_t, a_t, _), (l_s, a_s, s_s) = _coefs(schedule, grid[i]), _coefs(schedule, grid[i - 1])
        z, x0 = denoise(z, grid[i])
        ratio = torch.exp(l_t - l_s)  # e^{lambda_t - lambda_s} < 1
        z = (a_s / a_t) * ratio * z + a_s * (1 - ratio) * x0 + ((1 - ratio) * s_s**2).sqrt() * randn(z.shape)
    return z


def ddim(denoise: Denoise, z, grid, schedule, randn=None) -> torch.Tensor:
    for i in range(len(grid) - 1, 0, -1):
        (_, a_t, s_t), (_, a_s, s_s) = _coefs(schedule, grid[i]), _coefs(schedule, grid[i - 1])
        z, x0 = denoise(z, grid[i])
        z = ddim_point(z, x0, a_t.view(1), s_t.view(1), a_s.view(1), s_s.view(1))
    return z


def dpmpp_2m(denoise: Denoise, z, grid, schedule, randn=None) -> torch.Tensor:
    x0_prev = h_prev = None
    for i in range(len(grid) - 1, 0, -1):
        (l_t, _, s_t), (l_s, a_s, s_s) = _coefs(schedule, grid[i]), _coefs(schedule, grid[i - 1])
        z, x0 = denoise(z, grid[i])
        h = (l_s - l_t) / 2
        if x0_prev is None or h_prev <= 0:  # the first step (or after a zero-length one): first order
            d = x0
        else:
            d = x0 + (x0 - x0_prev) * (h / (2 * h_prev))  # 1 / r = h / h_prev
        z = (s_s / s_t) * z - a_s * torch.expm1(-h) * d
        x0_prev, h_prev = x0, h
    return z


def heun(denoise: Denoise, z, grid, schedule, randn=None) -> torch.Tensor:
    for i in range(len(grid) - 1, 0, -1):
        (l_t, a_t, _), (l_s, a_s, _) = _coefs(schedule, grid[i]), _coefs(schedule, grid[i - 1])
        sig_t, sig_s = torch.exp(-l_t / 2), torch.exp(-l_s / 2)  # sigma~ = sigma / alpha
        z, x0 = denoise(z, grid[i])
        x_t = z / a_t
        d_t = (x_t - x0) / sig_t
        x_s = x_t + (sig_s - sig_t) * d_t  # Euler (= DDIM)
        if i > 1:  # the correction (Algorithm 1 line 7), at every step but the last
            z_s, x0_s = denoise(a_s * x_s, grid[i - 1])
            x_s = x_t + (sig_s - sig_t) * (d_t + (z_s / a_s - x0_s) / sig_s) / 2
        z = a_s * x_s
    return z


SOLVERS = {"ancestral": ancestral, "ddim": ddim, "dpmpp_2m": dpmpp_2m, "heun": heun}


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
    final_call: bool = True,
) -> torch.Tensor:
    """Draw ``n`` token sequences [n, seq_len] from a Denoiser (use the eval EMA); ``grid``
    [steps + 1] are the times t_0 = 0 < ... < t_N = 1 (default n / N; :func:`time_grid`);
    ``final_call`` reads the tokens with one more call at t = 0 (else from the last step's)."""
    if method not in SOLVERS:
        raise ValueError(f"unknown sampler {method!r}; choose one of {SAMPLERS}")
    known, known_mask = check_sampling(n, seq_len, final, known, known_mask, device, steps)

    def randn(shape):
        return torch.randn(*shape, generator=generator, device="cpu").to(device)

    dim = model.codebook.weight.shape[1]
    e_data = model.codebook.data
    known_emb = model.codebook(known) if known is not None else None
    self_cond = getattr(model, "self_cond", False)
    prev = None  # self-conditioning: the previous call's EMB_hat
    last = None  # the last call's log P(x | z_t; t), read when final_call is off

    def infill(z, t):
        if known is None:
            return z
        a_t, s_t = schedule.alpha_sigma(t)
        return torch.where(known_mask[..., None], a_t * known_emb + s_t * randn(z.shape), z)

    def log_probs(z, t):
        return guided_log_probs(model, z, t.expand(n), cond, guidance, null_id, prev)

    def denoise(z, t):
        nonlocal prev, last
        z = infill(z, t)
        last = log_probs(z, t)
        emb_hat = last.exp() @ e_data  # eq. 2
        prev = emb_hat if self_cond else None
        return z, emb_hat

    if grid is None:
        grid = time_grid(schedule, steps, "t", device)
    z = SOLVERS[method](denoise, randn((n, seq_len, dim)), grid, schedule, randn)
    if final_call:
        last = log_probs(infill(z, grid[0]), grid[0])
    x = read_final(last, final, generator)
    return torch.where(known_mask, known, x) if known is not None else x
