"""The image-folder task: the small-VQ path (grey fashion-mnist images in class folders) and the
taming-VQGAN path (factor 4, 48 codes, RGB) each prepared, trained, sampled, evaluated, resumed and
sampled from the checkpoint; the grid and vocabulary read from the VQGAN config; bad input."""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from catdiff import Engine

from catdiff.api.errors import UserError
from catdiff.cli import main as cli_main
from catdiff.run import checkpoint
from catdiff.run.config import for_task
from catdiff_vision import fashion_data, image_folder
from catdiff_vision.image_folder import ImageFolderTask
from taming import write_vqgan

SMALL = dict(layers=1, heads=2, width=32, embed_dim=16, batch_size=8, steps=3, warmup=1, n_samples=4,
             sample_steps=4, eval_batches=1, threads=1, log_every=100, ckpt_every=100)
# a taming VQModel config of factor 4 (ch_mult of 3 levels) and 48 codes (not the paper's f16 / 1024)
MODEL_YAML = """\
model:
  target: taming.models.vqgan.VQModel
  params:
    embed_dim: 8
    n_embed: 48
    ddconfig: {double_z: false, z_channels: 32, resolution: 32, in_channels: 3, out_ch: 3, ch: 32,
               ch_mult: [1, 1, 2], num_res_blocks: 1, attn_resolutions: [8], dropout: 0.0}
"""
CLASSES = {"ankle-boot": 9, "t-shirt": 0}  # folder name -> fashion-mnist class


pytestmark = pytest.mark.usefixtures("no_fidelity_weights")  # FID is skipped with a note


@pytest.fixture(scope="module")
def grey_folder(tmp_path_factory):
    """20 fashion-mnist test images per class folder (synthetic grey blobs without the Debian data)."""
    d = tmp_path_factory.mktemp("fashion")
    if fashion_data.available():
        x, y = fashion_data.load("test")
        pick = {name: x[y == c][:20, 0].numpy() for name, c in CLASSES.items()}
    else:
        g = np.random.default_rng(0)
        pick = {name: (g.random((20, 28, 28)) * 255 * (i + 1) / 2).astype(np.uint8) for i, name in enumerate(CLASSES)}
    for name, arrays in pick.items():
        (d / name / "nested").mkdir(parents=True)
        for i, a in enumerate(arrays):  # a few one level deeper: the listing is recursive
            Image.fromarray(a, "L").save(d / name / ("nested" if i < 3 else "") / f"{i:02d}.png")
    return d


