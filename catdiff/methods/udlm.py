"""UDLM: uniform-state discrete diffusion with its continuous-time ELBO (Schiff et al. 2024,
"Simple guidance mechanisms for discrete diffusion models", arXiv 2412.10193; the same process
and bound as Duo, Sahoo et al. 2025, "The diffusion duality", arXiv 2506.10892).

Forward process (UDLM: MDLM's interpolating process with pi = 1/K): every token is
independently replaced, with probability 1 - alpha_t, by a token drawn uniformly from the K data
tokens (possibly itself); there is no [mask] state:
    q(z_t | x)   = Cat(z_t; alpha_t x + (1 - alpha_t) 1/K),                 alpha_0 = 1, alpha_1 = 0,
    q(z_t | z_s) = Cat(z_t; alpha_{t|s} z_s + (1 - alpha_{t|s}) 1/K),       alpha_{t|s} = alpha_t / alpha_s.
Schedules (``udlm_schedule``, as MDLM's): ``loglinear`` alpha_t = 1 - t (default), ``cosine``
alpha_t = cos(pi t / 2) (taken as exactly 0 at t = 1). Write x_bar = K alpha_t x + (1 - alpha_t) 1,
so q(z_t = i | x) = x_bar_i / K.

Posterior (UDLM's uniform-noise posterior; Bayes on the two lines above), z_t = i, s < t:
    q(z_s = j | z_t = i, x)
        = (alpha_{t|s} [i = j] + (1 - alpha_{t|s}) / K) (alpha_s x_j + (1 - alpha_s) / K) / (x_bar_i / K).        (P)
Parameterisation: p_theta(z_s | z_t) = q(z_s | z_t, x = x_theta(z_t, t)), x_theta the network's
softmax over the K data tokens (UDLM's reverse process). Numerator and denominator of (P) are
linear in x, so this equals D3PM's x0-parameterisation (Austin et al. eq. 4, a mixture of joints).
Time input: t itself. Unlike MDLM's masks, uniform noise leaves no trace of t in z_t.

Loss and bound, derived from the discrete-time terms KL(q(z_s | z_t, x) || p_theta(z_s | z_t)).
With s = t - dt and delta = alpha_s - alpha_t = -alpha'_t dt, (P) to first order in delta is
    q(z_s = j | z_t = i, x) = delta x_bar_j / (K alpha_t x_bar_i) + O(delta^2)      (j != i),
and the same holds for p_theta with x_theta_bar = K alpha_t x_theta + (1 - alpha_t) 1. Two distributions
that leave i with masses delta r_j and delta rho_j have KL = delta sum_{j != i} (r_j log(r_j / rho_j)
- r_j + rho_j) + O(delta^2). Sum the T steps' terms (a Riemann sum in t) and use sum_j x_bar_j = K:
    L_diff(x) = int_0^1 E_{z_t ~ q(.|x)} sum_l G(x^l, z_t^l, x_theta^l(z_t, t), t) dt,
    G = -alpha'_t / (K alpha_t) [ K / x_theta_bar_i - K / x_bar_i
          + sum_j (x_bar_j / x_bar_i) log(x_bar_j x_theta_bar_i / (x_bar_i x_theta_bar_j)) ]                        (G)
UDLM eq. 18 and Duo eq. 5. The sum runs over every j (its j = i term is 0), not only over the j
with x_j = 0. Every term of the KL is >= 0, so G >= 0, and G = 0 where x_theta = x.
:func:`integrand` evaluates it with one reduction over K: x_bar takes only the values
A = K alpha_t + 1 - alpha_t (the true token y) and B = 1 - alpha_t, so
    sum_j x_bar_j log(x_bar_j / x_bar_i) = (K - 1) B log(B / A) if i = y, A log(A / B) otherwise,
    sum_j x_bar_j log(x_theta_bar_i / x_theta_bar_j)
        = K log x_theta_bar_i - B sum_j log x_theta_bar_j - K alpha_t log x_theta_bar_y.
Prior term: KL(q(z_1 | x) || Cat(1/K)) = 0, as alpha_1 = 0.

Near t = 0 (``udlm_eps``, default 1e-3 as MDLM's): E G grows like log(1/t). A token that the noise
changed costs about log(1/t) nats to repair, even for the exact posterior. So one draw of
t ~ U(0, 1) has unbounded variance, and MDLM's clamp t >= eps would under-estimate the integral
by O(eps) nats per token. The bound is instead the exact ELBO of the process stopped at eps:
    L(x) = int_eps^1 E_{z_t} sum_l G dt + E_{z_eps ~ q(.|x)} sum_l -log p_theta(x^l | z_eps),           (L)
    p_theta(x = j | z_eps = i) = q(z_0 = j | z_eps = i, x_theta)
                               = x_theta_j (K alpha_eps [i = j] + 1 - alpha_eps) / x_theta_bar_i,
the last step of the sampler ((P) at s = 0), the reconstruction term. (L) bounds -log p of the
model that runs the continuous-time reverse process down to eps and then takes that one step (the
N-step sampler's last step does the same with eps = 1/N). As eps -> 0, (L) tends to L_diff.
Estimator, one draw per sequence: t ~ U(0, 1) (stratified over the batch in training, as MDLM);
t >= eps gives the integrand at one z_t ~ q(z_t | x), t < eps the reconstruction at one z_eps
divided by eps. Its mean is exactly (L). The training loss is its batch mean per token plus the
backbone's auxiliary loss; ``nll_bound`` returns it per sequence in nats, with its two parts
("diffusion", "reconstruction", each the row's share of the estimate).

Sampler ``ancestral`` (``steps`` = N, times t_j = j / N from 1 down to 0): z_1 ~ Cat(1/K) per
position; each step draws z_s ~ p_theta(z_s | z_t) = (P) with x = the guided x_theta(z_t, t); the last
step (s = 0) reads the tokens from (P) at alpha_0 = 1 by ``final`` (argmax or a draw). One step
(t = 1 -> 0, alpha_1 = 0) reduces (P) to x_theta itself.
Classifier-free guidance: on the x0 prediction (paper 004 eq. 7, ``x0_log_probs``), as D3PM and MDLM.
Infilling: known positions hold their tokens in every z_t the network sees (MDLM's carry-over, not
D3PM's re-noising) and in the output.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..api.method import Method
from ..api.settings import Setting
from .discrete import x0_log_probs
from .shared import check_sampling, draw, draw_times, read_final, unwrap, with_aux

SCHEDULES = ("loglinear", "cosine")


def alpha(schedule: str, t: torch.Tensor) -> torch.Tensor:
    """alpha_t: the probability that a token has not been resampled by time t (1 at t = 0, 0 at t = 1)."""
    if schedule == "loglinear":
        return 1 - t
    return torch.where(t < 1, torch.cos(math.pi / 2 * t), torch.zeros_like(t))


def alpha_rate(schedule: str, t: torch.Tensor) -> torch.Tensor:
    """-alpha'_t: 1 for loglinear, (pi / 2) sin(pi t / 2) for cosine."""
    if schedule == "loglinear":
        return torch.ones_like(t)
    return math.pi / 2 * torch.sin(math.pi / 2 * t)


