"""The Task interface: what a plugin provides so the engine can train on its data.

A task owns everything modality-specific: where the data lives, how it becomes token
sequences, how generated tokens are judged (metrics) and shown (samples, plots). The
engine only sees integer token tensors.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch


@dataclass
class TokenData:
    """A split of a task: ``tokens`` LongTensor [N, M] in 0..K-1, ``labels`` LongTensor [N] or None."""

    tokens: torch.Tensor
    labels: torch.Tensor | None = None

    def __post_init__(self):
        if self.tokens.dim() != 2:
            raise ValueError(f"TokenData.tokens must be [N, M], got shape {tuple(self.tokens.shape)}")
        if self.labels is not None and self.labels.shape != self.tokens.shape[:1]:
            raise ValueError(
                f"TokenData.labels must be [N] with N={self.tokens.shape[0]}, got {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return self.tokens.shape[0]


class Task:
    """Base class for tasks. Subclass it, set the class attributes, implement ``load``.

    Class attributes:
      name         registry name, e.g. ``"digits"``
      vocab_size   K, the number of data tokens (specials are the engine's business)
      seq_len      M, tokens per sequence
      num_classes  > 0 for class-conditional tasks (labels in 0..num_classes-1)
      defaults     config overrides applied before the user's (model size, budget, ...)
      description  one line for ``catdiff list``
    """

    name: str = ""
    vocab_size: int = 0
    seq_len: int = 0
    num_classes: int = 0
    defaults: Mapping[str, Any] = {}
    description: str = ""

    def load(self, split: str) -> TokenData:
        """Return the ``"train"`` or ``"test"`` split. Raise FileNotFoundError naming what to provide."""
        raise NotImplementedError

    def evaluate(self, tokens: torch.Tensor, labels: torch.Tensor | None, out_dir: Path | None) -> dict[str, float]:
        """Metrics of generated ``tokens`` [N, M] (with the ``labels`` they were conditioned on)."""
        return {}

    def save_samples(self, tokens: torch.Tensor, labels: torch.Tensor | None, out_dir: Path) -> list[Path]:
        """Write a human-viewable rendering of samples into ``out_dir``; return the files written."""
        return []

    def diagnostics(self, report: Mapping[str, Any], out_dir: Path) -> list[Path]:
        """Optional: render the engine's collapse diagnostics (see ``catdiff.diagnostics``)."""
        return []
