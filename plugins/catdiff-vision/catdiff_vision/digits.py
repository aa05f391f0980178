"""The ``digits`` task: sklearn's 8x8 handwritten digits as 64 grey-level tokens (17 levels).

``digits`` is unconditional; ``digits-cond`` is the same data conditioned on the class
label (0..9). Both keep the labels in their TokenData. See :mod:`catdiff_vision.data` for
the split, :mod:`catdiff_vision.fidelity` for the FID reference set and its floor.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from catdiff.api.task import Task, TokenData

from . import data
from .grey_levels import GreyLevelTokenizer


class DigitsTask(Task):
    min_samples = 2  # FID
    name = "digits"
    best_metric = ("fid_digits_classifier", "min")
    vocab_size = data.LEVELS
    seq_len = data.SIDE * data.SIDE
    num_classes = 0
    # A budget whose whole `catdiff run` stays under 5 minutes on 2 CPU cores (1300 steps).
    # Each setting below beyond the paper's lowered FID at this budget (figures: docs/notes.md,
    # "Digits: what moved FID" and "Task defaults: the CM teacher's EMA"):
    # - ema_cm 0.9, not the paper's 0.99: a 0.99 teacher lags ~100 steps, a large part of the budget;
    # - drop_l0 0.5: L0's z_0 pass drops half its inputs (z_t keeps drop_ratio 0.2);
    # - sinusoidal positions at pos_scale 3 (the projected embeddings grow ~3x during training,
    #   so the default amplitude fades); rotary positions did worse here;
    # - conv_kernel 3 over the 8x8 grid (a depthwise conv before each block, catdiff.nn.backbones.encoder);
    # - evidence off: the core default did not help samples here.
    defaults: Mapping[str, Any] = dict(
        layers=4, heads=4, width=96, embed_dim=32, batch_size=32, lr=2e-3, warmup=50, steps=1300,
        ema_cm=0.9, drop_l0=0.5, positions="sinusoidal", pos_scale=3.0, conv_kernel=3, token_grid=f"{data.SIDE}x{data.SIDE}",
        sample_steps=50, n_samples=500, ckpt_every=250, log_every=10,
        evidence=False)
    description = "8x8 handwritten digits (sklearn), 64 tokens of 17 grey levels; 1497 train / 300 test"

    def __init__(self):
        self.tokenizer = GreyLevelTokenizer(levels=data.LEVELS, height=data.SIDE, width=data.SIDE)

    def load(self, split: str) -> TokenData:
        tokens, labels = data.load_split(split)
        return TokenData(tokens=tokens, labels=labels)

    def evaluate(self, tokens: torch.Tensor, labels: torch.Tensor | None, out_dir: Path | None) -> dict[str, float]:
        """Metrics of generated digits (``out_dir`` is not used; images come from save_samples):

        - ``fid_digits_classifier``: FID vs the 1497 real train digits in the digits
          classifier's 64-d penultimate feature space (NOT an Inception FID).
        - ``fid_digits_classifier_real_test``: the same for the 300 real test digits, the floor
          a perfect model would reach with 300 samples.
        - ``fid_num_samples``: how many samples the FID used (the floor assumes ~300).
        - ``class_frac_0..9``, ``class_entropy`` (nats, ln 10 = 2.303 when balanced),
          ``classifier_confidence`` (mean top-1 probability), and with labels
          ``label_accuracy`` (fraction of samples classified as their conditioning label).
        """
        from . import classifier, fidelity

        tokens = self.tokenizer.check_tokens(torch.as_tensor(tokens).cpu())
        if labels is not None:
            labels = torch.as_tensor(labels).cpu()
        out = fidelity.digits_fid(tokens)
        out["fid_digits_classifier_real_test"] = fidelity.real_test_floor()
        out["fid_num_samples"] = float(len(tokens))
        out.update(classifier.class_statistics(tokens, labels if self.num_classes else None))
        return out

    def save_samples(self, tokens: torch.Tensor, labels: torch.Tensor | None, out_dir: Path) -> list[Path]:
        """``samples.png``: the first 100 samples in a 10x10 grid, upscaled 4x (nearest)."""
        from .render import save_sample_grid

        return [save_sample_grid(tokens, Path(out_dir) / "samples.png", tokenizer=self.tokenizer)]

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [N, 64] -> float grey images [N, 1, 8, 8] in [0, 1]."""
        return self.tokenizer.decode(self.tokenizer.check_tokens(torch.as_tensor(tokens).cpu()))

    def diagnostics(self, report: Mapping[str, Any], out_dir: Path) -> list[Path]:
        """``collapse.png``: sorted embedding variances (log y) and cross-entropy vs t."""
        from .render import save_collapse_plot

        return [save_collapse_plot(report, Path(out_dir) / "collapse.png")]


class ConditionalDigitsTask(DigitsTask):
    name = "digits-cond"
    num_classes = 10
    description = "8x8 digits conditioned on the class label 0..9; 1497 train / 300 test"
