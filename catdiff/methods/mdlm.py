"""MDLM: masked diffusion with its continuous-time ELBO (Sahoo et al. 2024, "Simple and
effective masked diffusion language models", arXiv 2406.07524, kuleshov-group/mdlm).

Forward process (MDLM sec. 3.1, the interpolating process with pi = [mask]): every token
independently becomes [mask] (codebook row K, ``mask_id``) with probability 1 - alpha_t,
    q(z_t | x) = Cat(z_t; alpha_t x + (1 - alpha_t) m),   t in [0, 1], alpha_0 = 1, alpha_1 = 0.
Schedules (option ``mdlm_schedule``):
- ``loglinear`` (default): alpha_t = 1 - t (MDLM's log-linear noise, total noise
  sigma_t = -log(1 - t), without its 1e-3 floor on alpha_1);
- ``cosine``: alpha_t = cos(pi t / 2) (MDLM's cosine noise, again without the floor).
Both reach alpha_1 = 0, so z_1 is all [mask] and the prior term of the ELBO vanishes.

SUBS parameterisation (sec. 3.2.1), x_theta(z_t) = the network's prediction of x:
- zero masking probabilities: the network's logits have K columns, the data tokens only, so
  x_theta never puts mass on [mask] (row K has no column to be predicted in);
- carry-over unmasking: where z_t is not [mask], x_theta is the one-hot of z_t (:func:`subs`);
  such positions add log 1 = 0 to the loss, and the sampler never changes them.
Time input: none. The network always receives t = 0 (a constant): with SUBS the time input
can be dropped (MDLM: the number of [mask] tokens carries it; its OpenWebText models have
none), and a network of z_t alone is what makes the cached sampler exact.

Loss: the continuous-time negative ELBO (MDLM eq. 10, summed over positions as in eq. 11):
    L(x) = E_{t ~ U[0, 1]} E_{z_t ~ q(.|x)} [ w(t) sum_{i: z_t^i = [mask]} -log x_theta^i(z_t)[x^i] ],
    w(t) = -alpha'_t / (1 - alpha_t)  (1/t for loglinear, (pi/2) / tan(pi t / 4) for cosine),
with no reconstruction term (z_0 = x) and no prior term (alpha_1 = 0). Times are drawn
low-discrepancy (MDLM's antithetic sampling; Kingma et al. 2021 app. I.1): one offset u per
batch, t_b = (u + b / B) mod 1 (:func:`catdiff.methods.shared.draw_times`), then clamped to
t >= eps (option ``mdlm_eps``, 1e-3 as MDLM's sampling_eps): w(t) diverges at 0 while the
number of masked tokens vanishes, and without the clamp the estimator's variance diverges
(logarithmically). With it the estimator's mean is int_eps^1 g + eps g(eps) for the integrand
g, which is continuous at 0 (g(0+) = sum_i -log x_theta^i(x with only i masked)), so the bias
against int_0^1 g is O(eps^2). The training loss is the batch mean of L(x) / M (nats per
token), plus the backbone's auxiliary loss (``with_aux``).

Bound: ``nll_bound`` returns L(x) per sequence in nats, one draw of z_t at the engine's
(stratified) times with the same clamp. It bounds -log p_theta(x) of the continuous-time
sampler, which reveals the positions in a uniformly random order sigma, each from x_theta
given the ones revealed before: p_theta(x) = mean_sigma prod_i x_theta(x_sigma(i) | x_sigma(<i)).
L(x) equals mean_sigma of -log of that product (the any-order autoregressive loss; any
schedule), so Jensen gives L(x) >= -log p_theta(x).

Samplers (``steps`` = N, times t_j = j / N from t_N = 1 down to t_0 = 0): from t to s every
[mask] position is revealed with probability (alpha_s - alpha_t) / (1 - alpha_t), its token
drawn from the (guided) x0 prediction; revealed and known positions are carried over. This is
p_theta(z_s | z_t) = q(z_s | z_t, x = x_theta(z_t)) with the masked posterior of sec. 3.1
(q(z_s | z_t = m, x) = Cat(z_s; ((1 - alpha_s) m + (alpha_s - alpha_t) x) / (1 - alpha_t))).
The last step (s = 0, alpha_0 = 1) reveals everything left, its tokens read by ``final``:
``sample`` draws them like every other step (the exact ancestral sampler), ``argmax`` takes
the most likely token (MDLM's final noise-removal step).
- ``cached`` (the default): MDLM's efficient sampler (its ``ddpm_cache``): x_theta depends on
  z_t only, so a row's prediction is reused until one of its positions changes; each step runs
  the network on the rows that changed at the previous step only (none: no call).
- ``ancestral``: the same steps with a network call on every row at every step.
Both draw the same random numbers (two uniforms per position per step: reveal, and the token
by inverse CDF), so for one generator they give the same samples whenever the network's
output for a row does not depend on which other rows share its batch (so on CPU, where the
tests check it; GPU kernels chosen by batch size may round differently, which can change a
rare draw but not the distribution).
Classifier-free guidance: on the x0 prediction (paper 004 eq. 7, ``x0_log_probs``).
Infilling / prompts: known positions start unmasked and stay (carry-over). Translation: the
task fixes each target's length through known PAD positions, as for the other methods.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..api.method import Method
from ..api.settings import Setting
from .discrete import masked_start, x0_log_probs
from .shared import draw_times, unwrap, with_aux

SCHEDULES = ("loglinear", "cosine")


def alpha(schedule: str, t: torch.Tensor) -> torch.Tensor:
    """alpha_t: the probability that a token is still unmasked at time t."""
    if schedule == "loglinear":
        return 1 - t
    return torch.cos(math.pi / 2 * t)


def weight(schedule: str, t: torch.Tensor) -> torch.Tensor:
    """w(t) = -alpha'_t / (1 - alpha_t) of the continuous-time NELBO (MDLM eq. 10), t > 0:
    1/t for loglinear; (pi/2) sin(pi t/2) / (1 - cos(pi t/2)) = (pi/2) / tan(pi t/4) for cosine."""
    if schedule == "loglinear":
        return 1 / t
    return (math.pi / 2) / torch.tan(math.pi / 4 * t)


def no_time(x: torch.Tensor) -> torch.Tensor:
    """The network's time input: a constant 0 per row (no time conditioning, module doc)."""
    return torch.zeros(x.shape[0], device=x.device)


