"""Fashion-MNIST tasks: data, VQ tokenizer, classifier feature extractor, errors, and (slow) the
whole prepare -> train -> evaluate -> sample grids path at a tiny budget."""
from __future__ import annotations

import math

import pytest
import torch

from catdiff_vision import fashion_data

needs_data = pytest.mark.skipif(not fashion_data.available(),
                                reason="Fashion-MNIST absent: install Debian package dataset-fashion-mnist (make data)")


@needs_data
def test_data_shapes():
    x, y = fashion_data.load("test")
    assert x.shape == (10_000, 1, 28, 28) and x.dtype == torch.uint8 and y.shape == (10_000,)
    assert set(y.unique().tolist()) == set(range(10)) and int(x.max()) == 255
    assert fashion_data.load("train")[0].shape[0] == 60_000


def test_missing_data_error(tmp_path):
    from catdiff.run.config import for_task
    from catdiff_vision.fashion import FashionTask

    with pytest.raises(FileNotFoundError, match=r"dataset-fashion-mnist \(make data\).*CATDIFF_FASHION_MNIST"):
        fashion_data.load("train", str(tmp_path))
    task = FashionTask()
    task.setup(for_task(task, overrides={"cache_dir": str(tmp_path)}))
    with pytest.raises(FileNotFoundError, match=rf"run `catdiff prepare fashion-mnist --set cache_dir={tmp_path}`"):
        task.load("train")


def test_vq_tokenizer_shapes_and_ema():
    from catdiff_vision import vq_tokenizer

    g = torch.Generator().manual_seed(0)
    images = (torch.rand(256, 1, 28, 28, generator=g) * 255).to(torch.uint8)
    model = vq_tokenizer.train(images, {"steps": 5, "codes": 16, "batch_size": 32}, log=None)
    tokens = model.encode(images[:8])
    assert tokens.shape == (8, 49) and 0 <= int(tokens.min()) and int(tokens.max()) < 16
    out = model.decode(tokens)
    assert out.shape == (8, 1, 28, 28) and out.min() >= 0 and out.max() <= 1
    assert model.cluster_size.sum() > 0 and not torch.equal(model.embedding, torch.zeros_like(model.embedding))
    rec = vq_tokenizer.reconstruction(model, images[:64])
    assert rec["vq_mse"] > 0 and math.isclose(rec["vq_psnr"], 10 * math.log10(1 / rec["vq_mse"]))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 15\]"):
        model.decode(torch.full((1, 49), 16))


def test_feature_extractor_name():
    pytest.importorskip("torch_fidelity")
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    from catdiff_vision import fashion_classifier

    cls = fashion_classifier.ensure_registered()
    assert fashion_classifier.EXTRACTOR_NAME == "fashion-classifier"
    assert FEATURE_EXTRACTORS_REGISTRY["fashion-classifier"] is cls is fashion_classifier.ensure_registered()
    assert cls.get_default_feature_layer_for_metric("fid") == "penultimate"
    assert cls.get_default_feature_layer_for_metric("isc") == "logits"


@needs_data
@pytest.mark.slow
def test_prepare_train_evaluate(tmp_path):
    """prepare (tiny tokenizer budget) -> classifier -> 30 training steps -> metrics, grids, sweep."""
    pytest.importorskip("torch_fidelity")
    from catdiff.run.engine import Engine

    from catdiff_vision import fashion_classifier
    from catdiff_vision.fashion import FashionCondTask

    task = FashionCondTask()
    eng = Engine(task=task, out=tmp_path / "run", cache_dir=str(tmp_path / "cache"), vq_steps=40, codes=32,
                 steps=30, layers=1, heads=2, width=32, embed_dim=16, batch_size=32, n_samples=100,
                 sample_steps=4, eval_batches=1, threads=1, ckpt_every=1000)
    rec = task.prepare(type("Args", (), {"quiet": True})())
    assert 0 < rec["vq_mse"] < 0.2 and rec["vq_psnr"] > 7
    classifier = fashion_classifier.load(task.classifier_path())
    assert fashion_classifier.accuracy(classifier, *task.raw("test")) > 0.85
    train = task.load("train")
    assert train.tokens.shape == (60_000, 49) and int(train.tokens.max()) < 32 and train.labels.shape == (60_000,)
    eng.fit()
    metrics = eng.evaluate()
    for key in ("fid_fashion_classifier", "is_fashion_classifier", "fid_fashion_classifier_real",
                "fid_fashion_classifier_vq", "label_accuracy", "class_entropy"):
        assert math.isfinite(metrics[key]), key
    assert metrics["fid_fashion_classifier_real"] < metrics["fid_fashion_classifier_vq"]  # the tokenizer costs FID
    for name in ("samples.png", "guidance_sweep.png", "metrics.json"):
        assert (tmp_path / "run" / name).is_file(), name
    from PIL import Image

    with Image.open(tmp_path / "run" / "guidance_sweep.png") as im:  # 5 rows (w = 0..4) x 10 classes of 56 px
        assert im.size == (10 * 58 + 2, 5 * 58 + 2)
