"""The CATDM training objective and the continuous-time likelihood bound.

Paper 003 (CATDM): eq. 2 (posterior-weighted embedding), eq. 3 (VLB), eq. 4 (L_CM),
sec. 5.1 (L_DM), sec. 5.3 (random dropping), appendix F.4 (L_CE); paper 000 Algorithm 1.

Every term is a per-sequence sum over tokens (and embedding dims), averaged over the batch.

Choices where the paper is ambiguous (docs/method.md; their measurements: docs/results.md):
- Random dropping replaces tokens of the network *input* by the learned [mask] row, for
  both student inputs (z_0 for L0 and z_t); targets stay the clean tokens.
  ``rand``: each token dropped with prob ``drop_ratio``; ``linear``: with prob
  ``drop_ratio * t`` (0 at t=0); ``rand_ratio``: a per-sequence ratio ~ U(0, drop_ratio).
- ``drop_l0`` (ours; None, the default, = the strategy's ratio): the drop probability of the
  z_0 pass alone. L0 on dropped inputs is a masked-token loss at t = 0, so a higher ratio
  there trains the network to fill in tokens from context. The digits task sets 0.5 (z_t
  keeps 0.2), which lowered its FID (docs/notes.md, "Digits: what moved FID").
- ``l0_rows`` (ours; 1, the default, = every row as in Algorithm 1): the fraction of the batch
  whose z_0 pass estimates L0. A Monte Carlo choice, not a change of the objective: the mean
  of L0 over a random subset of the rows is an unbiased estimate of its batch mean, at the
  price of more variance in that term. The z_0 pass doubles the rows of the student's pass,
  so a smaller share makes a step shorter; on digits, at equal training time, 0.25 gave a
  worse and noisier FID than 1 (docs/notes.md, "Cheaper CATDM steps"), hence the default.
- z_bar_s follows Algorithm 1 line 5 literally: the EMA codebook embeds the *undropped*
  x, and z_t is the student's (dropped) noisy input.
- The teacher (EMA network) runs without dropout and without gradient.
- ``l0_rows=auto`` (ours, after Plaid's reconstruction batch share): the share of rows in the
  z_0 pass follows the spread of the terms, K / B = sd(L0) / sd(rest) (Neyman allocation of
  rows between two estimated terms), from EMAs of the per-row standard deviations, clipped to
  [1 / B, 1]. The EMAs stay on the device; the share is read back to the host once every
  ``log_every`` steps (a host read every step stalls a GPU), so it is 1 until then and lags
  the EMAs by at most ``log_every`` steps.
- ``time_warp`` (ours, after CDCD sec. 3.3): training times drawn from a learned density
  (:class:`.schedule.TimeWarp`, whose docstring says how it composes with the schedule and
  L_CM); ``csdm``'s VLB divides each row by the density so its estimate stays unbiased.
- Self-conditioning (``self_cond``, not in the paper): for a share ``self_cond_rate`` of the
  rows (half by default, as Chen et al. 2022), drawn per row, a first gradient-free student
  pass gives EMB_hat, which the second pass reads; the other rows read none. The teacher at z_bar_s reads the same estimate the
  student had at z_t: as in sampling, where the step to s reads the estimate made at t.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...nn.model import predicted_embedding
from ..shared import unwrap, with_aux
from .schedule import ShiftedCosineSchedule, TimeWarp, draw_times

OBJECTIVES = ("catdm", "csdm", "csdm_l2", "ce")  # config key ``objective``
DROPS = ("rand", "linear", "rand_ratio", "none")  # config key ``drop``


def kl_categorical(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) over the last axis from log-probabilities; >= 0, 0 iff P = Q."""
    return (logp.exp() * (logp - logq)).sum(-1)


def prior_kl(emb: torch.Tensor, alpha1: torch.Tensor, sigma1: torch.Tensor) -> torch.Tensor:
    """KL(q(z_1|x) || N(0, I)) per sequence, for emb [B, M, D] and scalars alpha_1, sigma_1."""
    var = sigma1**2
    per_elem = 0.5 * (var + alpha1**2 * emb**2 - 1.0 - torch.log(var))
    return per_elem.flatten(1).sum(-1)


