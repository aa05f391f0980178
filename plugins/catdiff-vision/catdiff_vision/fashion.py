"""Embedded image tasks on real data: Fashion-MNIST through a small VQ tokenizer.

``fashion-mnist`` (unconditional) and ``fashion-mnist-cond`` (10 classes, classifier-free
guidance) model the 7x7 = 49 code grids of :mod:`.vq_tokenizer` (``codes`` ids, default 128).
``catdiff prepare fashion-mnist`` (once, ~5 min on one CPU thread) trains the tokenizer, extracts
the train/test token shards and trains the evaluation classifier, all cached in ``cache_dir``
(default ``~/.cache/catdiff/fashion-mnist``):

    vq-<hash>.pt                   tokenizer weights + its test reconstruction error
    tokens-<hash>/{train,test}/    uint16 token shards (:mod:`.shards`), 60,000 / 10,000 rows
    fashion-classifier-<hash>.pt   the metric classifier (:mod:`.fashion_classifier`)

Data: Debian ``dataset-fashion-mnist`` (:mod:`.fashion_data`; option ``data_dir``).

Metrics (decoded samples vs the 10,000 real TEST images, in the classifier's feature space —
not Inception numbers): ``fid_fashion_classifier``, ``is_fashion_classifier``, with floors
``fid_fashion_classifier_real`` (as many real TRAIN images) and ``fid_fashion_classifier_vq``
(their VQ reconstructions: the best any model of these tokens can score), class histogram
entropy and, conditioned, ``label_accuracy``.
"""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import torch

from catdiff.api.settings import Setting
from catdiff.api.task import Task, TokenData
from catdiff.run.checkpoint import load_file, save_torch

from . import fashion_data

DEFAULT_CACHE = "~/.cache/catdiff/fashion-mnist"
SETTINGS = (
    Setting("data_dir", "", "directory of the four Fashion-MNIST `*-ubyte.gz` files; \"\" = env CATDIFF_FASHION_MNIST, "
            f"else the Debian package's {fashion_data.DEFAULT_DIR}"),
    Setting("cache_dir", DEFAULT_CACHE, "where `catdiff prepare` puts the VQ tokenizer, the token shards and the "
            "metric classifier"),
    Setting("codes", 128, "codebook size of the small VQ tokenizer: the diffusion's vocabulary size K",
            low=2, high=65_536),
    Setting("vq_steps", 1500, "training steps of the VQ tokenizer (`catdiff prepare`)", low=1),
)
# ema_cm 0.9, not the paper's 0.99 (a teacher lagging ~100 of 1000 steps): a better FID, at the
# price of a higher likelihood bound (docs/notes.md, "Task defaults: the CM teacher's EMA").
# lr 2e-3, not the first choice 1e-3: at equal training time no method did worse and CATDM gained
# most (docs/notes.md, "Fashion-MNIST: the learning rate and the convolution").
DEFAULTS: Mapping[str, Any] = dict(layers=4, heads=4, width=96, embed_dim=32, batch_size=32, lr=2e-3, warmup=100,
                                   steps=1000, ema_cm=0.9, sample_steps=50, n_samples=1000, ckpt_every=500,
                                   log_every=50, eval_batches=4, token_grid="7x7",  # for --set conv_kernel=3
                                   positions="sinusoidal",  # what its settings were measured with
                                   evidence=False)  # measured without it (the core default since 2026-12-01)
GUIDANCE_WEIGHTS = (0.0, 1.0, 2.0, 3.0, 4.0)


