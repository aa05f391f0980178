"""Noise schedules in log-SNR form (variance preserving).

lambda(t) = log SNR(t), alpha_t^2 = sigmoid(lambda), sigma_t^2 = sigmoid(-lambda), so
alpha^2 + sigma^2 = 1 by construction. Paper 003 sec. 5.2 (shifted cosine):

    lambda(t) = -2 log tan(pi t / 2) + s

which is infinite at t = 0 and t = 1. We clip it to [logsnr_min, logsnr_max] by
*truncating the time axis* rather than clamping the value: t in [0, 1] maps linearly
onto [u_min, u_max] with lambda(u_min) = logsnr_max and lambda(u_max) = logsnr_min.
Then z_0 and z_1 sit exactly at the clip values and lambda stays smooth and strictly
decreasing, so SNR'(t) (needed by the continuous-time bound, eq. 3) is finite and
never zero.

The clip values are ours (the paper gives none). ``logsnr_max`` = 8 puts noise of std
e^-4 ~ 0.018 per dimension on z_0, far below the distance between embeddings, so L0 stays
~0. A higher clip only adds a stretch of tiny noise where the bound's weight -SNR'(t)/2
grows like e^lambda while a network's error ||EMB - EMB_hat||^2 stops shrinking (softmax
confidence is finite: wrong-token probabilities ~1e-4): with 15, that stretch held about
half of the digits model's L_inf and made its Monte-Carlo estimate heavy-tailed (most t
draws miss it), and both text-tdavid's BPC and the digits bound were worse and noisier than
with 8 (figures: docs/method.md, "Choices where the paper is silent").
"""
from __future__ import annotations

import math

import torch

from ..shared import T_DRAWS, draw_times  # noqa: F401 - re-exported: CATDM's training times