def drop_mask(x: torch.Tensor, t: torch.Tensor, strategy: str, ratio: float, ratio_at_0: float | None = None) -> torch.Tensor:
    """Boolean [B, M]: positions whose input embedding becomes [mask] (paper sec. 5.3, Table 7).

    ``ratio_at_0`` (None: the strategy's) is the drop probability of rows with t == 0 (the z_0 pass of L0)
    in place of the strategy's; ``strategy="none"`` drops nothing anywhere."""
    if strategy == "none" or (ratio <= 0 and not ratio_at_0):
        return torch.zeros_like(x, dtype=torch.bool)
    if strategy == "rand":
        p = torch.full_like(t, ratio)
    elif strategy == "linear":
        p = ratio * t
    elif strategy == "rand_ratio":
        p = ratio * torch.rand_like(t)
    else:
        raise ValueError(f"unknown drop strategy {strategy!r}; choose one of {DROPS}")
    if ratio_at_0 is not None:
        p = torch.where(t == 0, torch.full_like(p, ratio_at_0), p)
    return torch.rand(x.shape, device=x.device) < p[:, None]


class CATDMObjective:
    """L = L0 + beta_DM L_DM + beta_CM L_CM (paper 003 sec. 5.1) and its ablations.

    ``objective``: ``catdm`` (as above), ``ce`` (L_CE in place of L_CM, appendix F.4),
    ``csdm`` (the plain VLB, eq. 3: prior KL + L0 + L_inf), ``csdm_l2`` (VLB plus
    ``l2_weight`` * sum of squared input embeddings).
    """

    def __init__(self, cfg, schedule: ShiftedCosineSchedule):
        if cfg.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {cfg.objective!r}; choose one of {OBJECTIVES}")
        if cfg.drop not in DROPS:
            raise ValueError(f"unknown drop strategy {cfg.drop!r}; choose one of {DROPS}")
        self.cfg = cfg
        self.schedule = schedule
        self.warp = TimeWarp() if cfg.time_warp != "off" else None
        self.spread: torch.Tensor | None = None  # [2] EMAs of sd(L0 per row), sd(rest per row): l0_rows=auto
        self.share = 1.0  # the host's copy of sd(L0) / sd(rest), refreshed every log_every updates
        self.updates = 0

    def l0_share(self) -> float:
        """The share of rows in the z_0 pass: ``l0_rows``, or for auto sd(L0) / sd(rest)."""
        if self.cfg.l0_rows is not None:
            return self.cfg.l0_rows
        return self.share

    def state_dict(self) -> dict:
        out = {"time_warp": self.warp.state_dict()} if self.warp is not None else {}
        if self.spread is not None:
            out.update(spread=self.spread.detach().cpu(), share=self.share, updates=self.updates)
        return out

    def load_state_dict(self, state: dict) -> None:
        if self.warp is not None and "time_warp" in state:
            self.warp.load_state_dict(state["time_warp"])
        if "spread" in state:  # a list in an export
            self.spread = torch.as_tensor(state["spread"], dtype=torch.float64)
            self.share = float(state.get("share", self.share_of(self.spread)))  # older checkpoints: from the EMAs
            self.updates = int(state.get("updates", 0))

    def __call__(self, model, teacher, x: torch.Tensor, cond: torch.Tensor | None = None):
        """Returns (loss, logs). ``model`` may be DDP-wrapped; ``teacher`` is the EMA Denoiser (None
        unless L_CM is trained)."""
        cfg, sch = self.cfg, self.schedule
        B = x.shape[0]
        codebook = unwrap(model).codebook
        warped = self.warp is not None and self.warp.warm
        t = self.warp.sample(B, x.device) if warped else draw_times(B, x.device, cfg.t_draw)
        # one student pass over [z_0 of the first K rows ; z_t of all B] (L0 needs z_0 at t = 0);
        # the batch is a random draw, so its first K rows are a random subset (l0_rows = K / B)
        K = max(1, round(self.l0_share() * B))
        if cfg.l0_rows is None:
            K = max(K, min(2, B))  # auto measures the spread of L0: at least two rows
        t2 = torch.cat([torch.zeros_like(t[:K]), t])
        x2 = torch.cat([x[:K], x])
        cond2 = None if cond is None else torch.cat([cond[:K], cond])
        dropped = drop_mask(x2, t2, cfg.drop, cfg.drop_ratio, cfg.drop_l0)
        x_in = torch.where(dropped, codebook.mask_id, x2)
        alpha2, sigma2 = sch.alpha_sigma(t2)
        noise = torch.randn(K + B, x.shape[1], codebook.weight.shape[1], device=x.device)
        prev2 = (self.self_condition(model, x_in, alpha2, sigma2, noise, t2, cond2, cfg.self_cond_rate)
                 if cfg.self_cond else None)
        out = model(x_in, alpha2, sigma2, noise, t2, cond2, targets=x2, prev=prev2)
        logits0, logits_t = out.logits.float().split([K, B])
        z_t, emb, e_data = out.z[K:], out.target_emb[K:], out.codebook  # emb = EMB_phi(x), the clean target
        prev_t = None if prev2 is None else prev2[K:]

        # L0 = E[-log P(x | z_0; 0)]  (sec. 4.2), estimated on the K rows
        l0 = F.cross_entropy(logits0.transpose(1, 2), x[:K], reduction="none").sum(-1)
        # ||EMB(x) - EMB_hat(z_t; t)||^2  (eq. 2, 3)
        sq_err = (emb - predicted_embedding(logits_t, e_data)).pow(2).flatten(1).sum(-1)
        logs = {"l0": l0.mean()}
        vlb = cfg.objective in ("csdm", "csdm_l2")
        logp_t = F.log_softmax(logits_t, -1) if self.warp is not None or not vlb else None
        token_ce = None if logp_t is None else -logp_t.gather(-1, x[..., None]).squeeze(-1)  # [B, M]
        if self.warp is not None:  # the warp's statistic: mean CE per token of each row at its t
            self.warp.update(t, token_ce.detach().mean(-1))

        if vlb:
            # eq. 3: prior KL + L0 + L_inf, L_inf = -1/2 SNR'(t) ||EMB - EMB_hat||^2
            one = torch.ones(1, device=x.device)
            a1, s1 = sch.alpha_sigma(one)
            prior = prior_kl(emb, a1, s1)
            l_inf = -0.5 * sch.dsnr_dt(t) * sq_err
            if warped:  # t ~ f(t), not U(0, 1): importance weight 1 / f(t) keeps the VLB unbiased
                l_inf = l_inf / self.warp.density(t)
            rest = prior + l_inf
            logs.update(prior=prior.mean(), l_inf=l_inf.mean())
            if cfg.objective == "csdm_l2":
                l2 = emb.pow(2).flatten(1).sum(-1)
                rest = rest + cfg.l2_weight * l2
                logs["l2"] = l2.mean()
        else:
            l_dm = sq_err  # sec. 5.1: unweighted
            logs["l_dm"] = l_dm.mean()
            if cfg.objective == "ce":
                reg = token_ce.sum(-1)  # L_CE (app. F.4)
                logs["l_ce"] = reg.mean()
            elif cfg.beta_cm > 0:
                reg = self.consistency(teacher, x, t, z_t.detach(), logp_t, cond, prev_t)
                logs["l_cm"] = reg.mean()
            else:
                reg = torch.zeros_like(l_dm)
            rest = cfg.beta_dm * l_dm + cfg.beta_cm * reg
        loss = l0.mean() + rest.mean()
        if cfg.l0_rows is None:  # every objective: L0 against the other terms per row
            self.track_spread(l0, rest)
        return with_aux(loss, logs, out.aux)  # + the backbone's own loss (e.g. target length), every row

    @torch.no_grad()
    def track_spread(self, l0: torch.Tensor, rest: torch.Tensor, rate: float = 0.95) -> None:
        """EMAs of the per-row standard deviations of L0 and of the other terms (l0_rows=auto), on
        the device; every ``log_every`` updates the share is read back (one host read)."""
        if len(l0) < 2:
            return
        now = torch.stack([l0.float().std(), rest.float().std()]).double()
        self.spread = now if self.spread is None else rate * self.spread.to(now.device) + (1 - rate) * now
        self.updates += 1
        if self.updates % max(1, self.cfg.log_every) == 0:
            self.share = self.share_of(self.spread)

    @staticmethod
    def share_of(spread: torch.Tensor) -> float:
        """sd(L0) / sd(rest), at most 1, from the EMAs ``spread`` (one host read)."""
        a, b = spread.tolist()
        return min(1.0, a / max(b, 1e-12))

    @staticmethod
    @torch.no_grad()
    def self_condition(model, x_in, alpha, sigma, noise, t, cond, rate: float = 0.5):
        """EMB_hat of a first gradient-free pass for a random share ``rate`` of the rows, zeros elsewhere."""
        rows = torch.rand(x_in.shape[0], device=x_in.device) < rate
        prev = torch.zeros_like(noise)
        if rows.any():
            sub = lambda v: None if v is None else v[rows]  # noqa: E731
            out = model(x_in[rows], alpha[rows], sigma[rows], noise[rows], t[rows], sub(cond))
            prev[rows] = predicted_embedding(out.logits.float(), out.codebook.float()).to(prev.dtype)
        return prev

    def consistency(self, teacher, x, t, z_t, logp_t, cond, prev_t=None):
        """L_CM (eq. 4): KL(P_theta_bar(x~ | z_bar_s; s) || P_theta(x~ | z_t; t)), s ~ U(0, t),
        z_bar_s one DDIM step from z_t using the EMA codebook (Algorithm 1 line 5). With
        self-conditioning the teacher reads the student's estimate ``prev_t`` made at z_t."""
        s = t * torch.rand_like(t)
        with torch.no_grad():
            a_t, s_t = self.schedule.alpha_sigma(t)
            a_s, s_s = self.schedule.alpha_sigma(s)
            emb_bar = teacher.codebook(x)
            z_s = ddim_point(z_t, emb_bar, a_t, s_t, a_s, s_s)
            logp_s = F.log_softmax(teacher.logits(z_s, s, cond, prev_t).float(), -1)
        return kl_categorical(logp_s, logp_t).sum(-1)


