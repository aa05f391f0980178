"""VQ-Diffusion with the mask-and-replace process (Gu et al. 2022) and the sampling of
Improved VQ-Diffusion (Tang et al. 2022, paper 004).

Forward process (paper 004 eqs. 1, 2, 4): each step keeps a token with prob. alpha_t, masks
it with gamma_t, else replaces it uniformly; cumulatively abar_t falls linearly from
0.99999 (t = 1) to 0.000009 (t = T) and gbar_t rises linearly from 0.000009 to 0.99999
(the schedule of VQ-Diffusion's code; its paper's gbar_T = 0.9 would leave 10% of the
tokens unmasked at T, which the fewer-tokens samplers below do not expect). T = 100.
x0-parameterisation (eq. 5): p_theta(x_{t-1} | x_t) = sum_x0 q(x_{t-1} | x_t, x0) p~(x0 | x_t).
Loss: L_vlb + lambda L_x0 (Gu et al. eq. 9), L_vlb at one t ~ U{1..T} per sequence (the
paper's importance sampling of t is not used), L_x0 = -log p~(x_0 | x_t), lambda = 0.0005.

Samplers (``sampler`` config key):
- ``ancestral``: eq. 5 step by step; with fewer steps than T it moves between the
  marginals of the grid times (VQ-Diffusion's fast-inference strategy).
- ``purity``: the high-quality inference strategy with the purity prior (paper 004
  sec. 3.2, Algorithm 2): start fully masked; each step reveals a fixed number
  Delta_z = ceil(#masked / steps left) of masked positions, chosen by importance sampling
  with weights purity(i) = max_j p~(x0^i = j | x_t) (eq. 8), each drawn from
  softmax((1 + r purity) log p~) (eq. 11, r = ``purity_scale``); the time fed to the
  network is argmin_t | #masked / M - gbar_t |.
- ``fewer_tokens``: the same with uniformly random positions and no eq. 11 (Algorithm 1).
All samplers apply discrete classifier-free guidance (eq. 7) to the x0 prediction, with
the backbone's learnable null condition (the engine trains it by dropping 10% of labels).
"""
from __future__ import annotations

import torch

from ..api.settings import Setting
from .d3pm import DiscreteDiffusion
from .discrete import MaskReplace, all_masked, choose, time_grid, x0_log_probs
from .shared import check_sampling, draw, gumbel


def linear_schedule(T: int, a1=0.99999, aT=0.000009, g1=0.000009, gT=0.99999):
    """(abar, gbar) [T + 1] with abar_0 = 1, gbar_0 = 0 and linear ramps over t = 1..T."""
    ramp = torch.linspace(0, 1, T, dtype=torch.float64) if T > 1 else torch.ones(1, dtype=torch.float64)
    abar = torch.cat([torch.ones(1, dtype=torch.float64), a1 + (aT - a1) * ramp])
    gbar = torch.cat([torch.zeros(1, dtype=torch.float64), g1 + (gT - g1) * ramp])
    return abar, gbar


class VQDiffusion(DiscreteDiffusion):
    name = "vqdiffusion"
    description = "VQ-Diffusion mask-and-replace with Improved VQ-Diffusion sampling (paper 004)"
    samplers = ("ancestral", "purity", "fewer_tokens")
    settings = DiscreteDiffusion.settings + (
        Setting("purity_scale", 1.0, "r of Improved VQ-Diffusion eq. 11 (the purity sampler)", low=0, low_open=True,
                mutable=True),)
    default_T = 100
    default_hybrid = 0.0005
    reweight = True

    def transitions(self, K):
        return MaskReplace(*linear_schedule(self.T), K)

    @torch.no_grad()
    def sample(self, model, req):
        n, seq_len, steps, device, generator = req.n, req.seq_len, req.steps, req.device, req.generator
        known, known_mask = check_sampling(n, seq_len, req.final, req.known, req.known_mask, device)
        if req.sampler == "ancestral":
            return self.ancestral(model, n, seq_len, time_grid(self.T, steps), req.final, req.cond, req.guidance,
                                  req.null_id, known, known_mask, generator, device)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        q = self.process(model)
        gbar = q.gbar[1:].to(device)
        x = all_masked(n, seq_len, q.K, known, known_mask, device)
        steps = min(steps, seq_len)
        for i in range(steps):
            masked = x == q.K
            if not masked.any():
                break
            left = masked.sum(1)
            delta = torch.ceil(left / (steps - i)).long()
            t_int = ((left / seq_len)[:, None] - gbar).abs().argmin(1) + 1
            logp0 = x0_log_probs(model, x, t_int.float() / self.T, req.cond, req.guidance, req.null_id).double()
            pick, logp0 = reveal(logp0, masked, delta, req.sampler == "purity", self.cfg.purity_scale, generator)
            x = torch.where(pick, draw(logp0.exp(), generator), x)
        return x


def reveal(logp0: torch.Tensor, masked: torch.Tensor, delta: torch.Tensor, purity: bool, scale: float,
           generator: torch.Generator | None):
    """Positions to reveal this step ([B, M] bool, ``delta`` [B] of the ``masked`` ones) and the
    log-probabilities to draw them from.

    purity=True: importance sampling without replacement with weights purity (eq. 8)
    (Gumbel-top-k on log purity) and eq. 11's sharpening; False: uniform choice (Algorithm 1)."""
    noise = gumbel(masked.shape, generator, masked.device)
    if not purity:
        return choose(noise, masked, delta), logp0
    top = logp0.max(-1).values  # log purity(i), eq. 8
    sharpened = torch.log_softmax((1 + scale * top.exp())[..., None] * logp0, -1)  # eq. 11
    return choose(top + noise, masked, delta), sharpened