@pytest.fixture(scope="module")
def rgb_folder(tmp_path_factory):
    """30 colour images of two sizes (not square: centre-cropped), flat and in a sub-folder."""
    d = tmp_path_factory.mktemp("rgb")
    (d / "more").mkdir()
    g = np.random.default_rng(1)
    for i in range(30):
        h, w = (40, 48) if i % 2 else (36, 36)
        a = np.zeros((h, w, 3), np.uint8)
        a[..., i % 3] = 200
        a[h // 4: h // 2, w // 4: w // 2] = g.integers(0, 255, 3)
        Image.fromarray(a).save(d / ("more" if i >= 20 else "") / f"{i:02d}.png")
    return d


@pytest.fixture(scope="module")
def taming_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("vqgan") / "f4-48"
    write_vqgan(d, MODEL_YAML, global_step=10)
    return d


def task_with(**opts) -> ImageFolderTask:
    task = ImageFolderTask()
    task.setup(for_task(task, None, dict(SMALL, **opts)))
    return task


def sets(**opts) -> list[str]:
    return [a for k, v in opts.items() for a in ("--set", f"{k}={v}")]


# ----------------------------------------------------------------- the small VQ path
def test_small_vq_grey_classes_prepare_train_sample_evaluate_resume(grey_folder, tmp_path, capsys):
    cache = tmp_path / "cache"
    opts = dict(classes="true", image_size=28, codes=32, vq_steps=4, cache_dir=str(cache), workers=0)
    assert cli_main(["prepare", "image-folder", "--images", str(grey_folder), "--quiet"] + sets(**opts)) == 0
    task = task_with(images=str(grey_folder), **opts)
    spec = task.data_spec()  # the facts of the data live in the spec, not in the config
    assert (task.cfg.color, spec.extras["channels"], spec.grid, spec.vocab_size, spec.seq_len) == ("grey", 1, (7, 7), 32, 49)
    assert (spec.num_classes, json.loads(spec.extras["class_names"])) == (2, ["ankle-boot", "t-shirt"])
    assert not {"grid", "channels", "class_names", "data_key", "vocab_size"} & set(task.cfg.options)
    assert task.cfg.token_grid == "" and (task.work / "vq.pt").is_file() and task.prepared()
    train, test = task.load("train"), task.load("test")
    assert (len(train), len(test)) == (38, 2)  # 5% of 40 held out, at least one
    tokens, labels = train.rows(torch.arange(38))
    assert tokens.shape == (38, 49) and int(tokens.max()) < 32 and sorted(set(labels.tolist())) == [0, 1]
    assert labels.tolist() == sorted(labels.tolist())  # in path order: ankle-boot (0) first

    out = tmp_path / "run"
    eng = Engine(ImageFolderTask(), out=out, images=str(grey_folder), **opts, **SMALL).fit()
    m = eng.evaluate()
    assert m["fid_skipped"] == 1.0 and "fid_inception" not in m and m["metric_num_samples"] == 4
    assert 0 <= m["sample_unigram_tv"] <= 1 and m["tokenizer_psnr"] > 0 and 0 < m["tokenizer_mse"] < 1
    err = capsys.readouterr().err
    assert "FID skipped" in err and "CATDIFF_INCEPTION_WEIGHTS" in err and "never downloaded" in err
    assert "preparing the token shards" not in err  # `catdiff prepare` made them
    with Image.open(out / "samples.png") as im:  # 4 samples, one column per class (2), 28 px upscaled 2x
        assert im.size == (2 * (56 + 2) + 2, 2 * (56 + 2) + 2)
    resumed = Engine(ImageFolderTask(), out=out, images=str(grey_folder), **opts, **dict(SMALL, steps=5))
    assert resumed.step == 3 and resumed.fit().step == 5
    # a checkpoint of catdiff before DataSpec held the facts: they were config keys
    old = checkpoint.load(out / "last.pt")
    facts = dict(old["task"].pop("extras"), vocab_size=32, seq_len=49, num_classes=2)
    del facts["listing"]  # not recorded then
    old["task"].pop("grid")
    old["config"] = {**old["config"], **facts}
    torch.save(old, tmp_path / "old.pt")
    # the folder is not needed to sample: the grid, vocabulary and classes are in the checkpoint
    (grey_folder.parent / "moved").mkdir()
    grey_folder.rename(grey_folder.parent / "moved" / "x")
    try:
        for path in (out / "last.pt", tmp_path / "old.pt"):
            ck = Engine.from_checkpoint(path)
            assert (ck.task.vocab_size, ck.task.seq_len, ck.task.num_classes, ck.spec.grid) == (32, 49, 2, (7, 7))
            images = ck.sample(2, labels=torch.tensor([0, 1]), decode=True)
            assert images.shape == (2, 1, 28, 28) and images.dtype == torch.uint8
    finally:
        (grey_folder.parent / "moved" / "x").rename(grey_folder)
    # without its tokenizer a restored model is refused before any sample is drawn
    cache.rename(tmp_path / "cache-moved")
    try:
        capsys.readouterr()
        assert cli_main(["sample", str(out / "last.pt"), "--n", "2", "--out", str(tmp_path / "s")]) == 2
        assert "small VQ tokenizer" in capsys.readouterr().err and not (tmp_path / "s").exists()
    finally:
        (tmp_path / "cache-moved").rename(cache)
    # resuming the old run directory: its facts are compared with the folder's
    old_run = tmp_path / "old_run"
    old_run.mkdir()
    (old_run / "last.pt").write_bytes((tmp_path / "old.pt").read_bytes())
    assert Engine(ImageFolderTask(), out=old_run, images=str(grey_folder), **opts, **dict(SMALL, steps=6)).step == 5
    fewer = tmp_path / "fewer"
    shutil.copytree(grey_folder, fewer)
    next(fewer.rglob("*.png")).unlink()
    with pytest.raises(checkpoint.CheckpointError, match=r"trained on other data than task 'image-folder' reads now "
                                                         r"\(data_key: '\w+' -> '\w+'\); give the data"):
        Engine(ImageFolderTask(), out=old_run, images=str(fewer), **opts, **SMALL)
    # evaluating a restored model against another folder (its FID reference) is refused
    ck = Engine.from_checkpoint(out / "last.pt", images=str(fewer))
    with pytest.raises(UserError, match=r"image-folder: the images in .*fewer \(39\) are not those this model was "
                                        r"trained on; point --set images at its training folder"):
        ck.task.splits()


def test_default_small_vq_is_32px_rgb_8x8(rgb_folder, tmp_path):
    task = task_with(images=str(rgb_folder), cache_dir=str(tmp_path))
    o = task.cfg.options
    assert (o["color"], task.facts["channels"], o["image_size"], task.seq_len, task.vocab_size, task.num_classes) == \
        ("rgb", 3, 32, 64, 128, 0)
    assert task_with(images=str(rgb_folder), color="grey").facts["channels"] == 1
    assert task_with(images=str(rgb_folder), image_size=16).seq_len == 16
    with pytest.raises(UserError, match=r"image_size=30 must be a positive multiple of the tokenizer's downsampling "
                                        r"factor 4 \(the small VQ\)"):
        task_with(images=str(rgb_folder), image_size=30)


# ----------------------------------------------------------------- the taming VQGAN path
def test_vqgan_of_another_factor_cli_run_resume_sample(rgb_folder, taming_dir, tmp_path, capsys):
    out, cache = tmp_path / "run", tmp_path / "cache"
    opts = dict(images=rgb_folder, tokenizer=taming_dir, cache_dir=cache, **SMALL)
    assert cli_main(["run", "image-folder", "--out", str(out)] + sets(**opts)) == 0  # prepares the shards itself
    err = capsys.readouterr().err
    assert "preparing the token shards" in err and "FID skipped" in err
    saved = json.loads((out / "config.json").read_text())  # one flat table of settings; the data's facts: the spec
    assert saved["image_size"] == 32 and not {"vocab_size", "grid", "seq_len", "channels"} & set(saved)
    spec = Engine.from_checkpoint(out / "last.pt").spec
    assert (spec.vocab_size, spec.grid, spec.seq_len, spec.extras["channels"]) == \
        (48, (8, 8), 64, 3)  # 32 px / factor 4 = 8x8 tokens of n_embed = 48 codes, from model.yaml
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["fid_skipped"] == 1.0 and metrics["tokenizer_psnr"] > 0
    with Image.open(out / "samples.png") as im:  # 4 samples in one row of 8 columns, 32 px upscaled 2x
        assert im.size == (4 * (64 + 2) + 2, 64 + 4)
    assert cli_main(["run", "image-folder", "--out", str(out)] + sets(**dict(opts, steps=5))) == 0  # resumes
    assert Engine.from_checkpoint(out / "last.pt").step == 5
    assert cli_main(["sample", str(out / "last.pt"), "--n", "3", "--out", str(tmp_path / "s")]) == 0
    tokens = torch.load(tmp_path / "s" / "samples.pt")
    assert tokens.shape == (3, 64) and int(tokens.max()) < 48 and (tmp_path / "s" / "samples.png").is_file()


def test_vqgan_grid_and_vocab_follow_its_config(rgb_folder, tmp_path):
    f2 = tmp_path / "f2"
    write_vqgan(f2, MODEL_YAML.replace("ch_mult: [1, 1, 2]", "ch_mult: [1, 2]")
                .replace("n_embed: 48", "n_embed: 100").replace("resolution: 32", "resolution: 16"), global_step=10)
    task = task_with(images=str(rgb_folder), tokenizer=str(f2))
    assert (task.vocab_size, task.seq_len, task.cfg.options["image_size"]) == (100, 64, 16)  # (16 / 2)^2
    assert task_with(images=str(rgb_folder), tokenizer=str(f2), image_size=24).seq_len == 144
    with pytest.raises(UserError, match="image_size=25 must be a positive multiple of the tokenizer's downsampling "
                                        "factor 2 \\(the VQGAN\\)"):
        task_with(images=str(rgb_folder), tokenizer=str(f2), image_size=25)


def test_vqgan_config_that_does_not_fit_its_checkpoint(rgb_folder, taming_dir, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "last.ckpt").write_bytes((taming_dir / "last.ckpt").read_bytes())
    (bad / "model.yaml").write_text(MODEL_YAML.replace("n_embed: 48", "n_embed: 64"))
    args = ["prepare", "image-folder", "--images", str(rgb_folder), "--quiet"] + sets(tokenizer=bad, cache_dir=tmp_path)
    assert cli_main(args) == 2
    warning, err = capsys.readouterr().err.strip().splitlines()
    assert warning.startswith("image-folder: warning: ") and "holds 28 training images" in warning  # a small folder
    assert err.startswith("catdiff: error: VQGAN ")
    assert "does not fit the VQGAN of its config" in err and "quantize.embedding.weight: checkpoint (48, 8) vs model (64, 8)" in err


# ----------------------------------------------------------------- bad input
def test_bad_folders_and_images(tmp_path, grey_folder, rgb_folder, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"image folder .*empty is empty"):
        task_with(images=str(tmp_path / "empty"))
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "notes.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match=r"no images \(.png, .jpg.*\) under .*text"):
        task_with(images=str(tmp_path / "text"))
    with pytest.raises(FileNotFoundError, match="has no class sub-folders"):
        task_with(images=str(tmp_path / "text"), classes=True)
    with pytest.raises(FileNotFoundError, match="missing-dir not found"):
        task_with(images=str(tmp_path / "missing-dir"))
    (tmp_path / "cls" / "a").mkdir(parents=True)
    for name in ("cls/a/1.png", "cls/a/2.png", "cls/stray.png"):
        (tmp_path / name).write_bytes((rgb_folder / "00.png").read_bytes())
    with pytest.raises(UserError, match=r"classes=true found one class sub-folder \(a\) in .*cls; a class-conditional "
                                        r"model needs at least 2 \(add class folders, or set classes=false\)"):
        task_with(images=str(tmp_path / "cls"), classes=True)
    (tmp_path / "cls" / "b").mkdir()
    (tmp_path / "cls" / "b" / "1.png").write_bytes((rgb_folder / "00.png").read_bytes())
    capsys.readouterr()
    assert task_with(images=str(tmp_path / "cls"), classes=True).num_classes == 2
    assert re.search(r"^image-folder: warning: classes=true reads DIR/<class>/...; the images directly in .*cls are "
                     r"ignored$", capsys.readouterr().err, re.M)
    with pytest.raises(FileNotFoundError, match=r"00.png is a file, not a directory of images; give its folder"):
        task_with(images=str(rgb_folder / "00.png"))
    with pytest.raises(UserError, match=r"config key 'grid' is no setting: task 'image-folder' derives it from its "
                                        r"data and stores it with the checkpoint; remove it"):
        task_with(images=str(rgb_folder), grid=7)  # a setting until catdiff 0.1's DataSpec change
    with pytest.raises(UserError, match=r"task image-folder needs its images: --set images=DIR"):
        Engine(ImageFolderTask(), **SMALL)  # no folder, no model (e.g. a resume without --set images)
    # mixed grey and colour: an error under color=auto, converted when a mode is given
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("a.png", "b.png"):
        (mixed / name).write_bytes((grey_folder / "t-shirt" / "10.png").read_bytes())
    (mixed / "c.png").write_bytes((rgb_folder / "00.png").read_bytes())
    with pytest.raises(UserError, match=r"mixes grey \(2 files, e.g. a.png\) and colour images \(1, e.g. c.png\); "
                                        r"set --set color=rgb"):
        task_with(images=str(mixed))
    assert task_with(images=str(mixed), color="rgb").facts["channels"] == 3
    # unreadable: found by the mode scan (color=auto) and, without it, by the loader at prepare time
    (mixed / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(UserError, match=r"broken.png: not a readable image \(cannot identify image file"):
        task_with(images=str(mixed))
    task = task_with(images=str(mixed), color="rgb", cache_dir=str(tmp_path / "cache"), vq_steps=2, workers=1)
    with pytest.raises(UserError, match=r"broken.png: not a readable image"):
        task.prepare(None)


def test_missing_images_and_the_prepare_command_under_ddp(grey_folder, tmp_path, monkeypatch, capsys):
    with pytest.raises(UserError, match=r"needs its images: --set images=DIR"):
        task_with().load("train")
    task = task_with(images=str(grey_folder), classes=True, cache_dir=str(tmp_path / "c"), image_size=28)
    monkeypatch.setenv("WORLD_SIZE", "2")
    command = f"catdiff prepare image-folder --images {grey_folder} --set cache_dir={tmp_path / 'c'} " \
              "--set classes=true --set color=grey --set image_size=28`"
    with pytest.raises(UserError, match="prepare them once before a distributed run: `" + re.escape(command)):
        task.load("train")
    monkeypatch.delenv("WORLD_SIZE")
    capsys.readouterr()
    assert cli_main(["prepare", "image-folder", "--images", str(tmp_path / "other"), "--quiet",
                     "--set", f"images={grey_folder}"]) == 2
    assert re.search(r"--images .*other and --set images=.* disagree; give one", capsys.readouterr().err)


def test_fid_with_the_users_inception_weights(rgb_folder, tmp_path, monkeypatch, capsys):
    """With weights on disk, FID / IS run on RGB uint8 images against the training images at image_size."""
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"weights")
    calls = {}

    def fake_metrics(generated, reference, **kw):
        calls.update(generated=generated, reference=reference, **kw)
        return {"fid_inception": 12.5}

    monkeypatch.setattr("catdiff_vision.image_metrics.image_metrics", fake_metrics)
    task = task_with(images=str(rgb_folder), color="grey", image_size=16, inception_weights=str(weights), workers=0)
    out = task.fidelity(torch.zeros(12, 1, 16, 16, dtype=torch.uint8))
    assert out == {"fid_inception": 12.5, "fid_skipped": 0.0}
    assert calls["generated"].shape == (12, 3, 16, 16) and calls["reference"].shape == (28, 3, 16, 16)
    assert calls["reference"].dtype == torch.uint8 and calls["inception_weights"] == weights and calls["isc"]
    assert not calls["prc"]
    # precision / recall asked for without VGG16 weights: skipped with a note, FID still computed
    task = task_with(images=str(rgb_folder), image_size=16, inception_weights=str(weights), precision_recall=True)
    assert task.fidelity(torch.zeros(4, 3, 16, 16, dtype=torch.uint8)) == \
        {"fid_inception": 12.5, "fid_skipped": 0.0, "precision_recall_skipped": 1.0}
    assert not calls["prc"] and not calls["isc"] and "precision / recall skipped: vgg16 weights" in capsys.readouterr().err


def test_plugin_registers_image_folder():
    from catdiff.api.hooks import registry

    assert registry().get("tasks", "image-folder").factory is ImageFolderTask
    assert {s.name: s.default for s in ImageFolderTask.settings}["color"] == "auto" and image_folder.SMALL_VQ_SIZE == 32


def test_tiny_folder_scales_the_tokenizer_steps_and_warns(tmp_path, monkeypatch, capsys):
    from catdiff_vision import vq_tokenizer

    folder = tmp_path / "three"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((12, 12, 3), 80 * i, np.uint8)).save(folder / f"{i}.png")
    task = task_with(images=str(folder), cache_dir=str(tmp_path / "cache"), workers=0)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"image-folder: warning: {folder} holds 2 training images; the default settings are meant for at "
                   f"least {image_folder.MIN_IMAGES} (fewer are memorised rather than modelled); the small VQ "
                   f"tokenizer trains {image_folder.VQ_MIN_STEPS} steps"]
    trained = []

    def train(images, hp, log):  # record the settings instead of training
        trained.append((len(images), hp["steps"]))
        return vq_tokenizer.VQTokenizer(**hp).eval()

    monkeypatch.setattr(vq_tokenizer, "train", train)
    task._train_small_vq(task.splits()["train"], print)
    assert trained == [(2, image_folder.VQ_MIN_STEPS)] and (task.work / "vq.pt").is_file()
    assert f"training the small VQ tokenizer ({image_folder.VQ_MIN_STEPS} steps, 2 images" in capsys.readouterr().out
    # in proportion to the images up to vq_steps (reached at MIN_IMAGES), never above a smaller vq_steps
    assert [task._vq_hparams(3, 8, n)["steps"] for n in (2, 100, 500, 1000, 20_000)] == [100, 150, 750, 1500, 1500]
    assert task_with(images=str(folder), vq_steps=7)._vq_hparams(3, 8, 2)["steps"] == 7


@pytest.mark.parametrize("key, value, allowed", [
    ("crop", "squash", "center | resize"), ("color", "sepia", "auto | rgb | grey"),
    ("codes", 1, r"in \[2, 65536\]"), ("test_frac", 1.0, r"in \(0, 1\)")])
def test_bad_options_are_refused_by_their_settings_before_the_folder_is_read(key, value, allowed):
    with pytest.raises(UserError, match=rf"config {key}={value!r}: must be {allowed}"):
        for_task(ImageFolderTask(), None, {"images": "/nonexistent", key: value})
