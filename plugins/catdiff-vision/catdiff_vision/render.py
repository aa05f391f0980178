"""Pictures: a grid of sampled digits, and the embedding-collapse diagnostics plot.

Plots use matplotlib's Agg canvas directly (``matplotlib.figure.Figure``), never pyplot,
so rendering works headless and never changes the caller's matplotlib backend.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from .grey_levels import GreyLevelTokenizer


def save_sample_grid(
    tokens: torch.Tensor,
    path: str | Path,
    tokenizer: GreyLevelTokenizer | None = None,
    nrow: int = 10,
    max_images: int = 100,
    scale: int = 4,
) -> Path:
    """Write the first ``max_images`` samples as a PNG grid, ``nrow`` per row, each pixel
    upscaled ``scale`` x ``scale`` (nearest), bright digits on black, 2 px grey separators.
    With the defaults, 100 digits of 8x8 give a 342 x 342 image."""
    from torchvision.utils import save_image

    tokenizer = tokenizer or GreyLevelTokenizer()
    tokens = torch.as_tensor(tokens).cpu()[:max_images]
    if len(tokens) == 0:
        raise ValueError("no samples to render")
    images = tokenizer.decode(tokens)
    images = F.interpolate(images, scale_factor=scale, mode="nearest")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images, path, nrow=nrow, padding=2, pad_value=0.35)
    return path


def _series(report: Mapping[str, Any], key: str) -> np.ndarray | None:
    value = report.get(key)
    if value is None:
        return None
    if torch.is_tensor(value):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    return arr if arr.size else None


def _missing(ax, key: str) -> None:
    ax.text(0.5, 0.5, f"no '{key}' in report", ha="center", va="center", transform=ax.transAxes, color="grey")


def save_collapse_plot(report: Mapping[str, Any], path: str | Path, dpi: int = 100) -> Path:
    """Two panels, 1000 x 400 px at the default dpi:
    (a) per-dimension variance of the embeddings, sorted descending, log y (paper Figure 1);
        ``report["embedding_variance"]``; values <= 0 are drawn at the smallest positive one;
    (b) cross-entropy of P(x | z_t) against t; ``report["t"]``, ``report["cross_entropy"]``.
    A missing series leaves its panel with a note instead of failing."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=dpi)
    FigureCanvasAgg(fig)
    ax_var, ax_ce = fig.subplots(1, 2)

    var = _series(report, "embedding_variance")
    ax_var.set_title("(a) embedding variance per dimension")
    ax_var.set_xlabel("dimension (sorted by variance)")
    ax_var.set_ylabel("variance")
    if var is None:
        _missing(ax_var, "embedding_variance")
    else:
        var = np.sort(var)[::-1]
        positive = var[var > 0]
        floor = positive.min() if positive.size else 1e-12
        ax_var.plot(np.arange(1, var.size + 1), np.maximum(var, floor), lw=1.5)
        ax_var.set_yscale("log")
        ax_var.grid(True, which="both", alpha=0.3)
        notes = []
        for key, label in (("embedding_participation_ratio", "participation ratio"),
                           ("embedding_total_variance", "total variance")):
            if isinstance(report.get(key), (int, float)):
                notes.append(f"{label}: {report[key]:.4g}")
        if notes:
            ax_var.text(0.98, 0.95, "\n".join(notes), ha="right", va="top", transform=ax_var.transAxes, fontsize=8)

    t, ce = _series(report, "t"), _series(report, "cross_entropy")
    ax_ce.set_title("(b) cross-entropy of P(x | z_t) vs t")
    ax_ce.set_xlabel("t")
    ax_ce.set_ylabel("cross-entropy (nats / token)")
    if t is None or ce is None:
        _missing(ax_ce, "t" if t is None else "cross_entropy")
    else:
        if t.size != ce.size:
            raise ValueError(f"report['t'] has {t.size} values but report['cross_entropy'] has {ce.size}")
        ax_ce.plot(t, ce, marker="o", ms=3, lw=1.5)
        ax_ce.grid(True, alpha=0.3)

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
