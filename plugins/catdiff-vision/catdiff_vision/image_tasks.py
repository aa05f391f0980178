"""VQGAN-token image tasks of paper 003 (tables 2 and 3 of paper 000): FFHQ, LSUN Churches,
LSUN Bedrooms (unconditional) and ImageNet (class-conditional), all at 256x256 through a
taming f16 VQGAN with 1024 codes, i.e. 16x16 = 256 tokens of 1024 ids.

Workflow (user-provided data and weights; nothing is downloaded)::

    catdiff prepare image-ffhq --images /data/ffhq/images1024x1024 --tokenizer /ckpt/vqgan_ffhq [--flip]
    catdiff prepare image-ffhq --split test --images /data/ffhq/holdout --tokenizer ...   # optional
    catdiff run image-ffhq --set fid_reference=/data/ffhq/images256 --set inception_weights=...

Data layout (task option ``data_dir``, default ``$CATDIFF_DATA/<task>`` or
``~/.cache/catdiff/<task>``): ``tokens/train/`` and ``tokens/test/`` shard directories (see
:mod:`.shards`) written by ``catdiff prepare``. Sources: FFHQ and LSUN as a tree of image
files (LSUN's LMDB exported to files first); ImageNet as ``train/<wnid>/*.JPEG`` class
folders (and ``val/<wnid>/`` for the test split), labels = rank of the sorted wnid.

The VQGAN (option ``tokenizer`` or env ``CATDIFF_VQGAN``): a taming log directory or its
``last.ckpt`` with ``model.yaml`` beside it (:mod:`.vqgan`). Metrics (:mod:`.image_metrics`):
Inception FID / IS and VGG16 precision / recall against ``fid_reference`` (default: the
directory the train tokens were extracted from).
"""
from __future__ import annotations

import functools
import hashlib
import os
import warnings
from pathlib import Path

import torch

from catdiff.api.errors import UserError
from catdiff.api.settings import Setting
from catdiff.api.task import LazyTokenData, Task, TokenData

TEST_FALLBACK_ROWS = 1024
SETTINGS = (
    Setting("data_dir", "", "directory of the token shards (tokens/train/, tokens/test/) that `catdiff prepare` "
            "writes; \"\" = $CATDIFF_DATA/NAME, else ~/.cache/catdiff/NAME (NAME: the task's, e.g. image-ffhq)"),
    Setting("tokenizer", "", "the taming VQGAN (f16, 1024 codes): its log directory, or last.ckpt with model.yaml "
            "beside it; \"\" = env CATDIFF_VQGAN"),
    Setting("trust_checkpoint", False, "allow pickled objects when loading the VQGAN checkpoint "
            "(torch.load weights_only=False; lightning checkpoints need it); env CATDIFF_TRUST_CHECKPOINT=1 too",
            mutable=True),
    Setting("image_size", 256, "image side in pixels (resize and crop); image_size / the VQGAN's factor must give "
            "the task's 16x16 grid", low=1),
    Setting("fid_reference", "", "directory of real images for FID / IS and precision / recall; \"\" = the "
            "images the train tokens were extracted from", mutable=True),
    Setting("inception_weights", "", "torch-fidelity Inception weights file; \"\" = env "
            "CATDIFF_INCEPTION_WEIGHTS, else the torch hub cache (never downloaded)", mutable=True),
    Setting("vgg16_weights", "", "VGG16 weights file for precision / recall; \"\" = env CATDIFF_VGG16_WEIGHTS, "
            "else the torch hub cache (never downloaded)", mutable=True),
    Setting("precision_recall", True, "also report VGG16 precision / recall", mutable=True),
    Setting("init_codebook_from", "", "a VQGAN checkpoint whose codes initialise the diffusion codebook (the "
            "CSDM-fixed baseline, with fixed_codebook=true objective=csdm); \"\" = none"),
)
# 256 tokens of a 1024-code f16 VQGAN; paper 003 appendix: 15 layers / 8 heads / 512 wide,
# attention dropout 0.1, batch 128; 200 sampling steps; FID on 50k samples.
# token_grid only takes effect with --set conv_kernel=K (not in the paper).
UNCOND = dict(layers=15, heads=8, width=512, embed_dim=256, dropout=0.1, batch_size=128, sample_steps=200, evidence=False,
              token_grid="16x16", n_samples=50_000, ckpt_every=5000, log_every=100, warmup=5000,
              positions="sinusoidal", lr=3e-4)  # the paper's transformer; the paper gives no image LR; 3e-4 is its text8 rate (the core's derived rate is for small runs)


def _default_root(name: str) -> Path:
    base = os.environ.get("CATDIFF_DATA")
    return Path(base) / name if base else Path.home() / ".cache" / "catdiff" / name


