"""Built-in backbones: networks mapping ``(z [B, M, D], t [B], cond [B] | None) -> logits [B, M, K]``."""
from __future__ import annotations

from .encoder import EncoderTransformer


def build_encoder(cfg, vocab_size: int, seq_len: int, num_classes: int = 0, causal: bool = False) -> EncoderTransformer:
    """Factory for the ``encoder`` backbone (signature of the ``catdiff_backbones`` hook)."""
    return EncoderTransformer(cfg, vocab_size=vocab_size, seq_len=seq_len, num_classes=num_classes, causal=causal)


__all__ = ["EncoderTransformer", "build_encoder"]
