"""``image-folder``: a diffusion model of any folder of images, in one command.

    catdiff run image-folder --set images=DIR [--set classes=true] [--set tokenizer=VQGAN_DIR]

Data. Every image under ``images`` (recursive; :mod:`.folder_images`), converted to
``color`` (``auto``: grey when all images are grey, rgb when all are colour, an error naming
examples when the folder mixes both; ``rgb`` / ``grey`` convert), resized and centre-cropped to
``image_size`` (``crop=resize`` squashes instead). ``classes=true``: one sub-folder per class
(ImageFolder style), label = rank of the sorted folder name, and the model is class-conditional
(``--set guidance=W`` for classifier-free guidance). A fixed ``test_frac`` of the images
(seed 0, the same for every run) is held out for the likelihood bound.

Tokenizer (``tokenizer``):
  ""        (default) the small VQ-VAE of :mod:`.vq_tokenizer`, 4x downsampling, ``codes`` ids,
            trained on (up to ``vq_images`` of) the training images at the first run or by
            ``catdiff prepare image-folder --images DIR``, for ``vq_steps``, fewer on a folder
            of under ``MIN_IMAGES`` training images (in proportion, at least ``VQ_MIN_STEPS``);
            ``image_size`` defaults to 32, so 8x8 = 64 tokens.
  a path    a taming VQGAN log directory (or its last.ckpt with model.yaml beside it) of any
            downsampling factor f and codebook size K, read from model.yaml (f = 2^(len(ch_mult)-1),
            K = n_embed); ``image_size`` defaults to its ddconfig.resolution, seq_len = (size/f)^2.

Token shards (:mod:`.shards`) and the small VQ are cached in ``cache_dir`` (default
``$CATDIFF_DATA/image-folder`` or ``~/.cache/catdiff/image-folder``) under ``data_key``, a
hash of the image list (relative paths, sizes, labels) and every setting that changes the
tokens; ``catdiff run`` prepares them when missing (single process; under DDP run
``catdiff prepare`` first, the error says the exact command).

What setup derives from the folder: the resolved ``color`` and ``image_size`` (stored in the
config, as the settings' values), and the data spec: vocabulary, ``seq_len`` = grid^2, the
classes, and ``DataSpec.extras`` ``grid``, ``channels``, ``class_names`` (JSON), ``data_key`` and
``listing`` (the image list's hash: a restored model refuses another folder as its FID reference).
The checkpoint stores the spec, so ``catdiff sample`` / ``eval`` rebuild the task from it
(:meth:`ImageFolderTask.restore`) without reading the folder (decoding needs only the tokenizer:
the VQGAN path, or the cached small VQ). ``DataSpec.grid`` gives the encoder its 2D layout.

Metrics: Inception FID / IS (torch-fidelity, :mod:`.image_metrics`) of the decoded samples
against the training images (up to ``fid_images``; or the folder ``fid_reference``) when
Inception weights are found (``inception_weights``, env CATDIFF_INCEPTION_WEIGHTS, the torch hub
cache; never downloaded), else ``fid_skipped`` = 1 and a printed line saying what to provide;
``tokenizer_mse`` / ``tokenizer_psnr`` (test reconstructions: the tokenizer's floor) and
``sample_unigram_tv`` (token-frequency distance of the samples to the training tokens).
``samples.png``: a grid of the first 64 samples (conditioned: one column per class).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Mapping

import torch

from catdiff.api.errors import UserError
from catdiff.api.settings import Setting
from catdiff.api.task import LazyTokenData, Task
from catdiff.run.checkpoint import load_file, save_torch

from . import folder_images as fi
from .folder_tokenizers import SMALL_VQ_FACTOR, SmallVQ, TamingTokenizer, load_taming, vqgan_spec
from .image_data import EXTENSIONS

SMALL_VQ_SIZE = 32  # image_size of the small VQ when not given: 8x8 tokens
UNIGRAM_ROWS = 10_000
RECON_IMAGES = 256  # test images for the tokenizer's reconstruction error
MIN_IMAGES = 1000  # training images the default settings are meant for; fewer: a warning, fewer VQ steps
VQ_MIN_STEPS = 100  # the small VQ's steps on the smallest folder (vq_steps scaled by images / MIN_IMAGES)
SETTINGS = (
    Setting("images", "", "the image folder, searched recursively (.png .jpg .jpeg .webp .bmp); stored as an "
            "absolute path", mutable=True),
    Setting("classes", False, "one sub-folder per class (ImageFolder style, label = rank of the sorted folder "
            "name): a class-conditional model"),
    Setting("tokenizer", "", "a taming VQGAN of any factor and codebook size (its log directory, or last.ckpt with "
            "model.yaml beside it); \"\" = the small VQ-VAE, trained on the folder"),
    Setting("trust_checkpoint", False, "allow pickled objects when loading the VQGAN checkpoint "
            "(torch.load weights_only=False); env CATDIFF_TRUST_CHECKPOINT=1 too", mutable=True),
    Setting("image_size", 0, "image side in pixels, a multiple of the tokenizer's factor; 0 = 32 with the small VQ, "
            "the VQGAN's ddconfig.resolution with a VQGAN (resolved at setup and stored)", low=0),
    Setting("color", "auto", "auto: grey when every image is grey, rgb when every one is colour (a folder that "
            "mixes both is an error); rgb | grey convert every image; resolved at setup and stored",
            choices=fi.COLORS),
    Setting("crop", "center", "center: resize the shorter side (bicubic), then centre-crop | resize: squash to "
            "a square", choices=fi.CROPS),
    Setting("test_frac", 0.05, "fraction of the images held out for the likelihood bound (at least one; the same "
            "split, seed 0, for every run)", low=0, low_open=True, high=1, high_open=True),
    Setting("cache_dir", "", "where the small VQ and the token shards are cached, under data_key; \"\" = "
            "$CATDIFF_DATA/image-folder, else ~/.cache/catdiff/image-folder", mutable=True),
    Setting("codes", 128, "codebook size of the small VQ, the vocabulary K (not used with a VQGAN tokenizer)",
            low=2, high=65_536),
    Setting("vq_steps", 1500, f"training steps of the small VQ (on a folder of under {MIN_IMAGES} training images "
            f"that many in proportion, at least {VQ_MIN_STEPS})", low=1),
    Setting("vq_images", 20_000, "training images the small VQ trains on (a fixed random subset); <= 0 = all"),
    Setting("workers", -1, "image-decoding processes; < 0 = up to 4 (one per spare core), 0 = in the main process",
            mutable=True),
    Setting("fid_reference", "", "directory of real images for FID / IS; \"\" = up to fid_images training images",
            mutable=True),
    Setting("fid_images", 10_000, "training images in the FID reference (a fixed random subset); <= 0 = all",
            mutable=True),
    Setting("inception_weights", "", "torch-fidelity Inception weights file; \"\" = env CATDIFF_INCEPTION_WEIGHTS, "
            "else the torch hub cache (never downloaded); without them FID is skipped (fid_skipped = 1)", mutable=True),
    Setting("vgg16_weights", "", "VGG16 weights file for precision / recall; \"\" = env CATDIFF_VGG16_WEIGHTS, "
            "else the torch hub cache (never downloaded)", mutable=True),
    Setting("precision_recall", False, "also report VGG16 precision / recall (skipped, precision_recall_skipped = 1, "
            "without VGG16 weights)", mutable=True),
)
# DataSpec.extras of this task: grid side, image channels the tokenizer reads, the class folder
# names (a JSON list) and data_key (a hash of the image list and every setting that changes the
# tokens: the cache sub-directory)
FACTS = ("grid", "channels", "class_names", "data_key")
LISTING = "listing"  # and the hash of the image list alone (checkpoints before 2026-12-08 lack it)
# fashion-mnist's measured small-image settings (catdiff_vision.fashion: lr 2e-3, short warmup,
# ema_cm 0.9, D = 32, measured with evidence off and sinusoidal positions); not re-tuned here.
DEFAULTS: Mapping[str, Any] = dict(layers=4, heads=4, width=96, embed_dim=32, batch_size=32, lr=2e-3, warmup=100,
                                   steps=1000, ema_cm=0.9, sample_steps=50, n_samples=256, ckpt_every=500,
                                   log_every=50, eval_batches=4, evidence=False, positions="sinusoidal")


def _cache_root(option: str) -> Path:
    if option:
        return Path(option).expanduser()
    base = os.environ.get("CATDIFF_DATA")
    return Path(base) / "image-folder" if base else Path.home() / ".cache" / "catdiff" / "image-folder"


def _listing(root: Path, items) -> str:
    """A hash of the image list: relative paths, labels and file sizes."""
    h = hashlib.sha256()
    for rel, label in items:
        h.update(f"{rel}\0{label}\0{(root / rel).stat().st_size}\n".encode())
    return h.hexdigest()


class ImageFolderTask(Task):
    """Any folder of images (see the module docstring)."""

    min_samples = 2  # FID
    name = "image-folder"
    description = "any folder of images (--set images=DIR; classes=true: sub-folders), small VQ or taming VQGAN tokens"
    settings, defaults = SETTINGS, DEFAULTS  # vocab_size, seq_len, num_classes: derived by setup
    # catdiff 0.1 kept the data's facts in the config; its checkpoints move them into the spec
    config_facts = ("vocab_size", "seq_len", "num_classes", *FACTS)

    def __init__(self):
        super().__init__()
        self.facts: dict[str, Any] = {}  # FACTS (and LISTING), derived from the folder or restored from a checkpoint
        self._restored = False

    # ------------------------------------------------------------------ setup
    def restore(self, spec) -> None:
        """A checkpoint's spec: sample and evaluate without the folder."""
        if all(k in spec.extras for k in FACTS):
            self.facts = {k: spec.extras[k] for k in (*FACTS, LISTING) if k in spec.extras}
            self.vocab_size, self.seq_len, self.num_classes = spec.vocab_size, spec.seq_len, spec.num_classes
            self._restored = True

    def setup(self, cfg) -> None:
        super().setup(cfg)
        self._items = self._fid_ref = None
        self.__dict__.pop("tokenizer", None)
        for key in ("images", "tokenizer", "cache_dir"):  # absolute, so a checkpoint works from any directory
            if self.option(key):
                cfg.options[key] = str(Path(self.option(key)).expanduser().resolve())
        if not self.facts:  # what the user gave, before _derive resolves it (for prepare --images)
            self._given = {k: self.option(k) for k in ("color", "image_size")}
        if not self.facts and self.option("images"):
            self._derive()
        if not self.facts:  # no images yet (`catdiff prepare` passes them later): a placeholder until prepare()
            self.vocab_size, self.seq_len, self.num_classes = max(2, int(self.option("codes"))), 1, 0
        elif self._restored and not self.option("tokenizer"):
            self._check_small_vq()  # a restored model decodes with it: said before any sample is drawn

    def data_spec(self):
        self._need_images()  # a model of no folder: building one, or resuming without --set images, is refused
        spec = super().data_spec()
        grid = int(self.facts["grid"])
        return dataclasses.replace(spec, extras=dict(self.facts), grid=(grid, grid))

    def _derive(self) -> None:
        """List the folder and resolve colour / size / tokenizer: the config's ``color`` and
        ``image_size``, the vocabulary, the grid and the classes (``facts``)."""
        opt = self.option
        root = Path(opt("images")).expanduser()
        items, names = fi.list_folder(root, bool(opt("classes")))
        if opt("classes") and len(names) < 2:
            raise UserError(f"image-folder: classes=true found one class sub-folder ({names[0]}) in {root}; a "
                            f"class-conditional model needs at least 2 (add class folders, or set classes=false)")
        if opt("classes") and any(p.suffix.lower() in EXTENSIONS for p in root.iterdir() if p.is_file()):
            print(f"image-folder: warning: classes=true reads DIR/<class>/...; the images directly in {root} are "
                  f"ignored", file=sys.stderr)
        color = fi.resolve_color(opt("color"), root, items)
        if opt("tokenizer"):
            spec = vqgan_spec(opt("tokenizer"))
            factor, vocab, channels, size = spec["factor"], spec["n_embed"], spec["in_channels"], spec["resolution"]
        else:
            factor, vocab, size = SMALL_VQ_FACTOR, int(opt("codes")), SMALL_VQ_SIZE
            channels = 1 if color == "grey" else 3
        size = int(opt("image_size")) or size
        if size < factor or size % factor:
            raise UserError(f"task image-folder: image_size={size} must be a positive multiple of the tokenizer's "
                            f"downsampling factor {factor} ({'the VQGAN' if opt('tokenizer') else 'the small VQ'})")
        grid = size // factor
        n_train = len(fi.split_items(items, float(opt("test_frac")))[0])
        vq = None if opt("tokenizer") else self._vq_hparams(channels, grid, self._vq_images(n_train))
        if n_train < MIN_IMAGES and int(os.environ.get("RANK", 0)) == 0:
            vq_note = f"; the small VQ tokenizer trains {vq['steps']} steps" if vq else ""
            print(f"image-folder: warning: {root} holds {n_train} training images; the default settings are meant "
                  f"for at least {MIN_IMAGES} (fewer are memorised rather than modelled){vq_note}", file=sys.stderr)
        tok = {"vqgan": spec["id"]} if opt("tokenizer") else {"vq": vq}
        listing = _listing(root, items)
        settings = {"format": 1, "size": size, "color": color, "crop": opt("crop"), "classes": bool(opt("classes")),
                    "test_frac": float(opt("test_frac")), "tokenizer": tok, "images": listing}
        key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        self._items = (root, items)
        self.cfg.options.update(color=color, image_size=size)
        self.vocab_size, self.seq_len, self.num_classes = vocab, grid * grid, len(names)
        self.facts = dict(grid=grid, channels=channels, class_names=json.dumps(names), data_key=key, listing=listing)

    def _vq_images(self, n_train: int) -> int:
        """How many of ``n_train`` training images the small VQ trains on (``vq_images``)."""
        cap = int(self.option("vq_images"))
        return min(n_train, cap) if cap > 0 else n_train

    def _vq_hparams(self, channels: int, grid: int, images: int) -> dict:
        """The small VQ's settings for ``images`` training images: ``vq_steps``, or on a small folder
        that many in proportion to ``images / MIN_IMAGES`` (at least ``VQ_MIN_STEPS``)."""
        from .vq_tokenizer import HPARAMS

        steps = int(self.option("vq_steps"))
        steps = min(steps, max(VQ_MIN_STEPS, math.ceil(steps * images / MIN_IMAGES)))
        return dict(HPARAMS, codes=int(self.option("codes")), steps=steps, channels=channels, grid=grid)

    # ------------------------------------------------------------------ paths
    @property
    def work(self) -> Path:
        """The cache directory of this data and these settings: vq.pt, train/, test/."""
        return _cache_root(self.option("cache_dir")) / self.facts["data_key"]

    @property
    def root(self) -> Path:
        return Path(self.option("images")).expanduser()

    def _need_images(self) -> None:
        if not self.facts:
            raise UserError("task image-folder needs its images: --set images=DIR (`catdiff prepare image-folder "
                            "--images DIR`): any folder of images, searched recursively; add --set classes=true for "
                            "one sub-folder per class")

    def splits(self) -> dict[str, list]:
        """Train and test items (relative path, label) of the folder."""
        self._need_images()
        if self._items is None:  # a restored model: the folder given must hold the images it was trained on
            items = fi.list_folder(self.root, bool(self.option("classes")))[0]
            if LISTING in self.facts and _listing(self.root, items) != self.facts[LISTING]:
                raise UserError(f"image-folder: the images in {self.root} ({len(items)}) are not those this model was "
                                f"trained on; point --set images at its training folder")
            self._items = (self.root, items)
        train, test = fi.split_items(self._items[1], float(self.option("test_frac")))
        return {"train": train, "test": test}

    def prepare_command(self) -> str:
        """The `catdiff prepare` command line of these options (for the DDP error message)."""
        defaults = {s.name: s.default for s in SETTINGS if s.name != "images"}
        sets = "".join(f" --set {k}={str(v).lower() if isinstance(v, bool) else v}"
                       for k, v in sorted(self.cfg.options.items()) if k in defaults and v != defaults[k])
        return f"catdiff prepare image-folder --images {self.root}{sets}"

    # ------------------------------------------------------------------ tokenizer
    @functools.cached_property
    def tokenizer(self):
        """The tokenizer of the stored settings; the small VQ must have been trained (prepare)."""
        if self.option("tokenizer"):
            trust = bool(self.option("trust_checkpoint")) or os.environ.get("CATDIFF_TRUST_CHECKPOINT") == "1"
            vqgan = load_taming(self.option("tokenizer"), trust)
            tok = TamingTokenizer(vqgan, int(self.facts["channels"]))
            grid = int(self.facts["grid"])
            if tok.vocab_size != self.vocab_size or int(self.option("image_size")) // tok.factor != grid:
                raise UserError(f"VQGAN {self.option('tokenizer')} has {tok.vocab_size} codes and factor {tok.factor}; "
                                f"this model was trained on {self.vocab_size} codes in a {grid}x{grid} grid")
            return tok
        from .vq_tokenizer import VQTokenizer

        self._check_small_vq()
        payload = load_file(self.work / "vq.pt", "small VQ tokenizer", "delete it and run `catdiff prepare image-folder --images DIR` "
                            "again with the run's options", ("hparams", "state_dict"))
        model = VQTokenizer(**payload["hparams"])
        model.load_state_dict(payload["state_dict"])
        return SmallVQ(model.eval().requires_grad_(False))

    def _check_small_vq(self) -> None:
        path = self.work / "vq.pt"
        if not path.is_file():
            raise FileNotFoundError(f"small VQ tokenizer {path} not found: point --set cache_dir at the cache the "
                                    "model was trained with, or (with its images) run `catdiff prepare image-folder "
                                    "--images DIR` with the run's options")

    def _images(self, items) -> torch.Tensor:
        return fi.load_all(self.root, items, int(self.option("image_size")), self.option("color"), self.option("crop"),
                           int(self.option("workers")))

    def _train_small_vq(self, train_items, log) -> None:
        from . import vq_tokenizer

        path = self.work / "vq.pt"
        if self.option("tokenizer") or path.is_file():
            return
        n = self._vq_images(len(train_items))
        if n < len(train_items):  # a fixed random subset (seed 0)
            pick = sorted(torch.randperm(len(train_items), generator=torch.Generator().manual_seed(0))[:n].tolist())
            train_items = [train_items[i] for i in pick]
        grid = int(self.facts["grid"])
        hp = self._vq_hparams(int(self.facts["channels"]), grid, len(train_items))
        if log:
            log(f"image-folder: training the small VQ tokenizer ({hp['steps']} steps, {len(train_items)} images, "
                f"{hp['codes']} codes, {grid}x{grid} grid)")
        model = vq_tokenizer.train(self._images(train_items), hp, log=log)
        save_torch({"state_dict": model.state_dict(), "hparams": hp}, path, "VQ tokenizer")

    # ------------------------------------------------------------------ preparation
    def prepared(self) -> bool:
        from .shards import ShardedTokens

        try:
            return all(ShardedTokens(self.work / s).index["complete"] for s in ("train", "test"))
        except FileNotFoundError:
            return False

    def prepare_arguments(self, parser) -> None:
        parser.add_argument("--images", help="the image folder (default: option images)")
        parser.add_argument("--batch-size", type=int, default=64, help="images per encoder batch")
        parser.add_argument("--device", default="auto", help="where a VQGAN encodes: auto (cuda if available), cpu, cuda")
        parser.add_argument("--quiet", action="store_true", help="no progress output")

    def prepare(self, args=None) -> Path:
        """Train the small VQ (if it is the tokenizer and absent) and write the train/test token
        shards (resumable); returns the cache directory."""
        if getattr(args, "images", None):
            given = self.option("images")
            if given and Path(given).resolve() != Path(args.images).expanduser().resolve():
                raise UserError(f"--images {args.images} and --set images={given} disagree; give one")
            self.cfg.options.update(getattr(self, "_given", {}), images=str(args.images))
            self.facts = {}
            self.setup(self.cfg)
        self._need_images()
        return self._prepare(quiet=bool(getattr(args, "quiet", False)), batch_size=getattr(args, "batch_size", 64),
                             device=getattr(args, "device", "auto"))

    def _prepare(self, quiet: bool = False, batch_size: int = 64, device: str = "auto") -> Path:
        from . import shards
        from .classifier import single_thread

        log = None if quiet else functools.partial(print, flush=True)  # seen at once in a log file too
        splits = self.splits()
        self._train_small_vq(splits["train"], log)
        tok = self.tokenizer
        if isinstance(tok, TamingTokenizer):  # the small VQ stays on the CPU
            tok.vqgan.to(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        rec = self.reconstruction(tok, splits["test"][:RECON_IMAGES])
        if log:
            log(f"image-folder: tokenizer test reconstruction MSE {rec['tokenizer_mse']:.5f} (pixels in [0, 1]), "
                f"PSNR {rec['tokenizer_psnr']:.2f} dB")
        size, color, crop = int(self.option("image_size")), self.option("color"), self.option("crop")
        workers = int(self.option("workers"))
        classes = bool(self.option("classes"))

        def encode(batch):
            images, labels = fi.checked(batch)
            with single_thread():
                return tok.encode(images).numpy(), labels.numpy() if classes else None

        for split, items in splits.items():
            shards.write_shards(
                self.work / split, items, encode, seq_len=self.seq_len, vocab_size=self.vocab_size,
                shard_size=10_000, batch_size=batch_size, progress=not quiet,
                batches=lambda chunk, bs: fi.loader(self.root, chunk, size, color, crop, bs, workers),
                settings={"data_key": self.facts["data_key"]},
                meta={"images": str(self.root.resolve()), "grid": [int(self.facts["grid"])] * 2,
                      "class_names": json.loads(self.facts["class_names"]), "reconstruction": rec})
        if log:
            log(f"image-folder: token shards in {self.work} ({len(splits['train'])} train, {len(splits['test'])} test "
                f"images, {self.seq_len} tokens of {self.vocab_size} codes each)")
        return self.work

    def reconstruction(self, tok, items) -> dict[str, float]:
        """Tokenizer MSE (pixels in [0, 1]) and PSNR on ``items``: the floor of any model of its tokens."""
        from .classifier import single_thread

        x = self._images(items)
        with single_thread():
            rec = torch.cat([tok.decode(tok.encode(c)) for c in x.split(64)])
        if rec.shape[1] != x.shape[1]:  # grey data through an RGB VQGAN: compare grey levels
            rec = rec.float().mean(1, keepdim=True)
        mse = ((rec.float() - x.float()) / 255).pow(2).mean().item()
        return {"tokenizer_mse": mse, "tokenizer_psnr": 10 * math.log10(1 / max(mse, 1e-12))}

    # ------------------------------------------------------------------ data
    def load(self, split: str) -> LazyTokenData:
        from .shards import ShardedTokens

        self._need_images()
        if not self.prepared():
            if int(os.environ.get("WORLD_SIZE", 1)) > 1:
                raise UserError(f"image-folder: no token shards in {self.work}; prepare them once before a distributed "
                                f"run: `{self.prepare_command()}`")
            print(f"image-folder: preparing the token shards in {self.work} (once)", file=sys.stderr)
            self._prepare()
        shards = ShardedTokens(self.work / split)
        if (shards.seq_len, shards.vocab_size) != (self.seq_len, self.vocab_size):
            raise UserError(f"{shards.dir} holds {shards.seq_len} tokens of {shards.vocab_size} codes; the task "
                            f"needs {self.seq_len} of {self.vocab_size} (delete the directory to re-extract)")
        return shards.lazy()

    # ------------------------------------------------------------------ samples and metrics
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [N, g*g] -> uint8 images [N, C, S, S]."""
        from .classifier import single_thread

        with single_thread():
            return torch.cat([self.tokenizer.decode(c) for c in torch.as_tensor(tokens).cpu().split(64)])

    def save_samples(self, tokens, labels, out_dir: Path) -> list[Path]:
        """``samples.png``: the first 64 samples, 8 per row (conditioned, <= 16 classes: one column
        per class, as the default labels cycle through them); small images upscaled (nearest)."""
        import torch.nn.functional as F
        from torchvision.utils import save_image

        images = self.decode(torch.as_tensor(tokens)[:64]).float() / 255
        scale = max(1, 64 // images.shape[-1])
        nrow = self.num_classes if 0 < self.num_classes <= 16 else 8
        path = Path(out_dir) / "samples.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(F.interpolate(images, scale_factor=scale, mode="nearest"), path, nrow=nrow, padding=2, pad_value=0.35)
        return [path]

    def _train_tokens(self, n: int) -> torch.Tensor:
        from .shards import ShardedTokens

        shards = ShardedTokens(self.work / "train")
        return shards.rows(torch.arange(min(n, len(shards))))[0]

    def evaluate(self, tokens, labels, out_dir) -> dict[str, float]:
        from .shards import ShardedTokens

        out: dict[str, float] = {}
        if (self.work / "train" / "index.json").is_file():
            freq = lambda t: torch.bincount(t.flatten(), minlength=self.vocab_size).double() / t.numel()  # noqa: E731
            gap = freq(torch.as_tensor(tokens).cpu()) - freq(self._train_tokens(UNIGRAM_ROWS))
            out["sample_unigram_tv"] = 0.5 * gap.abs().sum().item()
            out.update(ShardedTokens(self.work / "train").meta.get("reconstruction", {}))
        out.update(self.fidelity(self.decode(tokens)))
        out["metric_num_samples"] = float(len(tokens))
        return out

    def fidelity(self, images: torch.Tensor) -> dict[str, float]:
        """Inception FID / IS (and VGG16 precision / recall with ``precision_recall``), or
        ``fid_skipped`` (``precision_recall_skipped``) and a printed line when the weights are not
        on this machine or the reference images are missing."""
        from .image_metrics import image_metrics, weights_file

        rgb = lambda x: x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x  # noqa: E731
        try:
            weights = weights_file("inception", self.option("inception_weights") or None)
            ref = self.option("fid_reference") or self.fid_reference()
        except FileNotFoundError as e:
            print(f"image-folder: FID skipped: {e}", file=sys.stderr)
            return {"fid_skipped": 1.0}
        skipped = {"fid_skipped": 0.0}
        prc = bool(self.option("precision_recall"))
        if prc:
            try:
                weights_file("vgg16", self.option("vgg16_weights") or None)
            except FileNotFoundError as e:
                print(f"image-folder: precision / recall skipped: {e}", file=sys.stderr)
                prc, skipped["precision_recall_skipped"] = False, 1.0
        out = image_metrics(rgb(images), ref if isinstance(ref, str) else rgb(ref), isc=len(images) >= 10, prc=prc,
                            inception_weights=weights, vgg16_weights=self.option("vgg16_weights") or None,
                            reference_size=int(self.option("image_size")))
        out.update(skipped)
        return out

    def fid_reference(self) -> torch.Tensor:
        """Up to ``fid_images`` training images (a fixed random subset), uint8 [N, C, S, S]; read once per setup."""
        if self._fid_ref is None:
            items = self.splits()["train"]
            n = int(self.option("fid_images"))
            if 0 < n < len(items):
                pick = sorted(torch.randperm(len(items), generator=torch.Generator().manual_seed(0))[:n].tolist())
                items = [items[i] for i in pick]
            self._fid_ref = self._images(items)
        return self._fid_ref

    def diagnostics(self, report, out_dir: Path) -> list[Path]:
        from .render import save_collapse_plot

        return [save_collapse_plot(report, Path(out_dir) / "collapse.png")]
