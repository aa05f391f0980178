"""CATDM (paper 003): continuous diffusion over a jointly learned codebook.

- :mod:`.schedule`: the shifted cosine noise schedule (sec. 5.2) and training-time draws
- :mod:`.objective`: L0 + beta_DM L_DM + beta_CM L_CM (sec. 5.1, eq. 4), its ablations, the eq. 3 bound
- :mod:`.network`: the Denoiser with token evidence, self-conditioning and normed codebook rows
- :mod:`.sampler`: ancestral (eq. 1) sampling and the probability-flow ODE solvers (DDIM,
  DPM-Solver++(2M), Heun), with guidance and infilling

The objective's ablations (csdm, csdm_l2, ce, w/o CM/NS/RD) are config switches of this method.
"""
from __future__ import annotations

from ...api.errors import UserError
from ...api.method import Method
from ...api.settings import Setting
from ...nn.model import Codebook, ema_copy, ema_update
from ...nn.diagnostics import collapse_report
from .network import CATDMDenoiser, NormedCodebook
from .objective import DROPS, OBJECTIVES, CATDMObjective, likelihood_bound
from .sampler import GRIDS, SAMPLERS, sample, time_grid
from .schedule import T_DRAWS, ShiftedCosineSchedule

# paper 003 sec. 2, 4, 5; the ablation switches are one value each
SETTINGS = (
    Setting("objective", "catdm", "training objective: catdm (eq. 4) | csdm (w/o the jointly learned "
            "embedding terms) | csdm_l2 (csdm + an L2 penalty) | ce", choices=OBJECTIVES),
    Setting("beta_dm", 0.005, "weight of L_DM in L0 + beta_dm L_DM + beta_cm L_CM (sec. 5.1)", low=0),
    Setting("beta_cm", 1.0, "weight of L_CM; 0 gives \"CATDM w/o CM\"", low=0),
    Setting("l2_weight", 1e-3, "weight of the embedding L2 penalty of objective=csdm_l2", low=0),
    Setting("shift", -3.0, "s of the shifted cosine schedule (sec. 5.2; the paper gives none; digits sweep); "
            "0 = \"w/o NS\""),
    Setting("logsnr_min", -15.0, "log-SNR at t = 1 (the clip of the schedule; methods/catdm/schedule.py)"),
    Setting("logsnr_max", 8.0, "log-SNR at t = 0: z_0's noise std e^-4 (methods/catdm/schedule.py says why "
            "not higher)"),
    Setting("drop", "rand", "random token dropping (sec. 5.3): rand | linear | rand_ratio | none (\"w/o RD\")",
            choices=DROPS),
    Setting("drop_ratio", 0.2, "ratio of the rand_ratio strategy (paper: 0.2)", low=0, high=1),
    Setting("drop_l0", None, "drop ratio of L0's z_0 pass; auto = the strategy's (methods/catdm/objective.py)",
            type=float, low=0, high=1, auto=True),
    Setting("t_draw", "iid", "training times: iid | stratified (low-discrepancy, VDM appendix I.1)",
            choices=T_DRAWS),
    Setting("l0_rows", 1.0, "share of the batch whose z_0 pass estimates L0; 1 = all rows; auto = "
            "sd(L0) / sd(other terms), Plaid's reconstruction share (methods/catdm/objective.py)", type=float,
            low=0, high=1, low_open=True, auto=True),
    Setting("time_warp", "off", "learned density of training times (CDCD sec. 3.3; methods/catdm/schedule.py "
            "TimeWarp): off | train | sample (train, and sample on the warped time grid)",
            choices=("off", "train", "sample")),
    Setting("sample_grid", "t", "sampling time grid: t (uniform in t) | logsnr (uniform in log-SNR, "
            "DPM-Solver's); time_warp=sample replaces it by the warp's", choices=GRIDS, mutable=True),
    Setting("final_call", True, "read the tokens with one more network call at t = 0 (eq. 1); false reads them from "
            "the last step's prediction: N steps cost N calls (methods/catdm/sampler.py)", mutable=True),
    Setting("embed_norm", 0.0, "fixed L2 norm of every codebook row (CDCD, Plaid: sqrt(embed_dim)); 0 = free, "
            "as in the paper (methods/catdm/network.py)", low=0),
    Setting("ema_cm", 0.99, "EMA rate of the CM target (network and codebook)", low=0, high=1),
    Setting("self_cond", False, "self-conditioning on the previous EMB_hat (not in the paper; methods/catdm/network.py)"),
    Setting("self_cond_rate", 0.5, "share of training rows that read a self-conditioning estimate", low=0,
            high=1, low_open=True),
    Setting("evidence", True, "logits += each token's own Gaussian evidence (not in the paper; methods/catdm/network.py)"),
)