def ddim_point(z_t, x0, a_t, s_t, a_s, s_s):
    """z_s = alpha_s x0 + (sigma_s / sigma_t)(z_t - alpha_t x0)  (DDIM, variance preserving)."""
    a_t, s_t, a_s, s_s = (v.view(-1, 1, 1) for v in (a_t, s_t, a_s, s_s))
    return a_s * x0 + (s_s / s_t) * (z_t - a_t * x0)


@torch.no_grad()
def likelihood_bound(model, x, schedule: ShiftedCosineSchedule, cond=None, t=None) -> dict[str, torch.Tensor]:
    """Continuous-time bound of eq. 3, per sequence, in nats:
    -log P(x) <= KL(q(z_1|x) || N(0,I)) + L0 + L_inf, one Monte-Carlo draw of (t, eps) per row.

    ``t`` [B] may be given (e.g. stratified); defaults to U(0, 1). No random dropping.
    Returns ``{"prior", "l0", "l_inf", "total"}`` tensors of shape [B].
    """
    B = x.shape[0]
    dev = x.device
    if t is None:
        t = torch.rand(B, device=dev)
    emb = model.codebook(x)
    a1, s1 = schedule.alpha_sigma(torch.ones(1, device=dev))
    prior = prior_kl(emb, a1, s1)
    t2 = torch.cat([torch.zeros_like(t), t])
    a2, s2 = schedule.alpha_sigma(t2)
    z2 = a2[:, None, None] * torch.cat([emb, emb]) + s2[:, None, None] * torch.randn(2 * B, *emb.shape[1:], device=dev)
    cond2 = None if cond is None else torch.cat([cond, cond])
    logits0, logits_t = model.posterior_logits(z2, t2, cond2).float().chunk(2)
    l0 = F.cross_entropy(logits0.transpose(1, 2), x, reduction="none").sum(-1)
    sq = (emb - predicted_embedding(logits_t, model.codebook.data)).pow(2).flatten(1).sum(-1)
    l_inf = -0.5 * schedule.dsnr_dt(t) * sq
    return {"prior": prior, "l0": l0, "l_inf": l_inf, "total": prior + l0 + l_inf}
