"""CATDM (paper 003): continuous diffusion over a jointly learned codebook.

- :mod:`.schedule`: the shifted cosine noise schedule (sec. 5.2) and training-time draws
- :mod:`.objective`: L0 + beta_DM L_DM + beta_CM L_CM (sec. 5.1, eq. 4), its ablations, the eq. 3 bound
- :mod:`.sampler`: ancestral (eq. 1) and DDIM sampling with guidance and infilling

The objective's ablations (csdm, csdm_l2, ce, w/o CM/NS/RD) are config switches of this method.
"""
from __future__ import annotations

from ...errors import UserError
from ...method import Method
from .objective import DROPS, OBJECTIVES, CATDMObjective, likelihood_bound
from .sampler import SAMPLERS, sample
from .schedule import T_DRAWS, ShiftedCosineSchedule

CHOICES = {"objective": OBJECTIVES, "drop": DROPS, "t_draw": T_DRAWS}  # allowed values of CATDM's keys

__all__ = ["CATDM", "CATDMObjective", "ShiftedCosineSchedule", "likelihood_bound", "sample"]


class CATDM(Method):
    name = "catdm"
    continuous = True
    samplers = SAMPLERS

    def __init__(self, cfg):
        super().__init__(cfg)
        for key, allowed in CHOICES.items():
            if getattr(cfg, key) not in allowed:
                raise UserError(f"config {key}={getattr(cfg, key)!r}: must be one of {', '.join(allowed)}")
        self.schedule = ShiftedCosineSchedule(cfg.shift, cfg.logsnr_min, cfg.logsnr_max)
        self.objective = CATDMObjective(cfg, self.schedule)

    @property
    def uses_target_ema(self) -> bool:  # L_CM is the only reader of the target EMA
        return self.cfg.objective == "catdm" and self.cfg.beta_cm > 0

    def loss(self, model, target, x, cond):
        return self.objective(model, target, x, cond)

    def sample(self, model, n, seq_len, *, steps, sampler, final, cond, guidance, null_id, known, known_mask,
               generator, device):
        return sample(model, self.schedule, n, seq_len, steps=steps, method=sampler, final=final, cond=cond,
                      guidance=guidance, null_id=null_id, known=known, known_mask=known_mask,
                      generator=generator, device=device)

    def nll_bound(self, model, x, cond, t):
        return likelihood_bound(model, x, self.schedule, cond, t)
