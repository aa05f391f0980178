"""The native taming VQGAN: taming key names, shapes, code range, checkpoint errors, codebook init;
the image-task error messages and the torch-fidelity missing-weights errors."""
from __future__ import annotations

import pytest
import torch

from catdiff_vision import vqgan
from taming import write_vqgan

# taming-style model.yaml of a small VQModel (same structure as configs/faceshq_vqgan.yaml)
MODEL_YAML = """\
model:
  base_learning_rate: 4.5e-06
  target: taming.models.vqgan.VQModel
  params:
    embed_dim: 8
    n_embed: 64
    ddconfig:
      double_z: false
      z_channels: 32
      resolution: 32
      in_channels: 3
      out_ch: 3
      ch: 32
      ch_mult: [1, 1, 2]
      num_res_blocks: 1
      attn_resolutions: [8]
      dropout: 0.0
    lossconfig:
      target: taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator
      params: {disc_start: 10000, codebook_weight: 1.0}
"""
# a sample of taming's exact key names for this config (encoder f4: levels 0, 1 downsample; attn at 8x8)
TAMING_KEYS = [
    "encoder.conv_in.weight", "encoder.down.0.block.0.norm1.weight", "encoder.down.0.downsample.conv.weight",
    "encoder.down.2.block.0.nin_shortcut.weight", "encoder.down.2.attn.0.q.weight", "encoder.mid.block_1.conv1.weight",
    "encoder.mid.attn_1.proj_out.weight", "encoder.norm_out.weight", "encoder.conv_out.weight",
    "decoder.conv_in.weight", "decoder.mid.attn_1.k.bias", "decoder.up.2.block.1.conv2.weight",
    "decoder.up.2.attn.1.v.weight", "decoder.up.2.upsample.conv.weight", "decoder.up.1.block.0.nin_shortcut.weight",
    "decoder.up.0.block.1.norm2.bias", "decoder.conv_out.weight",
    "quantize.embedding.weight", "quant_conv.weight", "post_quant_conv.bias",
]


@pytest.fixture(scope="module")
def taming_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("vqgan")
    loss_keys = {"loss.discriminator.main.0.weight": torch.randn(4, 3, 4, 4),
                 "loss.perceptual_loss.lin0.model.1.weight": torch.randn(1, 64, 1, 1)}
    return d, write_vqgan(d, MODEL_YAML, loss_keys, epoch=3, global_step=1000)


def test_config_and_key_names(taming_dir):
    d, model = taming_dir
    cfg = vqgan.read_config(d / "model.yaml")
    assert cfg["n_embed"] == 64 and cfg["embed_dim"] == 8 and cfg["ddconfig"]["ch_mult"] == [1, 1, 2]
    keys = set(model.state_dict())
    assert set(TAMING_KEYS) <= keys, sorted(set(TAMING_KEYS) - keys)
    assert not [k for k in keys if "resample" in k]  # no keys of our own invention
    f16 = vqgan.VQGAN(vqgan.F16_1024["ddconfig"], 1024, 256)
    assert f16.factor == 16 and tuple(f16.codebook.shape) == (1024, 256)
    assert "decoder.up.4.attn.2.q.weight" in f16.state_dict() and "encoder.down.4.attn.1.q.weight" in f16.state_dict()


def test_load_encode_decode(taming_dir):
    d, model = taming_dir
    loaded = vqgan.load_vqgan(d)  # directory with last.ckpt + model.yaml; loss.* ignored
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    tokens = loaded.encode(images)
    assert tokens.shape == (3, 8, 8) and tokens.dtype == torch.long
    assert 0 <= int(tokens.min()) and int(tokens.max()) < 64
    assert torch.equal(tokens, model.eval().encode(images))
    out = loaded.decode(tokens)
    assert out.shape == (3, 3, 32, 32) and out.min() >= -1 and out.max() <= 1
    assert torch.allclose(loaded.decode(tokens.flatten(1)), out)
    # encoding the codebook vectors themselves returns their ids (nearest neighbour)
    z = loaded.codebook[:16].reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    assert torch.equal(loaded.quantize.codes(z).flatten(), torch.arange(16))
    with pytest.raises(ValueError, match=r"tokens must be in \[0, 63\]"):
        loaded.decode(torch.full((1, 8, 8), 64))
    with pytest.raises(ValueError, match="multiple of the VQGAN factor 4"):
        loaded.encode(torch.zeros(1, 3, 30, 30))