def corrupt(x: torch.Tensor, alpha_t: torch.Tensor, mask_id: int, generator: torch.Generator | None = None):
    """z_t ~ q(z_t | x): each token -> ``mask_id`` with probability 1 - alpha_t ([B]); returns
    (z_t, masked [B, M])."""
    device = x.device if generator is None else generator.device
    u = torch.rand(x.shape, generator=generator, device=device, dtype=torch.float64).to(x.device)
    masked = u < (1 - alpha_t.double())[:, None]
    return torch.where(masked, mask_id, x), masked


def denoise(model, z_t: torch.Tensor, cond, targets=None):
    """The one call of the network's forward: (log x_theta(z_t) [B, M, K] before carry-over, in
    float32, the backbone's aux loss or None). Sampling goes through ``x0_log_probs``."""
    out = model(z_t, t=no_time(z_t), cond=cond, targets=targets)
    return F.log_softmax(out.logits.float(), -1), out.aux


def subs(logp: torch.Tensor, z_t: torch.Tensor, mask_id: int) -> torch.Tensor:
    """SUBS (MDLM sec. 3.2.1) on log-probabilities [B, M, K]: carry-over unmasking, log x_theta^i
    = log one-hot(z_t^i) where z_t^i is not [mask]. (Zero masking probabilities hold already:
    there is no [mask] column.)"""
    carried = z_t != mask_id
    onehot = F.one_hot(torch.where(carried, z_t, 0), logp.shape[-1]).bool()
    copied = torch.zeros_like(logp).masked_fill(~onehot, -math.inf)
    return torch.where(carried[..., None], copied, logp)