class FashionTask(Task):
    min_samples = 2  # FID
    name = "fashion-mnist"
    best_metric = ("fid_fashion_classifier", "min")
    vocab_size = 128
    seq_len = 49
    settings = SETTINGS
    defaults = DEFAULTS
    description = "Fashion-MNIST (Debian package) as 7x7 VQ tokens; run `catdiff prepare fashion-mnist` once"

    def setup(self, cfg) -> None:
        super().setup(cfg)
        self.vocab_size = int(self.option("codes"))

    # ------------------------------------------------------------------ files
    @property
    def cache(self) -> Path:
        return Path(self.option("cache_dir")).expanduser()

    def vq_hparams(self) -> dict:
        from .vq_tokenizer import HPARAMS

        return dict(HPARAMS, codes=int(self.option("codes")), steps=int(self.option("vq_steps")))

    @property
    def vq_path(self) -> Path:
        key = hashlib.sha256(json.dumps(self.vq_hparams(), sort_keys=True).encode()).hexdigest()[:12]
        return self.cache / f"vq-{key}.pt"

    def tokens_dir(self, split: str) -> Path:
        return self.cache / f"tokens-{self.vq_path.stem[3:]}" / split

    def _missing(self, what: Path) -> FileNotFoundError:
        sets = "" if self.cache == Path(DEFAULT_CACHE).expanduser() else f" --set cache_dir={self.cache}"
        return FileNotFoundError(f"{what} not found: run `catdiff prepare {self.name}{sets}` once (trains the VQ "
                                 "tokenizer and the metric classifier, extracts tokens; minutes on CPU)")

    def raw(self, split: str):
        return fashion_data.load(split, self.option("data_dir") or None)

    @functools.cached_property
    def tokenizer(self):
        from .vq_tokenizer import VQTokenizer

        if not self.vq_path.is_file():
            raise self._missing(self.vq_path)
        payload = load_file(self.vq_path, "VQ tokenizer", f"delete it and run `catdiff prepare {self.name}` again",
                            ("hparams", "state_dict"))
        model = VQTokenizer(**payload["hparams"])
        model.load_state_dict(payload["state_dict"])
        return model.eval().requires_grad_(False)

    def classifier_path(self) -> Path:
        from . import fashion_classifier

        return fashion_classifier.weights_path(self.cache, *self.raw("train"), test=self.raw("test"))

    # ------------------------------------------------------------------ preparation
    def prepare_arguments(self, parser) -> None:
        parser.add_argument("--quiet", action="store_true", help="no progress output")

    def prepare(self, args=None) -> dict[str, float]:
        """Train the tokenizer (if absent), extract token shards (resumable) and the classifier."""
        from . import shards, vq_tokenizer
        from .classifier import single_thread

        quiet = bool(getattr(args, "quiet", False))
        log = None if quiet else print
        train_x, train_y = self.raw("train")
        test_x, _ = self.raw("test")
        if not self.vq_path.is_file():
            with single_thread():
                model = vq_tokenizer.train(train_x, self.vq_hparams(), log=log)
                rec = vq_tokenizer.reconstruction(model, test_x)
            save_torch({"state_dict": model.state_dict(), "hparams": self.vq_hparams(), "test_reconstruction": rec},
                       self.vq_path, "VQ tokenizer")
        rec = load_file(self.vq_path, "VQ tokenizer", f"delete it and run `catdiff prepare {self.name}` again",
                        ("test_reconstruction",))["test_reconstruction"]
        if log:
            log(f"VQ tokenizer {self.vq_path}: test MSE {rec['vq_mse']:.5f} (pixels in [0, 1]), PSNR {rec['vq_psnr']:.2f} dB, "
                f"{rec['vq_codes_used']:.0f}/{self.option('codes')} codes used")
        tok = self.tokenizer
        for split in ("train", "test"):
            x, y = self.raw(split)
            items = list(range(len(x)))

            def encode(batch, x=x, y=y):
                idx = torch.as_tensor(batch)
                with single_thread():
                    return tok.encode(x[idx]).numpy(), y[idx].numpy()

            shards.write_shards(self.tokens_dir(split), items, encode, seq_len=49, vocab_size=tok.codes,
                                shard_size=20_000, batch_size=2000, settings={"vq": self.vq_path.name},
                                progress=not quiet)
        self.classifier_path()
        return rec

    # ------------------------------------------------------------------ data
    def load(self, split: str) -> TokenData:
        from .shards import ShardedTokens

        if not (self.tokens_dir(split) / "index.json").is_file():
            raise self._missing(self.tokens_dir(split))
        return ShardedTokens(self.tokens_dir(split)).token_data()

    # ------------------------------------------------------------------ metrics and pictures
    def images(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [N, 49] -> uint8 images [N, 1, 28, 28]."""
        from .classifier import single_thread

        with single_thread():
            return torch.cat([(self.tokenizer.decode(c) * 255).round().to(torch.uint8)
                              for c in torch.as_tensor(tokens).cpu().split(2000)])

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.images(tokens)

    @functools.lru_cache(maxsize=8)
    def floors(self, n: int) -> dict[str, float]:
        """FIDs of n real TRAIN images and of their VQ reconstructions against the test reference."""
        from . import fashion_classifier

        x, _ = self.raw("train")
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:n]
        ref, weights = self.raw("test")[0], self.classifier_path()
        real = fashion_classifier.metrics(x[idx], ref, weights, isc=False)["fid_fashion_classifier"]
        vq = fashion_classifier.metrics(self.images(self.tokenizer.encode(x[idx])), ref, weights, isc=False)
        return {"fid_fashion_classifier_real": real, "fid_fashion_classifier_vq": vq["fid_fashion_classifier"]}

    def evaluate(self, tokens, labels, out_dir) -> dict[str, float]:
        from . import fashion_classifier

        images = self.images(tokens)
        weights = self.classifier_path()
        out = fashion_classifier.metrics(images, self.raw("test")[0], weights)
        out.update(self.floors(len(images)))
        out["fid_num_samples"] = float(len(images))
        with torch.no_grad():
            model = fashion_classifier.load(weights)
            pred = torch.cat([model(c.float() / 255).argmax(-1) for c in images.split(2000)])
        frac = torch.bincount(pred, minlength=10).double() / len(pred)
        out["class_entropy"] = float(-(frac[frac > 0] * frac[frac > 0].log()).sum())
        if self.num_classes and labels is not None:
            out["label_accuracy"] = (pred == torch.as_tensor(labels).cpu()).double().mean().item()
        return out

    def save_samples(self, tokens, labels, out_dir: Path) -> list[Path]:
        """``samples.png``: the first 100 samples, 10 per row (conditioned: column = class)."""
        return [save_grid(self.images(torch.as_tensor(tokens)[:100]), Path(out_dir) / "samples.png", nrow=10)]

    def diagnostics(self, report, out_dir: Path) -> list[Path]:
        from .render import save_collapse_plot

        return [save_collapse_plot(report, Path(out_dir) / "collapse.png")]


class FashionCondTask(FashionTask):
    name = "fashion-mnist-cond"
    num_classes = 10
    defaults = dict(DEFAULTS, guidance=1.0)
    description = "Fashion-MNIST 7x7 VQ tokens conditioned on the class (guidance); `catdiff prepare fashion-mnist-cond`"

    def generate(self, ctx, n: int):
        """The evaluation samples; with an output directory also ``guidance_sweep.png`` (w = 0..4)."""
        out = super().generate(ctx, n)
        if ctx.out is not None:
            guidance_sweep(self, ctx, ctx.out / "guidance_sweep.png")
        return out


def save_grid(images: torch.Tensor, path: Path, nrow: int = 10, scale: int = 2) -> Path:
    """uint8 [N, 1, 28, 28] -> PNG grid, pixels upscaled ``scale`` x (nearest), 2 px grey separators."""
    import torch.nn.functional as F
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    x = F.interpolate(images.float() / 255, scale_factor=scale, mode="nearest")
    save_image(x, path, nrow=nrow, padding=2, pad_value=0.35)
    return path


def guidance_sweep(task: FashionTask, ctx, path: Path, weights=GUIDANCE_WEIGHTS, per_class: int = 1) -> Path:
    """Paper 003 Figure 5 analogue: row r = guidance weight weights[r], columns = classes 0..9
    (``per_class`` each); the same initial noise in every row, so only w changes."""
    labels = torch.arange(10).repeat_interleave(per_class)
    rows = [task.images(ctx.sample(len(labels), labels=labels, guidance=w, seed=ctx.seed_of("guidance-sweep")))
            for w in weights]
    return save_grid(torch.cat(rows), path, nrow=len(labels))
