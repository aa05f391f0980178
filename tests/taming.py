"""A synthetic taming-style VQGAN for the tests: its model.yaml and a seeded random VQModel."""
from __future__ import annotations

from pathlib import Path

import torch


def random_vqgan(d: Path, yaml_text: str):
    """Write ``d/model.yaml`` and return the VQModel it describes (seed 0, codebook ~ N(0, 1));
    the caller saves its checkpoint. catdiff_vision must be importable."""
    from catdiff_vision import vqgan

    d.mkdir(parents=True, exist_ok=True)
    (d / "model.yaml").write_text(yaml_text)
    cfg = vqgan.read_config(d / "model.yaml")
    torch.manual_seed(0)
    model = vqgan.VQGAN(cfg["ddconfig"], cfg["n_embed"], cfg["embed_dim"])
    with torch.no_grad():
        model.quantize.embedding.weight.normal_()
    return model
