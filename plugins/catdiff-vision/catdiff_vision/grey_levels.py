"""Grey-level tokenizer: a greyscale image <-> one token per pixel, row-major.

A token is a grey level ``0 .. levels-1``. Float images in ``[0, 1]`` are quantised to
the nearest level (``round(x * (levels - 1))``); integer images are taken to *be* grey
levels already. Anything outside the range is an error, never silently clipped.
"""
from __future__ import annotations

import torch


class GreyLevelTokenizer:
    """``encode``: images ``[N, H, W]`` or ``[N, 1, H, W]`` -> tokens ``[N, H*W]`` (LongTensor).
    ``decode``: tokens ``[N, H*W]`` -> float images ``[N, 1, H, W]`` in ``[0, 1]``.

    The defaults fit sklearn's 8x8 digits (grey levels 0..16).
    """

    def __init__(self, levels: int = 17, height: int = 8, width: int = 8):
        if levels < 2:
            raise ValueError(f"GreyLevelTokenizer needs at least 2 levels, got {levels}")
        if height < 1 or width < 1:
            raise ValueError(f"GreyLevelTokenizer needs a positive image size, got {height}x{width}")
        self.levels = int(levels)
        self.height = int(height)
        self.width = int(width)

    @property
    def vocab_size(self) -> int:
        return self.levels

    @property
    def seq_len(self) -> int:
        return self.height * self.width

    def __repr__(self) -> str:
        return f"GreyLevelTokenizer(levels={self.levels}, height={self.height}, width={self.width})"

    # -- checks -----------------------------------------------------------------------
    def check_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Return ``tokens`` as a LongTensor ``[N, H*W]`` or raise ValueError saying what is wrong."""
        tokens = torch.as_tensor(tokens)
        if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
            raise ValueError(f"tokens must be an integer tensor, got dtype {tokens.dtype}")
        if tokens.dim() != 2 or tokens.shape[1] != self.seq_len:
            raise ValueError(
                f"tokens must have shape [N, {self.seq_len}] ({self.height}x{self.width} row-major), "
                f"got {tuple(tokens.shape)}"
            )
        self._check_range(tokens, "token")
        return tokens.long()

    def _check_range(self, values: torch.Tensor, what: str) -> None:
        if values.numel() == 0:
            return
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi >= self.levels:
            bad = int(((values < 0) | (values >= self.levels)).sum())
            raise ValueError(
                f"{what} out of range: expected 0..{self.levels - 1} ({self.levels} grey levels), "
                f"got min {lo}, max {hi} ({bad} of {values.numel()} values outside)"
            )

    # -- conversion -------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        images = torch.as_tensor(images)
        if images.dim() == 4:
            if images.shape[1] != 1:
                raise ValueError(f"expected one channel in [N, 1, H, W], got {tuple(images.shape)}")
            images = images[:, 0]
        if images.dim() != 3 or tuple(images.shape[1:]) != (self.height, self.width):
            raise ValueError(
                f"images must be [N, {self.height}, {self.width}] or [N, 1, {self.height}, {self.width}], "
                f"got {tuple(images.shape)}"
            )
        if images.dtype == torch.bool or images.is_complex():
            raise ValueError(f"images must be float in [0, 1] or integer grey levels, got dtype {images.dtype}")
        if images.is_floating_point():
            if images.numel() and (torch.isnan(images).any() or images.min() < 0 or images.max() > 1):
                lo, hi = float(images.nan_to_num(nan=-1.0).min()), float(images.max())
                raise ValueError(
                    f"float images must lie in [0, 1] (no NaN), got min {lo:g}, max {hi:g}; "
                    f"pass integer grey levels 0..{self.levels - 1} instead if that is what you have"
                )
            levels = torch.round(images.double() * (self.levels - 1)).long()
        else:
            levels = images.long()
            self._check_range(levels, "grey level")
        return levels.reshape(levels.shape[0], self.seq_len)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = self.check_tokens(tokens)
        images = tokens.float() / (self.levels - 1)
        return images.reshape(tokens.shape[0], 1, self.height, self.width)
