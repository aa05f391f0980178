"""Embedding-collapse diagnostics (paper 003 sec. 3, Figure 1).

- Sorted per-dimension variance of EMB(x) over data sequences (each EMB(x) flattened to
  M*D numbers). Collapse shows as most variances near zero. Summaries: the total variance
  and the participation ratio (sum v)^2 / sum v^2, an effective number of dimensions.
- Cross-entropy E[-log P(x | z_t; t)] per token on a grid of t: a collapsed model is
  only certain near t = 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def collapse_report(model, schedule, x: torch.Tensor, cond=None, grid: int = 11) -> dict:
    clean = model.codebook(x)  # [N, M, D]
    # one sequence (a tiny test split) has no spread to measure: 0, not NaN and torch's warning
    var = clean.flatten(1).double().var(0, correction=int(len(x) > 1)).sort(descending=True).values
    total = var.sum()
    ts = torch.linspace(0.0, 1.0, grid, device=x.device)
    ce = []
    for t_val in ts:
        t = t_val.expand(x.shape[0])
        a, s = schedule.alpha_sigma(t)
        z = a[:, None, None] * clean + s[:, None, None] * torch.randn_like(clean)
        logits = model.posterior_logits(z, t, cond).float()
        ce.append(F.cross_entropy(logits.transpose(1, 2), x).item())
    rows = model.codebook.data.double()
    data_var = rows.var(0, correction=int(len(rows) > 1)).sum()
    return {
        "embedding_variance": var.tolist(),
        "embedding_total_variance": total.item(),
        "embedding_participation_ratio": (total**2 / var.pow(2).sum().clamp_min(1e-300)).item(),
        "codebook_variance": data_var.item(),
        "t": ts.tolist(),
        "cross_entropy": ce,
    }
