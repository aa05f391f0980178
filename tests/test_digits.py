"""Tests of the catdiff-vision plugin: digits task, grey-level tokenizer, classifier FID, plots.

The plugin lives in plugins/catdiff-vision; if it is not pip-installed, conftest imports it from
there. The classifier is trained once per session into a temporary CATDIFF_CACHE (a few
seconds), so these tests never read or write the user's cache.
"""
from __future__ import annotations

import importlib.metadata as md
import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from catdiff_vision.grey_levels import GreyLevelTokenizer
from helpers import ROOT, VISION_DIR, needs


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CATDIFF_CACHE", str(tmp_path_factory.mktemp("catdiff-cache")))
        yield


@pytest.fixture(scope="module")
def splits():
    needs("sklearn")
    from catdiff_vision.digits import DigitsTask

    task = DigitsTask()
    return task.load("train"), task.load("test")


def png_size(path: Path) -> tuple[int, int]:
    head = Path(path).read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert head[12:16] == b"IHDR"
    width, height = struct.unpack(">II", head[16:24])
    from PIL import Image

    with Image.open(path) as im:
        im.verify()  # raises on a truncated or corrupt file
    return width, height


# -- data ---------------------------------------------------------------------------


def test_task_attributes():
    from catdiff_vision.digits import ConditionalDigitsTask, DigitsTask

    for cls, classes in ((DigitsTask, 0), (ConditionalDigitsTask, 10)):
        task = cls()
        assert (task.vocab_size, task.seq_len, task.num_classes) == (17, 64, classes)
        assert task.name in ("digits", "digits-cond") and task.description
    from catdiff.run.config import for_task

    cfg = for_task(DigitsTask())  # every default is a known config key of the right type
    assert cfg.steps > 0 and cfg.embed_dim > 0


def test_shapes_and_token_range(splits):
    train, test = splits
    assert tuple(train.tokens.shape) == (1497, 64) and tuple(test.tokens.shape) == (300, 64)
    for part in (train, test):
        assert part.tokens.dtype == torch.long and part.labels.dtype == torch.long
        assert int(part.tokens.min()) == 0 and int(part.tokens.max()) == 16
        assert set(part.labels.unique().tolist()) == set(range(10))


def test_split_is_deterministic_and_disjoint(splits):
    from catdiff_vision import data
    from catdiff_vision.digits import ConditionalDigitsTask, DigitsTask

    train, test = splits
    again = DigitsTask().load("test")
    assert torch.equal(again.tokens, test.tokens) and torch.equal(again.labels, test.labels)
    cond = ConditionalDigitsTask().load("train")
    assert torch.equal(cond.tokens, train.tokens) and torch.equal(cond.labels, train.labels)
    idx = data.split_indices()
    tr, te = set(idx["train"].tolist()), set(idx["test"].tolist())
    assert not tr & te and len(tr | te) == 1797
    # pinned: a change of the split would silently invalidate every earlier result
    assert idx["test"][:5].tolist() == [804, 168, 1371, 1400, 1557]
    with pytest.raises(ValueError, match="unknown digits split"):
        DigitsTask().load("validation")


def test_missing_sklearn_is_a_clear_error(monkeypatch):
    from catdiff_vision import data
    from catdiff_vision.digits import DigitsTask

    data._all_digits.cache_clear()
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes the import fail
    try:
        with pytest.raises(FileNotFoundError, match="pip install scikit-learn"):
            DigitsTask().load("train")
    finally:
        data._all_digits.cache_clear()


# -- tokenizer ----------------------------------------------------------------------


def test_tokenizer_round_trip():
    tok = GreyLevelTokenizer()
    g = torch.Generator().manual_seed(0)
    levels = torch.randint(0, 17, (5, 8, 8), generator=g)
    tokens = tok.encode(levels)
    assert tuple(tokens.shape) == (5, 64) and tokens.dtype == torch.long
    assert torch.equal(tokens, levels.reshape(5, 64))  # row-major
    images = tok.decode(tokens)
    assert tuple(images.shape) == (5, 1, 8, 8) and images.min() >= 0 and images.max() <= 1
    assert torch.equal(tok.encode(images), tokens)  # float [N,1,H,W] path
    assert torch.equal(tok.encode(images[:, 0]), tokens)  # float [N,H,W] path
    floats = torch.tensor([[0.0, 0.03, 0.97, 1.0]]).repeat(1, 16).reshape(1, 8, 8)
    assert tok.encode(floats)[0, :4].tolist() == [0, 0, 16, 16]
    small = GreyLevelTokenizer(levels=4, height=2, width=3)
    assert small.vocab_size == 4 and small.seq_len == 6
    x = torch.tensor([[[0, 1, 2], [3, 2, 1]]])
    assert torch.equal(small.encode(small.decode(small.encode(x))), x.reshape(1, 6))


