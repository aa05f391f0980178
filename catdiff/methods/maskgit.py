"""MaskGIT (Chang et al. 2022, "MaskGIT: masked generative image transformer").

Training (their sec. 3.1): r ~ U(0, 1), mask ratio gamma(r) = cos(pi r / 2), so
n = ceil(gamma(r) M) positions (>= 1) chosen uniformly are replaced by [mask]; the loss is
the cross-entropy of the masked positions only (their eq. 1), averaged over masked tokens.
MaskGIT's transformer has no time input; ours receives the masked fraction n / M as t.

Decoding (their sec. 3.2), N steps, starting from all [mask] (known positions given):
at step i, every masked position draws a token from the (guided) prediction; its
confidence is log p(drawn token) plus Gumbel noise of temperature tau (1 - (i+1)/N)
(``mask_temperature`` = tau, annealed linearly to 0, as in MaskGIT's code); the
floor(gamma((i+1)/N) * U) least confident drawn tokens (U = positions unknown at the start)
are masked again, at least one token being revealed per step, none left after step N.
Classifier-free guidance on the log-probabilities as in paper 004 eq. 7 (Muse-style).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..api.method import Method
from ..api.settings import Setting
from .discrete import choose, masked_start, x0_log_probs
from .shared import draw, gumbel, unwrap, with_aux


def mask_schedule(r: torch.Tensor) -> torch.Tensor:
    """gamma(r) = cos(pi r / 2): the fraction masked at training draw / decoding progress r."""
    return torch.cos(math.pi / 2 * r)


def mask_inputs(x: torch.Tensor, mask_id: int, generator: torch.Generator | None = None):
    """(x with ceil(gamma(r) M) uniformly chosen positions set to ``mask_id`` per row, the boolean
    mask [B, M], the masked fraction [B]) for r ~ U(0, 1) per row."""
    B, M = x.shape
    r = torch.rand(B, generator=generator).to(x.device)
    count = torch.ceil(mask_schedule(r) * M).long().clamp(1, M)
    masked = choose(torch.rand(B, M, generator=generator).to(x.device), torch.ones_like(x, dtype=torch.bool), count)
    return torch.where(masked, mask_id, x), masked, count.float() / M


class MaskGIT(Method):
    name = "maskgit"
    description = "MaskGIT (Chang et al. 2022): confidence-ordered parallel decoding"
    samplers = ("confidence",)
    settings = (Setting("mask_temperature", 4.5, "Gumbel temperature of the confidence order, annealed to 0",
                        low=0, mutable=True),)

    def loss(self, model, x, cond):
        x_in, masked, frac = mask_inputs(x, unwrap(model).codebook.mask_id)
        out = model(x_in, t=frac, cond=cond, targets=x)
        ce = F.cross_entropy(out.logits.float().transpose(1, 2), x, reduction="none")
        loss = (ce * masked).sum() / masked.sum()
        return with_aux(loss, {"l_mask_ce": loss}, out.aux)

    @torch.no_grad()
    def sample(self, model, req):
        seq_len, steps, generator = req.seq_len, req.steps, req.generator
        x = masked_start(model, req.n, seq_len, req.final, req.known, req.known_mask, req.device, steps)
        mask_id = model.codebook.mask_id
        unknown = (x == mask_id).sum(1)
        for i in range(steps):
            masked = x == mask_id
            left = masked.sum(1)
            if not left.any():
                break
            logp = x0_log_probs(model, x, left.float() / seq_len, req.cond, req.guidance, req.null_id).double()
            drawn = draw(logp.exp(), generator)
            progress = (i + 1) / steps
            confidence = logp.gather(-1, drawn[..., None]).squeeze(-1)
            confidence = confidence + self.cfg.mask_temperature * (1 - progress) * gumbel(x.shape, generator, req.device)
            keep_masked = torch.floor(mask_schedule(torch.tensor(progress)) * unknown).long()
            keep_masked = torch.minimum(keep_masked, (left - 1).clamp_min(0)) if i < steps - 1 else 0 * left
            x = torch.where(choose(confidence, masked, left - keep_masked), drawn, x)
        return x
