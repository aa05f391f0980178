"""Built-in backbones: networks mapping ``(z [B, M, D], t [B], cond [B] | None) -> logits [B, M, K]``.

A backbone factory declares its config keys as ``factory.settings`` (catdiff.api.settings);
:data:`TRANSFORMER` are the keys every transformer backbone shares (one declaration, so
``encoder`` and catdiff-translate's ``encdec`` read the same ``layers``, ``width``, ...).
"""
from __future__ import annotations

from ...api.errors import UserError
from ...api.settings import Setting
from .encoder import EncoderTransformer

TRANSFORMER = (
    Setting("layers", 4, "transformer blocks", low=1),
    Setting("heads", 4, "attention heads (width must be a multiple)", low=1),
    Setting("width", 128, "transformer width", low=1),
    Setting("mlp_ratio", 4.0, "MLP hidden size / width", low=0, low_open=True),
    Setting("dropout", 0.0, "dropout of the attention probabilities", low=0, high=1),
    Setting("positions", "rotary", "rotary (in attention) | sinusoidal (added to the input)",
            choices=("sinusoidal", "rotary")),
    Setting("pos_scale", 1.0, "amplitude of the added sinusoids (positions=sinusoidal)", low=0),
)
LOCAL_MIXING = (
    Setting("conv_kernel", 0, "depthwise conv over neighbouring tokens before each block (not in the paper); "
            "0 = off, else odd", low=0),
    Setting("token_grid", "", "\"HxW\": the tokens' 2D layout for conv_kernel (images); \"\" = along the sequence",
            pattern=r"([1-9]\d*x[1-9]\d*)?", rule="HxW (e.g. 8x8) or empty"),
)


def transformer_lr(cfg) -> float:
    """``lr=auto`` for a transformer backbone: ``min(2e-3, 0.2 / width)``. Adam's update scales as
    1 / width (as in muP); the rule gives what the tuned small tasks use (2e-3 at width 96) and the
    paper's text8 run (3e-4 at 768). Fixed values (lr 3e-4) were too slow for small models and
    short runs (benchmarks/defaults.py)."""
    return min(2e-3, 0.2 / cfg.width)


def check_transformer(cfg) -> None:
    """Combinations of the :data:`TRANSFORMER` keys (each value is checked on its own by the config)."""
    if cfg.width % cfg.heads:
        raise UserError(f"config width={cfg.width}: must be a multiple of heads={cfg.heads}")


def build_encoder(cfg, vocab_size: int, seq_len: int, num_classes: int = 0, causal: bool = False,
                  spec=None) -> EncoderTransformer:
    """Factory for the ``encoder`` backbone (signature of the ``catdiff_backbones`` hook); the
    data ``spec``'s grid is the tokens' layout for ``conv_kernel`` unless ``token_grid`` is set."""
    check_transformer(cfg)
    if cfg.conv_kernel and cfg.conv_kernel % 2 == 0:
        raise UserError(f"config conv_kernel={cfg.conv_kernel}: must be 0 (off) or odd")
    return EncoderTransformer(cfg, vocab_size=vocab_size, seq_len=seq_len, num_classes=num_classes, causal=causal,
                              data_grid=getattr(spec, "grid", None))


build_encoder.settings = TRANSFORMER + LOCAL_MIXING
build_encoder.default_lr = transformer_lr

__all__ = ["EncoderTransformer", "LOCAL_MIXING", "TRANSFORMER", "build_encoder", "check_transformer", "transformer_lr"]