class ImageTask(Task):
    min_samples = 2  # FID
    vocab_size = 1024
    seq_len = 256
    settings = SETTINGS
    classes = False  # source layout: class folders (ImageNet) or a flat tree
    source_hint = "a directory of images"

    # ------------------------------------------------------------------ paths and weights
    @property
    def root(self) -> Path:
        return Path(self.option("data_dir")).expanduser() if self.option("data_dir") else _default_root(self.name)

    def tokens_dir(self, split: str) -> Path:
        return self.root / "tokens" / split

    def tokenizer_path(self, explicit: str | None = None) -> Path:
        path = explicit or self.option("tokenizer") or os.environ.get("CATDIFF_VQGAN")
        if not path:
            raise FileNotFoundError(
                f"task {self.name!r} needs a taming VQGAN (f16, 1024 codes): a directory with last.ckpt and "
                "model.yaml, given as --tokenizer, the task option `tokenizer` (--set tokenizer=DIR) or env CATDIFF_VQGAN")
        return Path(path).expanduser()

    def trust(self) -> bool:
        return bool(self.option("trust_checkpoint")) or os.environ.get("CATDIFF_TRUST_CHECKPOINT") == "1"

    @functools.cached_property
    def vqgan(self):
        from .vqgan import load_vqgan

        model = load_vqgan(self.tokenizer_path(), trust=self.trust())
        self._check_vqgan(model)
        return model

    def _check_vqgan(self, model) -> None:
        grid = self.option("image_size") // model.factor
        if model.n_embed != self.vocab_size or grid * grid != self.seq_len:
            raise UserError(f"task {self.name!r} expects {self.vocab_size} codes and {self.seq_len} tokens per image; "
                             f"the VQGAN has {model.n_embed} codes and gives {grid}x{grid} at image_size "
                             f"{self.option('image_size')}")

    def init_codebook(self, codebook) -> None:
        """The CSDM-fixed baseline's codebook (with ``fixed_codebook=true objective=csdm``)."""
        if self.option("init_codebook_from"):
            from .vqgan import init_codebook, load_vqgan

            init_codebook(codebook, load_vqgan(self.option("init_codebook_from"), trust=self.trust()))

    # ------------------------------------------------------------------ data
    def load(self, split: str) -> TokenData | LazyTokenData:
        """The split's token shards, read lazily (memory-mapped, batch by batch); the test fallback
        (first TEST_FALLBACK_ROWS train rows) in memory."""
        from .shards import ShardedTokens

        directory = self.tokens_dir(split)
        if split == "test" and not (directory / "index.json").is_file() and (self.tokens_dir("train") / "index.json").is_file():
            warnings.warn(f"{self.name}: no test tokens in {directory}; the likelihood bound and collapse diagnostics "
                          f"use the first {TEST_FALLBACK_ROWS} TRAIN rows (`catdiff prepare {self.name} --split test` "
                          "adds a held-out split)")
            return ShardedTokens(self.tokens_dir("train")).token_data(TEST_FALLBACK_ROWS)
        try:
            shards = ShardedTokens(directory)
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"{e}. Extract tokens first: `catdiff prepare {self.name} --split {split} --images DIR --tokenizer VQGAN` "
                f"with DIR {self.source_hint}; tokens go to {directory} (task option data_dir or env CATDIFF_DATA)") from None
        if (shards.vocab_size, shards.seq_len) != (self.vocab_size, self.seq_len):
            raise UserError(f"{directory} holds {shards.seq_len} tokens of {shards.vocab_size} codes per image; task "
                             f"{self.name!r} needs {self.seq_len} of {self.vocab_size}")
        if self.num_classes and not shards.has_labels:
            raise UserError(f"{directory} has no labels; extract from class folders ({self.source_hint})")
        return shards.lazy()

    def prepare_arguments(self, parser) -> None:
        parser.add_argument("--images", required=True, help=f"source images: {self.source_hint}")
        parser.add_argument("--tokenizer", help="taming VQGAN log dir or last.ckpt (default: option tokenizer / env CATDIFF_VQGAN)")
        parser.add_argument("--split", default="train", choices=("train", "test"))
        parser.add_argument("--flip", action="store_true", help="also store each image's horizontal mirror")
        parser.add_argument("--out", help="shard directory (default: DATA_DIR/tokens/SPLIT)")
        parser.add_argument("--shard-size", type=int, default=10_000, help="images per shard")
        parser.add_argument("--batch-size", type=int, default=32)
        parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
        parser.add_argument("--trust-checkpoint", action="store_true", help="allow pickled objects in last.ckpt")

    def prepare(self, args) -> None:
        from .image_data import extract
        from .vqgan import load_vqgan

        device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
        ckpt = self.tokenizer_path(args.tokenizer)
        vqgan = load_vqgan(ckpt, trust=args.trust_checkpoint or self.trust(), device=device)
        self._check_vqgan(vqgan)
        out = Path(args.out) if args.out else self.tokens_dir(args.split)
        tok_id = hashlib.sha256(vqgan.codebook.detach().cpu().numpy().tobytes()).hexdigest()[:16]
        index = extract(args.images, vqgan, out, classes=self.classes, size=self.option("image_size"), flip=args.flip,
                        shard_size=args.shard_size, batch_size=args.batch_size, device=device, tokenizer_id=tok_id)
        print(f"wrote {index}")

    # ------------------------------------------------------------------ sampling and metrics
    def generate(self, ctx, n: int):
        """n samples, split across the ranks evaluating together (each draws its share from its own
        ``sample`` stream), gathered on every rank."""
        share = -(-n // ctx.world)
        labels = ctx.default_labels(share * ctx.world)
        mine = None if labels is None else labels[ctx.rank * share : (ctx.rank + 1) * share]
        tokens = ctx.all_gather(ctx.sample(share, labels=mine, seed=ctx.seed_of("sample")))
        return tokens[:n], None if labels is None else labels[:n]

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """tokens [N, 256] -> uint8 images [N, 3, 256, 256]."""
        from .image_metrics import to_uint8

        vq = self.vqgan
        return torch.cat([to_uint8(vq.decode(chunk)).cpu() for chunk in torch.as_tensor(tokens).split(batch_size)])

    def reference(self) -> Path:
        ref = self.option("fid_reference")
        if not ref:
            from .shards import ShardedTokens

            try:
                ref = ShardedTokens(self.tokens_dir("train"), allow_incomplete=True).meta["images"]
            except FileNotFoundError:
                raise FileNotFoundError(f"no FID reference: set the task option fid_reference to a directory of real "
                                        f"{self.name} images") from None
        return Path(ref).expanduser()

    def evaluate(self, tokens, labels, out_dir) -> dict[str, float]:
        """Inception FID / IS and VGG16 precision / recall of the decoded samples vs ``fid_reference``."""
        from .image_metrics import image_metrics

        ref = self.reference()
        cache = f"catdiff-{self.name}-{hashlib.sha256(str(ref.resolve()).encode()).hexdigest()[:12]}-{self.option('image_size')}"
        out = image_metrics(self.decode(tokens), ref, isc=True,
                            prc=self.option("precision_recall"), inception_weights=self.option("inception_weights") or None,
                            vgg16_weights=self.option("vgg16_weights") or None, reference_cache_name=cache,
                            reference_size=self.option("image_size"))
        out["metric_num_samples"] = float(len(tokens))
        return out

    def save_samples(self, tokens, labels, out_dir: Path) -> list[Path]:
        """``samples.png``: the first 64 samples decoded, 8 per row."""
        from torchvision.utils import save_image

        path = Path(out_dir) / "samples.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(self.decode(torch.as_tensor(tokens)[:64]).float() / 255, path, nrow=8, padding=2)
        return [path]


class FFHQTask(ImageTask):
    name = "image-ffhq"
    # 500 epochs of 70k images at batch 128 (paper 003 appendix)
    defaults = dict(UNCOND, steps=273_000)
    source_hint = "the FFHQ images (e.g. images1024x1024/, any tree of .png)"
    description = "FFHQ 256x256 as 16x16 VQGAN tokens (1024 codes); unconditional, 15/8/512, 200 steps"


class ChurchesTask(ImageTask):
    name = "image-churches"
    defaults = dict(UNCOND, steps=98_500)  # 100 epochs of 126k images
    source_hint = "LSUN church_outdoor_train exported from LMDB to image files (any tree of .jpg/.webp)"
    description = "LSUN Churches 256x256 as 16x16 VQGAN tokens; unconditional, 15/8/512, 200 steps"


class BedroomsTask(ImageTask):
    name = "image-bedrooms"
    defaults = dict(UNCOND, steps=11_850_000)  # 500 epochs of 3.03M images
    source_hint = "LSUN bedroom_train exported from LMDB to image files (any tree of .jpg/.webp)"
    description = "LSUN Bedrooms 256x256 as 16x16 VQGAN tokens; unconditional, 15/8/512, 200 steps"


class ImageNetTask(ImageTask):
    name = "image-imagenet"
    num_classes = 1000
    classes = True
    # paper 003 appendix: 24 layers / 16 heads / 768 wide, AdaLN class conditioning, 500 epochs;
    # 50 sampling steps. The paper sweeps the guidance weight (its Figure 6a) without fixing one; 2.0 here.
    defaults = dict(UNCOND, layers=24, heads=16, width=768, sample_steps=50, guidance=2.0, steps=5_000_000)
    source_hint = "ImageNet class folders: train/<wnid>/*.JPEG (test split: val/<wnid>/*.JPEG)"
    description = "ImageNet 256x256 as 16x16 VQGAN tokens, 1000 classes (AdaLN + guidance), 24/16/768, 50 steps"