__all__ = ["CATDM", "CATDMObjective", "ShiftedCosineSchedule", "likelihood_bound", "sample"]


class CATDM(Method):
    name = "catdm"
    description = "CATDM (paper 003): continuous diffusion over a jointly learned codebook"
    samplers = SAMPLERS
    settings = SETTINGS
    v1_auto = {"drop_l0": lambda v: v < 0}  # catdiff 0.1's "auto"

    def __init__(self, cfg):
        super().__init__(cfg)
        if cfg.logsnr_min >= cfg.logsnr_max:
            raise UserError(f"config logsnr_min={cfg.logsnr_min} must be < logsnr_max={cfg.logsnr_max}")
        self.schedule = ShiftedCosineSchedule(cfg.shift, cfg.logsnr_min, cfg.logsnr_max)
        self.objective = CATDMObjective(cfg, self.schedule)
        self.teacher = None  # the CM target (theta_bar, phi_bar), kept while L_CM is trained
        if cfg.time_warp == "sample" and cfg.sample_grid != "t":
            raise UserError(f"config time_warp=sample samples on the warp's grid; it cannot take "
                            f"sample_grid={cfg.sample_grid} (set one of them)")

    def build(self, backbone, spec):
        cfg = self.cfg
        rows = (NormedCodebook.of(cfg, spec.vocab_size, norm=cfg.embed_norm) if cfg.embed_norm
                else Codebook.of(cfg, spec.vocab_size))
        return CATDMDenoiser(rows, backbone, self_cond=cfg.self_cond,
                             schedule=self.schedule if cfg.evidence else None)

    @property
    def uses_teacher(self) -> bool:
        """L_CM (objective catdm with beta_cm > 0) is the only reader of the teacher EMA."""
        return self.cfg.objective == "catdm" and self.cfg.beta_cm > 0

    def start(self, model):
        if self.uses_teacher:
            self.teacher = ema_copy(model)
            if self.cfg.compile:
                self.teacher.net.compile()

    def networks(self):
        return {"ema_cm": self.teacher} if self.teacher is not None else {}

    def after_step(self, model):
        if self.teacher is not None:  # Algorithm 1: theta_bar, phi_bar <- EMA of theta, phi
            ema_update(self.teacher, model, self.cfg.ema_cm)

    def loss(self, model, x, cond):
        return self.objective(model, self.teacher, x, cond)

    def collapse_report(self, model, x, cond):
        return collapse_report(model, self.schedule, x, cond)

    def state_dict(self) -> dict:
        return self.objective.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.objective.load_state_dict(state)

    def sample(self, model, req):
        warp = self.objective.warp
        if warp is not None and warp.warm and self.cfg.time_warp == "sample":
            grid = warp.grid(req.steps, req.device)
        else:
            grid = time_grid(self.schedule, req.steps, self.cfg.sample_grid, req.device)
        return sample(model, self.schedule, req.n, req.seq_len, steps=req.steps, method=req.sampler, final=req.final,
                      cond=req.cond, guidance=req.guidance, null_id=req.null_id, known=req.known,
                      known_mask=req.known_mask, generator=req.generator, device=req.device, grid=grid,
                      final_call=self.cfg.final_call)

    def nll_bound(self, model, x, cond, t):
        return likelihood_bound(model, x, self.schedule, cond, t)