def corrupt(x: torch.Tensor, alpha_t: torch.Tensor, K: int, generator: torch.Generator | None = None):
    """z_t ~ q(z_t | x): each token replaced, with probability 1 - alpha_t ([B]), by a uniform one of K."""
    device = x.device if generator is None else generator.device
    u = torch.rand(x.shape, generator=generator, device=device, dtype=torch.float64).to(x.device)
    noise = torch.randint(K, x.shape, generator=generator, device=device).to(x.device)
    return torch.where(u < (1 - alpha_t.double().to(x.device))[:, None], noise, x)


def posterior(p: torch.Tensor, z_t: torch.Tensor, a_t, a_s) -> torch.Tensor:
    """q(z_s | z_t, x = p) [B, M, K], eq. (P), for a distribution ``p`` [B, M, K] over x (one-hot:
    the true posterior; x_theta: p_theta(z_s | z_t)); ``a_t`` < ``a_s`` are alpha at t > s (floats or [B])."""
    K = p.shape[-1]
    a_t, a_s = (torch.as_tensor(a, dtype=torch.float64, device=p.device).view(-1, 1, 1) for a in (a_t, a_s))
    a_ts = a_t / a_s
    from_j = a_ts * F.one_hot(z_t, K) + (1 - a_ts) / K   # q(z_t = i | z_s = j), i = z_t
    at_s = a_s * p.double() + (1 - a_s) / K              # q(z_s = j | x = p)
    joint = from_j * at_s
    return joint / joint.sum(-1, keepdim=True)


def integrand(logp: torch.Tensor, x: torch.Tensor, z_t: torch.Tensor, a: torch.Tensor, rate: torch.Tensor):
    """G of eq. (G) per position [B, M] from log x_theta [B, M, K] (float64), the data ``x``, ``z_t``,
    alpha_t ``a`` [B] and -alpha'_t ``rate`` [B]; needs alpha_t < 1 (it is 0 at alpha_t = 0)."""
    K = logp.shape[-1]
    a = a[:, None]
    lt = torch.log(K * a[..., None] * logp.exp() + (1 - a[..., None]))  # log x_theta_bar [B, M, K]
    lt_i = lt.gather(-1, z_t[..., None]).squeeze(-1)
    lt_y = lt.gather(-1, x[..., None]).squeeze(-1)
    A, B = K * a + 1 - a, 1 - a  # x_bar at the true token, elsewhere
    hit = z_t == x
    xb_i = torch.where(hit, A, B)
    ent = torch.where(hit, (K - 1) * B * torch.log(B / A), A * torch.log(A / B))  # sum_j x_bar_j log(x_bar_j / x_bar_i)
    cross = K * lt_i - B * lt.sum(-1) - K * a * lt_y  # sum_j x_bar_j log(x_theta_bar_i / x_theta_bar_j)
    bracket = K / lt_i.exp() - K / xb_i + (ent + cross) / xb_i
    return rate[:, None] / (K * a.clamp_min(1e-300)) * bracket


