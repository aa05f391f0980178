"""The two tokenizers of ``image-folder``, behind one interface on uint8 images.

Both map uint8 images ``[B, C, S, S]`` to tokens ``[B, (S/f)^2]`` (row-major code grid) and
back to uint8 images:

- :class:`SmallVQ`: the small VQ-VAE of :mod:`.vq_tokenizer` (f = 4), trained by
  ``catdiff prepare image-folder`` on the folder's training images; C = 1 (grey) or 3 (rgb).
- :class:`TamingTokenizer`: a taming VQGAN (:mod:`.vqgan`) of any factor and codebook size,
  both read from its ``model.yaml`` (f = 2^(len(ch_mult) - 1), K = ``n_embed``); grey
  images are replicated to its ``in_channels`` (3) on the way in.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from catdiff.api.errors import UserError

SMALL_VQ_FACTOR = 4


class SmallVQ:
    factor = SMALL_VQ_FACTOR

    def __init__(self, model):
        self.model = model
        self.vocab_size, self.grid, self.channels = model.codes, model.grid, model.channels

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode(images)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return (self.model.decode(tokens) * 255).round().to(torch.uint8)


class TamingTokenizer:
    def __init__(self, vqgan, channels: int):
        self.vqgan, self.channels = vqgan, channels
        self.vocab_size, self.factor = vqgan.n_embed, vqgan.factor

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        dev = self.vqgan.codebook.device
        x = images.to(dev).float() / 127.5 - 1.0
        need = self.vqgan.ddconfig["in_channels"]
        if x.shape[1] != need:
            x = x.mean(1, keepdim=True).expand(-1, need, -1, -1)
        return self.vqgan.encode(x).flatten(1).cpu()

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        from .image_metrics import to_uint8

        return to_uint8(self.vqgan.decode(torch.as_tensor(tokens))).cpu()


def vqgan_spec(path: str | Path) -> dict:
    """What setup needs from a VQGAN without loading its weights: ``n_embed``, ``factor``,
    ``in_channels``, ``resolution`` (from model.yaml) and an ``id`` of the files (config text +
    checkpoint size), independent of where they lie."""
    from .vqgan import read_config, vqgan_files

    ckpt, yaml_path = vqgan_files(path)
    cfg = read_config(yaml_path)
    dd = cfg["ddconfig"]
    for key in ("ch_mult", "in_channels", "resolution"):
        if key not in dd:
            raise UserError(f"{yaml_path}: model.params.ddconfig.{key} missing (expected a taming VQModel config)")
    ident = hashlib.sha256(yaml_path.read_bytes() + str(ckpt.stat().st_size).encode()).hexdigest()[:16]
    return {"n_embed": cfg["n_embed"], "factor": 2 ** (len(dd["ch_mult"]) - 1), "in_channels": int(dd["in_channels"]),
            "resolution": int(dd["resolution"]), "id": ident}


def load_taming(path: str | Path, trust: bool, device="cpu"):
    """:func:`.vqgan.load_vqgan` with its CheckpointMismatch (a RuntimeError) as a one-line UserError."""
    from .vqgan import CheckpointMismatch, load_vqgan, vqgan_files

    ckpt, yaml_path = vqgan_files(path)
    try:
        return load_vqgan(ckpt, config=yaml_path, trust=trust, device=device)
    except CheckpointMismatch as e:
        raise UserError(f"VQGAN {ckpt} with config {yaml_path}: {e}") from None