def inverse_cdf(logp: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One categorical draw per row of ``logp`` [..., K] from uniforms ``u`` [...]: the k with
    cdf_{k-1} <= u * cdf_K < cdf_k (a zero-probability token is never drawn)."""
    cdf = logp.double().exp().cumsum(-1)
    return (cdf <= (u * cdf[..., -1])[..., None]).sum(-1).clamp_max(logp.shape[-1] - 1)


class MDLM(Method):
    """Masked diffusion, SUBS, continuous-time NELBO, ancestral and cached samplers (module doc)."""

    name = "mdlm"
    description = "MDLM (Sahoo et al. 2024): masked diffusion on its continuous-time ELBO"
    samplers = ("cached", "ancestral")
    settings = (
        Setting("mdlm_schedule", "loglinear", "alpha_t: loglinear (1 - t) | cosine", choices=SCHEDULES),
        Setting("mdlm_eps", 1e-3, "smallest training time (t is clamped to >= eps)", low=0, low_open=True, high=0.5),
    )

    def __init__(self, cfg):
        super().__init__(cfg)
        self.schedule = cfg.mdlm_schedule
        self.eps = float(cfg.mdlm_eps)

    def nelbo(self, model, x, cond, t, mask_id: int, targets=None, generator=None):
        """(w(t) sum_i -log x_theta^i(z_t)[x^i] per sequence [B] (the eq. 10 integrand at t, one
        z_t; carried-over positions add 0), the mask [B, M], aux) at times ``t`` clamped to >= eps."""
        t = t.double().clamp(self.eps, 1)
        z_t, masked = corrupt(x, alpha(self.schedule, t), mask_id, generator)
        logp, aux = denoise(model, z_t, cond, targets)
        nll = -subs(logp, z_t, mask_id).gather(-1, x[..., None]).squeeze(-1)
        return weight(self.schedule, t).to(nll.dtype) * nll.sum(1), masked, aux

    def loss(self, model, x, cond):
        t = draw_times(len(x), x.device, "stratified")
        nelbo, masked, aux = self.nelbo(model, x, cond, t, unwrap(model).codebook.mask_id, targets=x)
        loss = nelbo.mean() / x.shape[1]
        return with_aux(loss, {"l_nelbo": loss, "mask_frac": masked.float().mean()}, aux)

    @torch.no_grad()
    def nll_bound(self, model, x, cond, t):
        return {"total": self.nelbo(model, x, cond, t, model.codebook.mask_id)[0].double()}

    @torch.no_grad()
    def sample(self, model, req):
        n, seq_len, steps, device, generator, cond = req.n, req.seq_len, req.steps, req.device, req.generator, req.cond
        x = masked_start(model, n, seq_len, req.final, req.known, req.known_mask, device, steps)
        mask_id = model.codebook.mask_id
        alphas = alpha(self.schedule, torch.linspace(1, 0, steps + 1, dtype=torch.float64)).tolist()
        logp = torch.zeros(n, seq_len, model.codebook.vocab_size, device=device)  # x0 predictions, per row
        stale = torch.ones(n, dtype=torch.bool, device=device)  # rows whose prediction is out of date
        for j in range(steps):
            u_reveal, u_token = torch.rand((2, n, seq_len), generator=generator, dtype=torch.float64).to(device)
            masked = x == mask_id
            if not masked.any():
                break
            rows = stale if req.sampler == "cached" else torch.ones_like(stale)
            if rows.any():
                logp[rows] = x0_log_probs(model, x[rows], no_time(x[rows]), None if cond is None else cond[rows],
                                          req.guidance, req.null_id).float()
            a_t, a_s = alphas[j], alphas[j + 1]
            reveal = masked & (u_reveal < (a_s - a_t) / (1 - a_t))  # the masked posterior (sec. 3.1); 1 at s = 0
            argmax = j == steps - 1 and req.final == "argmax"  # carry-over: only revealed [mask] positions change
            stale = reveal.any(1)
            x[reveal] = logp[reveal].argmax(-1) if argmax else inverse_cdf(logp[reveal], u_token[reveal])
        return x