def test_partial_and_wrong_checkpoints(taming_dir, tmp_path):
    d, model = taming_dir
    state = dict(model.state_dict())
    del state["quantize.embedding.weight"], state["decoder.conv_out.bias"]
    state["decoder.extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "last.ckpt")
    (tmp_path / "model.yaml").write_text(MODEL_YAML)
    with pytest.raises(vqgan.CheckpointMismatch) as err:
        vqgan.load_vqgan(tmp_path / "last.ckpt")
    msg = str(err.value)
    assert "missing keys: decoder.conv_out.bias, quantize.embedding.weight" in msg
    assert "unexpected keys: decoder.extra.weight" in msg
    (tmp_path / "model.yaml").write_text(MODEL_YAML.replace("n_embed: 64", "n_embed: 32"))
    with pytest.raises(vqgan.CheckpointMismatch, match=r"quantize.embedding.weight: checkpoint \(64, 8\) vs model \(32, 8\)"):
        vqgan.load_vqgan(d / "last.ckpt", config=tmp_path / "model.yaml")
    (tmp_path / "model.yaml").write_text(MODEL_YAML.replace("vqgan.VQModel", "vqgan.GumbelVQ"))
    with pytest.raises(ValueError, match="GumbelVQ"):
        vqgan.read_config(tmp_path / "model.yaml")
    with pytest.raises(FileNotFoundError, match="last.ckpt"):
        vqgan.load_vqgan(tmp_path / "nothing")


class LightningCallback:  # stands in for a pickled training object inside a lightning checkpoint
    pass


def test_pickled_objects_need_trust(taming_dir, tmp_path):
    d, model = taming_dir
    (tmp_path / "model.yaml").write_text(MODEL_YAML)
    torch.save({"state_dict": model.state_dict(), "callbacks": {LightningCallback: {"best": 1}}}, tmp_path / "last.ckpt")
    with pytest.raises(vqgan.CheckpointMismatch, match="trust_checkpoint=true"):
        vqgan.load_vqgan(tmp_path)
    with pytest.warns(UserWarning, match="weights_only=False"):
        loaded = vqgan.load_vqgan(tmp_path, trust=True)
    assert torch.equal(loaded.codebook, model.codebook)


def test_init_codebook(taming_dir):
    from catdiff.nn.model import Codebook

    _, model = taming_dir
    torch.manual_seed(1)
    cb = Codebook(64, 8)
    before = cb.weight.detach().pow(2).sum(1).mean()
    mask_row = cb.weight[64:].detach().clone()
    vqgan.init_codebook(cb, model)
    rows = cb.data.detach()
    cos = torch.nn.functional.cosine_similarity(rows, model.codebook, dim=1)
    assert torch.allclose(cos, torch.ones(64), atol=1e-5)  # same directions, one global scale
    assert torch.isclose(rows.pow(2).sum(1).mean(), before, rtol=1e-4)
    assert torch.equal(cb.weight[64:], mask_row)
    with pytest.raises(ValueError, match="set embed_dim=8"):
        vqgan.init_codebook(Codebook(64, 16), model)


def test_image_task_errors(tmp_path, monkeypatch):
    from catdiff.run.config import for_task
    from catdiff_vision.image_tasks import FFHQTask, ImageNetTask

    monkeypatch.delenv("CATDIFF_VQGAN", raising=False)
    task = FFHQTask()
    task.setup(for_task(task, overrides={"data_dir": str(tmp_path)}))
    with pytest.raises(FileNotFoundError, match=r"catdiff prepare image-ffhq --split train --images DIR --tokenizer VQGAN"):
        task.load("train")
    with pytest.raises(FileNotFoundError, match="env CATDIFF_VQGAN"):
        task.tokenizer_path()
    cfg = for_task(ImageNetTask())
    assert (cfg.layers, cfg.heads, cfg.width, cfg.sample_steps) == (24, 16, 768, 50) and ImageNetTask.num_classes == 1000
    cfg = for_task(FFHQTask())
    assert (cfg.layers, cfg.heads, cfg.width, cfg.embed_dim, cfg.sample_steps) == (15, 8, 512, 256, 200)


def test_missing_fidelity_weights_error(no_fidelity_weights, tmp_path, monkeypatch):
    pytest.importorskip("torch_fidelity")
    from catdiff_vision import image_metrics

    torch_home = no_fidelity_weights
    images = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(FileNotFoundError) as err:
        image_metrics.image_metrics(images, images, prc=False)
    msg = str(err.value)
    assert "weights-inception-2015-12-05-6726825d.pth" in msg and "CATDIFF_INCEPTION_WEIGHTS" in msg
    assert str(torch_home / "hub" / "checkpoints") in msg
    with pytest.raises(FileNotFoundError, match=r"vgg16-397923af\.pth.*CATDIFF_VGG16_WEIGHTS"):
        image_metrics.image_metrics(images, images, fid=False, isc=False)
    fake = torch_home / "hub" / "checkpoints" / "vgg16-397923af.pth"
    fake.parent.mkdir(parents=True)
    fake.write_bytes(b"")
    assert image_metrics.weights_file("vgg16") == fake  # found in the torch hub cache
    monkeypatch.setenv("CATDIFF_VGG16_WEIGHTS", str(tmp_path / "mine.pth"))
    (tmp_path / "mine.pth").write_bytes(b"")
    assert image_metrics.weights_file("vgg16") == tmp_path / "mine.pth"
