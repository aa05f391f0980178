"""What every method's sampler and loss share: classifier-free guidance, Gumbel draws, the
checks of ``sample()``'s arguments and the backbone's auxiliary loss. One copy, used by
CATDM and the discrete-state methods alike."""
from __future__ import annotations

import torch
import torch.nn.functional as F

FINALS = ("argmax", "sample")  # how the last step reads x from P(x | z_0; 0) (config key ``final``)
T_DRAWS = ("iid", "stratified")  # training-time draws (CATDM's config key ``t_draw``)


def unwrap(model):
    """The network inside a DistributedDataParallel wrapper (``loss`` may receive either)."""
    return getattr(model, "module", model)


def guided_log_probs(model, z, t, cond, guidance: float, null_id: int | None, prev=None):
    """log P(x~ | z_t; t[, y]) [B, M, K] with classifier-free guidance weight ``guidance`` (paper
    003 eq. 5, paper 004 eq. 7, on log-probabilities, renormalised):
        log P <- log_softmax((1 + w) log P(x | z, y) - w log P(x | z, null)).
    ``z`` is the network input (noisy embeddings, or the codebook rows of discrete states);
    ``prev`` the previous step's EMB_hat for a self-conditioned model (None: no estimate yet)."""
    def logits(z, t, cond, prev):
        return model.logits(z, t, cond) if prev is None else model.logits(z, t, cond, prev)

    if guidance == 0 or cond is None:
        return F.log_softmax(logits(z, t, cond, prev).float(), -1)
    if null_id is None:
        raise ValueError("guidance > 0 needs a class-conditional model (num_classes > 0)")
    both = logits(torch.cat([z, z]), torch.cat([t, t]), torch.cat([cond, torch.full_like(cond, null_id)]),
                  None if prev is None else torch.cat([prev, prev]))
    logp_c, logp_u = F.log_softmax(both.float(), -1).chunk(2)
    return F.log_softmax((1 + guidance) * logp_c - guidance * logp_u, -1)


def gumbel(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """Standard Gumbel noise drawn on the CPU generator (float64), moved to ``device``."""
    u = torch.rand(shape, generator=generator, dtype=torch.float64).clamp(1e-20, 1 - 1e-12)
    return -torch.log(-torch.log(u)).to(device)


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One categorical draw per row of ``probs`` [..., S] (Gumbel-max on log-probabilities)."""
    return (probs.clamp_min(1e-300).log() + gumbel(probs.shape, generator, probs.device)).argmax(-1)


def read_final(logp: torch.Tensor, final: str, generator: torch.Generator | None) -> torch.Tensor:
    """Tokens from the last step's log-probabilities: ``argmax``, or a draw (``sample``)."""
    return logp.argmax(-1) if final == "argmax" else (logp.double() + gumbel(logp.shape, generator, logp.device)).argmax(-1)


def check_sampling(n: int, seq_len: int, final: str, known, known_mask, device, steps: int | None = None):
    """Validate the common ``sample()`` arguments; returns (known, known_mask) on ``device`` or Nones."""
    if final not in FINALS:
        raise ValueError(f"unknown final step {final!r}; choose one of {FINALS}")
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if (known is None) != (known_mask is None):
        raise ValueError("infilling needs both `known` tokens and `known_mask`")
    if known is None:
        return None, None
    if known.shape != (n, seq_len) or known_mask.shape != (n, seq_len):
        raise ValueError(f"known/known_mask must be [{n}, {seq_len}], got {tuple(known.shape)}, {tuple(known_mask.shape)}")
    return known.to(device), known_mask.to(device).bool()


def with_aux(loss: torch.Tensor, logs: dict[str, torch.Tensor], aux: torch.Tensor | None):
    """(loss + the backbone's auxiliary loss (e.g. the encdec length head) when it has one, the
    detached float logs with ``aux`` and ``loss`` added): what ``Method.loss`` returns."""
    if aux is not None:
        logs["aux"] = aux.mean()
        loss = loss + logs["aux"]
    logs["loss"] = loss
    return loss, {k: v.detach().float() for k, v in logs.items()}


def draw_times(n: int, device, how: str = "iid") -> torch.Tensor:
    """[n] training times in [0, 1): ``iid`` U(0, 1) per row, or ``stratified``, one per
    interval [i/n, (i+1)/n) from one shared offset u ~ U(0, 1), t_i = (u + i/n) mod 1 (the
    low-discrepancy sampler of Kingma et al. 2021, Variational Diffusion Models, appendix I.1).
    Each t_i is still U(0, 1), so the loss's expectation is unchanged; the batch covers the
    time axis evenly, which lowers the variance of its mean. CATDM's ``t_draw`` picks one (iid by
    default: docs/notes.md); MDLM draws stratified (its antithetic sampling)."""
    if how == "iid":
        return torch.rand(n, device=device)
    if how == "stratified":
        return (torch.rand(1, device=device) + torch.arange(n, device=device) / n) % 1.0
    raise ValueError(f"unknown t_draw {how!r}; choose one of {T_DRAWS}")