def reconstruction(logp: torch.Tensor, x: torch.Tensor, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """-log p_theta(x | z_eps) per position [B, M]: the last step (P) at s = 0, alpha_eps = ``a`` [B]."""
    K = logp.shape[-1]
    a = a[:, None]
    lt_i = torch.log(K * a * logp.gather(-1, z[..., None]).squeeze(-1).exp() + 1 - a)
    return -(logp.gather(-1, x[..., None]).squeeze(-1) + torch.log(K * a * (z == x) + 1 - a) - lt_i)


class UDLM(Method):
    """Uniform-state diffusion, continuous-time NELBO, ancestral sampler (module doc)."""

    name = "udlm"
    description = "UDLM / Duo: uniform-state diffusion on its continuous-time ELBO"
    samplers = ("ancestral",)
    settings = (
        Setting("udlm_schedule", "loglinear", "alpha_t: loglinear (1 - t) | cosine", choices=SCHEDULES),
        Setting("udlm_eps", 1e-3, "where the bound stops the diffusion and adds its reconstruction term",
                low=0, low_open=True, high=0.5),
    )

    def __init__(self, cfg):
        super().__init__(cfg)
        self.schedule = cfg.udlm_schedule
        self.eps = float(cfg.udlm_eps)

    def nelbo(self, model, x, cond, t, K: int, targets=None, generator=None):
        """One draw of the estimator of eq. (L) per sequence at times ``t`` [B]: (total [B], integrand
        part [B], reconstruction part [B], z_t != x [B, M], aux)."""
        t = t.double()
        below = t < self.eps  # these rows estimate the reconstruction term, at t = eps
        t_in = t.clamp_min(self.eps)
        a = alpha(self.schedule, t_in)
        z_t = corrupt(x, a, K, generator)
        out = model(z_t, t=t_in.float(), cond=cond, targets=targets)
        logp = F.log_softmax(out.logits.double(), -1)
        g = integrand(logp, x, z_t, a, alpha_rate(self.schedule, t_in)).sum(1)  # eq. (G): int_eps^1 of (L)
        rec = reconstruction(logp, x, z_t, a).sum(1) / self.eps  # the reconstruction term of (L), over [0, eps)
        diff, recon = torch.where(below, 0.0, g), torch.where(below, rec, 0.0)
        return diff + recon, diff, recon, z_t != x, out.aux

    def loss(self, model, x, cond):
        t = draw_times(len(x), x.device, "stratified")
        K = unwrap(model).codebook.vocab_size
        total, _, _, changed, aux = self.nelbo(model, x, cond, t, K, targets=x)
        loss = (total.mean() / x.shape[1]).float()
        return with_aux(loss, {"l_nelbo": loss, "noise_frac": changed.float().mean()}, aux)

    @torch.no_grad()
    def nll_bound(self, model, x, cond, t):
        total, diff, recon, _, _ = self.nelbo(model, x, cond, t, model.codebook.vocab_size)
        return {"total": total, "diffusion": diff, "reconstruction": recon}

    @torch.no_grad()
    def sample(self, model, req):
        n, seq_len, steps, device, generator = req.n, req.seq_len, req.steps, req.device, req.generator
        known, known_mask = check_sampling(n, seq_len, req.final, req.known, req.known_mask, device, steps)
        K = model.codebook.vocab_size
        times = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
        alphas = alpha(self.schedule, times).tolist()
        z = torch.randint(K, (n, seq_len), generator=generator).to(device)  # z_1 ~ Cat(1/K): alpha_1 = 0
        for j in range(steps):
            if known is not None:
                z = torch.where(known_mask, known, z)
            t = torch.full((n,), times[j].item(), device=device)
            logp = x0_log_probs(model, z, t, req.cond, req.guidance, req.null_id)
            probs = posterior(logp.double().exp(), z, alphas[j], alphas[j + 1])  # p_theta(z_s | z_t): (P), x_theta
            z = read_final(probs.log(), req.final, generator) if j == steps - 1 else draw(probs, generator)  # s = 0: final
        return z if known is None else torch.where(known_mask, known, z)