def test_tokenizer_rejects_out_of_range():
    tok = GreyLevelTokenizer()
    bad = torch.zeros(2, 8, 8, dtype=torch.long)
    bad[1, 3, 3] = 17
    with pytest.raises(ValueError, match=r"out of range: expected 0\.\.16"):
        tok.encode(bad)
    with pytest.raises(ValueError, match="out of range"):
        tok.encode(-bad)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tok.encode(torch.full((1, 8, 8), 1.5))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tok.encode(torch.full((1, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="out of range"):
        tok.decode(torch.full((1, 64), 17))
    with pytest.raises(ValueError, match="shape"):
        tok.decode(torch.zeros(1, 63, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        tok.decode(torch.zeros(1, 64))


# -- classifier and FID ---------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(splits):
    needs("sklearn")
    from catdiff_vision import classifier

    path = classifier.weights_path()
    return path, classifier.get_classifier()


def test_classifier_accuracy_and_cache(splits, trained):
    import os

    from catdiff_vision import classifier

    train, test = splits
    path, model = trained
    assert Path(os.environ["CATDIFF_CACHE"]) in path.parents and path.is_file()
    acc = classifier.accuracy(model, test.tokens, test.labels)
    print(f"digits classifier test accuracy: {acc:.4f}")
    assert acc >= 0.95
    assert classifier.weights_path() == path  # second call: cache hit, same key
    fresh = classifier.DigitsCNN()
    fresh.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
    fresh.eval()
    x = classifier.preprocess(test.tokens)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


def test_fid_orders_real_below_random(splits, trained):
    needs("torch_fidelity")
    from catdiff_vision import fidelity

    train, test = splits
    floor = fidelity.real_test_floor()
    random_tokens = torch.randint(0, 17, (300, 64), generator=torch.Generator().manual_seed(0))
    rand = fidelity.digits_fid(random_tokens)["fid_digits_classifier"]
    one_class = fidelity.fid(train.tokens[train.labels == 3], train.tokens)
    print(f"FID real test (floor) {floor:.3f}, one class {one_class:.3f}, uniform random tokens {rand:.3f}")
    assert 0 <= floor < 20
    assert rand > 10 * floor + 50
    assert one_class > 5 * floor  # mode collapse is visible
    assert abs(fidelity.fid(train.tokens, train.tokens)) < 1e-3


def test_feature_extractor_registered_and_never_inception():
    needs("torch_fidelity")
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    from catdiff_vision import feature_extractor

    assert feature_extractor.EXTRACTOR_NAME == "digits-classifier"
    assert "inception" not in feature_extractor.EXTRACTOR_NAME and "fid" not in feature_extractor.EXTRACTOR_NAME
    assert FEATURE_EXTRACTORS_REGISTRY["digits-classifier"] is feature_extractor.DigitsClassifierFeatureExtractor
    feature_extractor.ensure_registered()  # idempotent
    levels = torch.arange(17).repeat(4)[:64].reshape(1, 64)
    images = feature_extractor.tokens_to_uint8(levels)
    assert images.dtype == torch.uint8 and tuple(images.shape) == (1, 1, 8, 8)
    assert torch.equal(torch.round(images.float() * 16 / 255).long().reshape(1, 64), levels)  # exact


def test_evaluate_metrics(splits, trained):
    needs("torch_fidelity")
    from catdiff_vision.digits import ConditionalDigitsTask, DigitsTask

    train, test = splits
    metrics = DigitsTask().evaluate(test.tokens, None, None)
    expected = {"fid_digits_classifier", "fid_digits_classifier_real_test", "class_entropy", "classifier_confidence"}
    expected |= {f"class_frac_{c}" for c in range(10)}
    assert expected <= set(metrics)
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    assert math.isclose(sum(metrics[f"class_frac_{c}"] for c in range(10)), 1.0, abs_tol=1e-9)
    # evaluating the real test set reproduces the floor exactly
    assert math.isclose(metrics["fid_digits_classifier"], metrics["fid_digits_classifier_real_test"], rel_tol=1e-6)
    assert 2.2 < metrics["class_entropy"] <= math.log(10) + 1e-9
    assert 0.9 < metrics["classifier_confidence"] <= 1.0

    collapsed = torch.zeros(50, 64, dtype=torch.long)
    m = DigitsTask().evaluate(collapsed, None, None)
    assert math.isclose(sum(m[f"class_frac_{c}"] for c in range(10)), 1.0, abs_tol=1e-9)
    assert m["class_entropy"] == 0.0 and m["fid_digits_classifier"] > 10 * m["fid_digits_classifier_real_test"]

    cond = ConditionalDigitsTask().evaluate(test.tokens, test.labels, None)
    assert cond["label_accuracy"] >= 0.95

    with pytest.raises(ValueError, match="out of range"):
        DigitsTask().evaluate(torch.full((10, 64), 17), None, None)


# -- pictures -----------------------------------------------------------------------------


def test_save_samples_png(splits, tmp_path):
    needs("torchvision")
    from catdiff_vision.digits import DigitsTask

    train, _ = splits
    files = DigitsTask().save_samples(train.tokens[:150], None, tmp_path)
    assert files == [tmp_path / "samples.png"]
    assert png_size(files[0]) == (342, 342)  # 10 x (8*4 + 2) + 2
    few = DigitsTask().save_samples(train.tokens[:37], None, tmp_path / "few")
    assert png_size(few[0]) == (342, 4 * 34 + 2)


def test_diagnostics_png(tmp_path):
    needs("matplotlib")
    from catdiff_vision.digits import DigitsTask

    report = {
        "embedding_variance": sorted((torch.rand(64 * 16) ** 4).tolist(), reverse=True) + [0.0],
        "embedding_participation_ratio": 12.5,
        "t": torch.linspace(0, 1, 11).tolist(),
        "cross_entropy": torch.linspace(0.05, 2.8, 11).tolist(),
    }
    files = DigitsTask().diagnostics(report, tmp_path)
    assert files == [tmp_path / "collapse.png"]
    assert png_size(files[0]) == (1000, 400)
    partial = DigitsTask().diagnostics({"t": [0.0, 1.0], "cross_entropy": [0.1, 2.0]}, tmp_path / "partial")
    assert png_size(partial[0]) == (1000, 400)
    with pytest.raises(ValueError, match="cross_entropy"):
        DigitsTask().diagnostics({"t": [0.0, 1.0], "cross_entropy": [0.1]}, tmp_path / "bad")


# -- plugin ---------------------------------------------------------------------------------


def test_plugin_loads_through_registry():
    from catdiff.api.hooks import build_registry

    ep = md.EntryPoint(name="vision", value="catdiff_vision.plugin", group="catdiff")
    reg = build_registry(entry_points=[ep])
    assert "vision" not in reg.failed, reg.failed  # built-ins may be reported separately
    task = reg.get("tasks", "digits").factory()
    assert task.name == "digits" and task.num_classes == 0
    assert reg.get("tasks", "digits-cond").factory().num_classes == 10
    assert isinstance(reg.get("tokenizers", "grey-levels").factory(), GreyLevelTokenizer)
    assert callable(reg.get("metrics", "digits-fid").factory)
    assert reg.get("tasks", "digits").source == "catdiff_vision.plugin"


def test_plugin_import_is_light():
    """Loading the plugin must not import the heavy optional dependencies."""
    code = (
        "import sys, catdiff_vision.plugin as p\n"
        "p.catdiff_tasks(); p.catdiff_tokenizers(); p.catdiff_metrics()\n"
        "heavy = [m for m in ('sklearn', 'torchvision', 'torch_fidelity', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    env_path = [str(ROOT), str(VISION_DIR)]
    proc = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path[:0] = {env_path!r}\n{code}"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