class ShiftedCosineSchedule:
    def __init__(self, shift: float = 0.0, logsnr_min: float = -15.0, logsnr_max: float = 8.0):
        if not logsnr_min < logsnr_max:
            raise ValueError(f"logsnr_min ({logsnr_min}) must be < logsnr_max ({logsnr_max})")
        self.shift = float(shift)
        self.logsnr_min = float(logsnr_min)
        self.logsnr_max = float(logsnr_max)
        # tan(u) = exp(-(lambda - s) / 2)  <=>  lambda(u) = s - 2 log tan(u)
        self.u_min = math.atan(math.exp(-0.5 * (logsnr_max - self.shift)))
        self.u_max = math.atan(math.exp(-0.5 * (logsnr_min - self.shift)))

    def __repr__(self) -> str:
        return f"ShiftedCosineSchedule(shift={self.shift}, logsnr=[{self.logsnr_min}, {self.logsnr_max}])"

    def _u(self, t: torch.Tensor) -> torch.Tensor:
        return self.u_min + t * (self.u_max - self.u_min)

    def logsnr(self, t: torch.Tensor) -> torch.Tensor:
        return self.shift - 2.0 * torch.log(torch.tan(self._u(t)))

    def time_of(self, logsnr: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`logsnr`: t with lambda(t) = ``logsnr`` (in [logsnr_min, logsnr_max])."""
        u = torch.atan(torch.exp((self.shift - logsnr) / 2))
        return (u - self.u_min) / (self.u_max - self.u_min)

    def dlogsnr_dt(self, t: torch.Tensor) -> torch.Tensor:
        # d/du [-2 log tan u] = -2 / (sin u cos u) = -4 / sin(2u)
        return -4.0 * (self.u_max - self.u_min) / torch.sin(2.0 * self._u(t))

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lam = self.logsnr(t)
        return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()

    def dsnr_dt(self, t: torch.Tensor) -> torch.Tensor:
        """SNR'(t) = exp(lambda) lambda'(t) (negative)."""
        return torch.exp(self.logsnr(t)) * self.dlogsnr_dt(t)



class TimeWarp:
    """A learned density of training times (CDCD, Dieleman et al. 2022, sec. 3.3, "time
    warping"; Plaid's ``LossCDF`` is another implementation).

    The cross-entropy -log P(x | z_t; t) of the posterior rises with t, from ~0 at z_0 to about
    log K at z_1. An EMA of its mean per time bin, made monotone (a running maximum), and
    normalised to [0, 1] is a CDF F(t) through the bin centres; training times are
    t = F^-1(u), u ~ U(0, 1), so the density of t is proportional to dCE/dt: steps go where
    the loss still changes with the noise level, not where it is flat (pure noise, or z_0). A
    share ``floor`` of the density stays uniform, so every bin keeps being visited and its
    statistic current. Until every bin has been seen, times are uniform.

    How it composes with the rest of CATDM: the shifted cosine schedule still maps t to
    log-SNR (the warp changes which t are trained on, not what they mean: together they act
    as a learned training schedule); L_CM's s ~ U(0, t) is drawn below the warped t, so the
    teacher still sits at a lower noise level; the bound (eq. 3, evaluation) keeps uniform t.
    The unweighted L_DM / L_CM are reweighted by the warp (as CDCD's CE is); ``csdm``'s VLB
    divides each row by the density, which keeps it an unbiased bound estimate.
    """

    def __init__(self, bins: int = 64, rate: float = 0.98, floor: float = 0.2):
        self.bins, self.rate, self.floor = bins, rate, floor
        self.loss = torch.zeros(bins, dtype=torch.float64)
        self.seen = torch.zeros(bins, dtype=torch.bool)
        self._warm = False

    # The statistics live on the device of the training times (moved there by the first update),
    # and nothing below reads a value back to the host once the warp is warm: no sync per step.
    @property
    def warm(self) -> bool:
        if not self._warm:
            self._warm = bool(self.seen.all())
        return self._warm

    def update(self, t: torch.Tensor, ce: torch.Tensor) -> None:
        """Fold the per-row mean cross-entropy ``ce`` [B] at times ``t`` [B] into the bin EMAs."""
        self.loss, self.seen = self.loss.to(t.device), self.seen.to(t.device)
        idx = (t.detach().double() * self.bins).long().clamp(0, self.bins - 1)
        ce = ce.detach().double()
        sums = torch.zeros_like(self.loss).index_add_(0, idx, ce)
        counts = torch.zeros_like(self.loss).index_add_(0, idx, torch.ones_like(ce))
        hit = counts > 0
        mean = sums / counts.clamp_min(1)
        ema = torch.where(self.seen, self.rate * self.loss + (1 - self.rate) * mean, mean)
        self.loss = torch.where(hit, ema, self.loss)  # a fresh bin takes its first mean
        self.seen = self.seen | hit

    def knots(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, F(t)) of the piecewise-linear CDF, uniform share included: [bins + 2] each."""
        dev = self.loss.device
        centres = (torch.arange(self.bins, dtype=torch.float64, device=dev) + 0.5) / self.bins
        t = torch.cat([torch.zeros(1, dtype=torch.float64, device=dev), centres,
                       torch.ones(1, dtype=torch.float64, device=dev)])
        if not self.warm:
            return t, t.clone()
        mono = torch.cummax(self.loss, 0).values
        mono = torch.cat([mono[:1], mono, mono[-1:]])
        span = mono[-1] - mono[0]
        learned = torch.where(span > 1e-12, (mono - mono[0]) / span.clamp_min(1e-12), t)
        return t, (1 - self.floor) * learned + self.floor * t

    def sample(self, n: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
        """[n] times t = F^-1(u) (stratified u: one per interval [i/n, (i+1)/n)); u is drawn on the
        generator's device, else on the statistics' device."""
        at = generator.device if generator is not None else self.loss.device
        u = (torch.rand(1, dtype=torch.float64, generator=generator, device=at)
             + torch.arange(n, dtype=torch.float64, device=at)) / n
        return self.inverse(u).float().to(device)

    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        """F^-1(u) for u in [0, 1], by linear interpolation between the knots."""
        t, F = self.knots()
        u = u.double().to(F.device).clamp(0, 1)
        j = torch.searchsorted(F, u, right=True).clamp(1, len(F) - 1)
        f0, f1, t0, t1 = F[j - 1], F[j], t[j - 1], t[j]
        return (t0 + (u - f0) / (f1 - f0).clamp_min(1e-12) * (t1 - t0)).clamp(0, 1 - 1e-7)

    def density(self, t: torch.Tensor) -> torch.Tensor:
        """f(t) = F'(t) (>= floor), for importance weights."""
        knots_t, F = self.knots()
        tt = t.detach().double().to(F.device)
        j = torch.searchsorted(knots_t, tt, right=True).clamp(1, len(F) - 1)
        slope = (F[j] - F[j - 1]) / (knots_t[j] - knots_t[j - 1])
        return slope.float().to(t.device)

    def grid(self, steps: int, device) -> torch.Tensor:
        """Sampling times t_n = F^-1(n / N), n = 0..N (CDCD samples on the warped grid)."""
        g = self.inverse(torch.linspace(0, 1, steps + 1, dtype=torch.float64))
        g[0], g[-1] = 0.0, 1.0
        return g.float().to(device)

    def state_dict(self) -> dict:
        return {"loss": self.loss.cpu().clone(), "seen": self.seen.cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        self.loss = torch.as_tensor(state["loss"], dtype=torch.float64).clone()  # a tensor, or a list (exports)
        self.seen = torch.as_tensor(state["seen"], dtype=torch.bool).clone()
        self._warm = False
