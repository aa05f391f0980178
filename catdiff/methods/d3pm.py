"""D3PM with uniform transitions (Austin et al. 2021, "Structured denoising diffusion models
in discrete state-spaces"), and the discrete-time machinery VQ-Diffusion shares with it.

Forward process: Q_t = (1 - beta_t) I + beta_t / K 11^T, so q(x_t | x_0) = abar_t v(x_0) +
(1 - abar_t) / K with abar_t = prod (1 - beta_i); abar_t follows the cosine schedule
(Austin et al. sec. 4 use the cosine schedule of Nichol & Dhariwal for D3PM-uniform):
abar_t = f(t / T) / f(0), f(u) = cos((u + 0.008) / 1.008 * pi / 2)^2, so x_T is uniform.

x0-parameterisation (Austin et al. eq. 4): the network predicts p~(x_0 | x_t) and
    p_theta(x_{t-1} | x_t) ∝ sum_x0 q(x_{t-1}, x_t | x_0) p~(x_0 | x_t).
Hybrid loss (eq. 5): L_vb + lambda E[-log p~(x_0 | x_t)] with L_vb at one t ~ U{1..T} per
sequence: KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t)) for t > 1 and
-log p_theta(x_0 | x_1) for t = 1 (the same KL, as q(x_0 | x_1, x_0) is one-hot).
ELBO (eq. 1): -log p(x_0) <= KL(q(x_T | x_0) || p(x_T)) + sum_{t=1..T} L_{t-1}, the sum
estimated as T * L_{t-1} at one t per sequence.
Sampling: ancestral, on any subset of the T times: p_theta(x_s | x_t) uses Q_{t|s}, the
transition between the marginals (abar_{t|s} = abar_t / abar_s).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..api.method import Method
from ..api.settings import Setting
from .discrete import MaskReplace, integer_times, kl, time_grid, x0_log_probs
from .shared import check_sampling, draw, unwrap, with_aux

# shared by d3pm and vqdiffusion (one declaration, so one key)
DISCRETE_STEPS = Setting("discrete_steps", None, "T of d3pm / vqdiffusion; auto = the paper's (d3pm 1000, "
                         "vqdiffusion 100)", type=int, low=1, auto=True)
HYBRID_WEIGHT = Setting("hybrid_weight", None, "lambda of d3pm L_vb + lambda L_CE, vqdiffusion L_vlb + "
                        "lambda L_x0; auto = the paper's (0.001, 0.0005)", type=float, low=0, auto=True)


class DiscreteDiffusion(Method):
    """A discrete-time diffusion over token ids with a :class:`MaskReplace` forward process,
    trained with L_vb + lambda * CE on the x0 prediction. Subclasses set the schedule
    (``transitions``), the paper defaults and ``reweight`` (how p_theta averages eq. 3 over
    the x0 prediction, see :meth:`MaskReplace.posterior`)."""

    samplers = ("ancestral",)
    settings = (DISCRETE_STEPS, HYBRID_WEIGHT)
    v1_auto = {"discrete_steps": lambda v: v == 0, "hybrid_weight": lambda v: v < 0}  # catdiff 0.1's "auto"
    default_T = 1000
    default_hybrid = 0.001
    reweight = False

    def __init__(self, cfg):
        super().__init__(cfg)
        self.T = self.default_T if cfg.discrete_steps is None else cfg.discrete_steps
        self.hybrid = self.default_hybrid if cfg.hybrid_weight is None else cfg.hybrid_weight
        self._trans: dict[int, MaskReplace] = {}

    def transitions(self, K: int) -> MaskReplace:
        raise NotImplementedError

    def process(self, denoiser) -> MaskReplace:
        """The forward process for the denoiser's vocabulary (pass an unwrapped Denoiser)."""
        K = denoiser.codebook.vocab_size
        if K not in self._trans:
            self._trans[K] = self.transitions(K)
        return self._trans[K]

    def terms(self, q: MaskReplace, model, x, cond, t_int):
        """Per-sequence (L_{t-1}, CE of the x0 prediction, backbone aux) at integer times ``t_int``."""
        x0 = F.one_hot(x, q.K)
        x_t = draw(q.marginal(x0, t_int), None)
        out = model(x_t, t=t_int.float() / self.T, cond=cond, targets=x)
        logp0 = F.log_softmax(out.logits.double(), -1)
        p_theta = q.posterior(x_t, logp0.exp(), t_int, t_int - 1, self.reweight)
        q_true = q.posterior(x_t, x0, t_int, t_int - 1, False)
        l_t = kl(q_true, p_theta).sum(-1)
        ce = -logp0.gather(-1, x[..., None]).squeeze(-1).sum(-1)
        return l_t, ce, out.aux

    def loss(self, model, x, cond):
        t_int = torch.randint(1, self.T + 1, (x.shape[0],), device=x.device)
        l_t, ce, aux = self.terms(self.process(unwrap(model)), model, x, cond, t_int)
        loss = (l_t + self.hybrid * ce).mean().float()
        return with_aux(loss, {"l_vb": l_t.mean(), "l_ce": ce.mean()}, aux)

    @torch.no_grad()
    def nll_bound(self, model, x, cond, t):
        q = self.process(model)
        t_int = integer_times(t, self.T)
        l_t, _, _ = self.terms(q, model, x, cond, t_int)
        full = torch.full_like(t_int, self.T)
        prior = kl(q.marginal(F.one_hot(x, q.K), full), q.prior(x.shape, x.device)).sum(-1)
        diffusion = self.T * l_t
        return {"prior": prior, "diffusion": diffusion, "total": prior + diffusion}

    @torch.no_grad()
    def sample(self, model, req):
        known, known_mask = check_sampling(req.n, req.seq_len, req.final, req.known, req.known_mask, req.device)
        return self.ancestral(model, req.n, req.seq_len, time_grid(self.T, req.steps), req.final, req.cond,
                              req.guidance, req.null_id, known, known_mask, req.generator, req.device)

    def ancestral(self, model, n, seq_len, grid, final, cond, guidance, null_id, known, known_mask, generator, device):
        """x_T ~ p(x_T); for consecutive grid times t > s: x_s ~ p_theta(x_s | x_t) (posterior over
        Q_{t|s} averaged over the guided x0 prediction); the last step reads x_0 by ``final``.
        Infilling: known positions are redrawn from q(x_t | x_0 = known) before every step."""
        q = self.process(model)
        x = draw(q.prior((n, seq_len), device), generator)
        known1h = None if known is None else F.one_hot(known, q.K)
        for t, s in zip(grid[:-1], grid[1:]):
            t_vec = torch.full((n,), t, device=device)
            if known is not None:
                x = torch.where(known_mask, draw(q.marginal(known1h, t_vec), generator), x)
            logp0 = x0_log_probs(model, x, t_vec.float() / self.T, cond, guidance, null_id)
            probs = q.posterior(x, logp0.exp(), t_vec, torch.full_like(t_vec, s), self.reweight)
            if s == 0:
                probs = probs[..., : q.K]
                x = probs.argmax(-1) if final == "argmax" else draw(probs, generator)
            else:
                x = draw(probs, generator)
        if known is not None:
            x = torch.where(known_mask, known, x)
        return x


def cosine_abar(T: int, offset: float = 0.008) -> torch.Tensor:
    """abar_t = f(t/T) / f(0), f(u) = cos((u + offset) / (1 + offset) * pi / 2)^2, t = 0..T (abar_T = 0)."""
    u = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((u + offset) / (1 + offset) * math.pi / 2) ** 2
    abar = (f / f[0]).clamp(0, 1)
    abar[-1] = 0.0
    return abar


class D3PM(DiscreteDiffusion):
    """D3PM-uniform (Austin et al. 2021): uniform transitions, cosine schedule, T = 1000,
    hybrid loss with lambda = 0.001 (their image setting)."""

    name = "d3pm"
    description = "D3PM-uniform (Austin et al. 2021): uniform transitions, hybrid loss"

    def transitions(self, K):
        abar = cosine_abar(self.T)
        return MaskReplace(abar, torch.zeros_like(abar), K)
