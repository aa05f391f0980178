"""A synthetic taming-style VQGAN for the tests: its model.yaml and a seeded random VQModel."""
from __future__ import annotations

from pathlib import Path

import pytest
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


def write_vqgan(d: Path, yaml_text: str, extra: dict | None = None, **meta):
    """A taming checkpoint directory: ``d/model.yaml`` and ``d/last.ckpt`` holding the random
    VQModel's state (plus ``extra`` keys, e.g. the loss's, and ``meta`` such as global_step).
    Returns the model; skips the test without PyYAML."""
    pytest.importorskip("yaml", reason="PyYAML is not installed (pip install -e plugins/catdiff-vision)")
    model = random_vqgan(d, yaml_text)
    torch.save({"state_dict": {**model.state_dict(), **(extra or {})}, **meta}, d / "last.ckpt")
    return model
