"""A small CNN digit classifier: the feature extractor behind the digits FID and class metrics.

Trained on the digits TRAIN split only (never on test), deterministically (fixed seed,
fixed data order), in a few seconds on CPU. The trained weights are cached under
``$CATDIFF_CACHE`` (default ``~/.cache/catdiff``) in ``vision/``, in a file named by a hash
of the training data, the architecture and the training hyper-parameters, so any change
to one of those trains a new classifier instead of reusing a stale one.

Input: grey-level tokens ``[N, 64]`` (0..16) via :func:`preprocess`, or float images
``[N, 1, 8, 8]`` in ``[0, 1]`` straight into the module.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from catdiff.run.checkpoint import load_file, save_torch

from . import data
from .grey_levels import GreyLevelTokenizer

FORMAT_VERSION = 1
# Training recipe; part of the cache key.
HPARAMS = {
    "seed": 0,
    "epochs": 20,
    "batch_size": 64,
    "lr": 2e-3,
    "weight_decay": 1e-4,
    "max_shift": 1,  # random translation by up to this many pixels (augmentation)
}


class DigitsCNN(nn.Module):
    """8x8x1 -> conv 32 -> conv 32 -> pool -> conv 64 -> pool -> fc 64 -> fc 10.

    Named features (all flattened to ``[N, C]``):
      ``conv``         256, the last conv block (64 channels x 2 x 2) after ReLU+pool
      ``penultimate``  64, the fc layer after ReLU (the default FID feature)
      ``logits``       10, pre-softmax class scores
    """

    FEATURES = ("conv", "penultimate", "logits")

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 2 * 2, 64)
        self.fc2 = nn.Linear(64, 10)

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # 4x4
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)  # 2x2
        conv = x.flatten(1)
        pen = F.relu(self.fc1(conv))
        return {"conv": conv, "penultimate": pen, "logits": self.fc2(pen)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)["logits"]


_TOKENIZER = GreyLevelTokenizer(levels=data.LEVELS, height=data.SIDE, width=data.SIDE)


def preprocess(tokens: torch.Tensor) -> torch.Tensor:
    """Grey-level tokens ``[N, 64]`` -> classifier input ``[N, 1, 8, 8]`` float in [0, 1] (range-checked)."""
    return _TOKENIZER.decode(torch.as_tensor(tokens).cpu())


def cache_dir() -> Path:
    root = os.environ.get("CATDIFF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "catdiff")
    return Path(root) / "vision"


def cache_key(tokens: torch.Tensor, labels: torch.Tensor) -> str:
    h = hashlib.sha256()
    spec = {"format": FORMAT_VERSION, "arch": repr(DigitsCNN()), "hparams": HPARAMS}
    h.update(json.dumps(spec, sort_keys=True).encode())
    h.update(tokens.to(torch.int64).contiguous().numpy().tobytes())
    h.update(labels.to(torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _shift(x: torch.Tensor, gen: torch.Generator, max_shift: int) -> torch.Tensor:
    """Translate each image by a random (dy, dx) in [-max_shift, max_shift]^2, filling with 0."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    s = max_shift
    padded = F.pad(x, (s, s, s, s))
    offs = torch.randint(0, 2 * s + 1, (n, 2), generator=gen)
    out = torch.empty_like(x)
    for dy in range(2 * s + 1):
        for dx in range(2 * s + 1):
            sel = (offs[:, 0] == dy) & (offs[:, 1] == dx)
            if sel.any():
                out[sel] = padded[sel, :, dy : dy + h, dx : dx + w]
    return out


class single_thread:
    """Run torch on one CPU thread: these tiny convolutions are faster that way (no thread
    hand-off, no fighting a training run for cores) and results don't depend on the core count."""

    def __enter__(self):
        self.saved = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.saved)


def train(tokens: torch.Tensor, labels: torch.Tensor, hparams: dict | None = None) -> DigitsCNN:
    """Train a fresh classifier, deterministically, on CPU (about 5-10 s)."""
    with single_thread(), torch.enable_grad():  # callers may be inside torch.no_grad()
        return _train(tokens, labels, dict(HPARAMS if hparams is None else hparams))


def _train(tokens: torch.Tensor, labels: torch.Tensor, hp: dict) -> DigitsCNN:
    x = preprocess(tokens)
    y = torch.as_tensor(labels).long().cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(hp["seed"])
        model = DigitsCNN()
    gen = torch.Generator().manual_seed(hp["seed"])
    opt = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    steps_per_epoch = math.ceil(len(x) / hp["batch_size"])
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=hp["lr"], total_steps=hp["epochs"] * steps_per_epoch, pct_start=0.2
    )
    model.train()
    for _ in range(hp["epochs"]):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), hp["batch_size"]):
            idx = perm[i : i + hp["batch_size"]]
            xb = _shift(x[idx], gen, hp["max_shift"])
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    model.requires_grad_(False)
    return model


@torch.no_grad()
def accuracy(model: DigitsCNN, tokens: torch.Tensor, labels: torch.Tensor) -> float:
    pred = model(preprocess(tokens)).argmax(-1)
    return (pred == torch.as_tensor(labels).cpu()).double().mean().item()


_LOADED: dict[Path, DigitsCNN] = {}


def weights_path() -> Path:
    """Path of the cached classifier weights for the current data/recipe, training it if absent."""
    tokens, labels = data.load_split("train")
    path = cache_dir() / f"digits-classifier-{cache_key(tokens, labels)}.pt"
    if not path.is_file():
        model = train(tokens, labels)
        test_tokens, test_labels = data.load_split("test")
        payload = {
            "state_dict": model.state_dict(),
            "hparams": dict(HPARAMS),
            "format": FORMAT_VERSION,
            "test_accuracy": accuracy(model, test_tokens, test_labels),
        }
        save_torch(payload, path, "FID classifier")  # atomic: concurrent runs never see a half-written file
        _LOADED[path] = model
    return path


def load_weights(path: str | Path) -> DigitsCNN:
    path = Path(path)
    if path not in _LOADED:
        payload = load_file(path, "digits classifier", "delete it; it is trained again on the next use",
                            ("state_dict",))
        model = DigitsCNN()
        model.load_state_dict(payload["state_dict"])
        model.eval()
        model.requires_grad_(False)
        _LOADED[path] = model
    return _LOADED[path]


def get_classifier() -> DigitsCNN:
    """The trained classifier (from the in-process cache, the disk cache, or trained now)."""
    return load_weights(weights_path())


@torch.no_grad()
def class_statistics(tokens: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, float]:
    """Classifier view of samples: class histogram ``class_frac_0..9`` (sums to 1), its entropy
    ``class_entropy`` in nats (ln 10 = 2.303 for perfectly balanced classes, 0 for one class),
    the mean top-1 probability ``classifier_confidence`` and, if the samples were generated
    conditioned on ``labels``, ``label_accuracy`` (fraction classified as their label)."""
    model = get_classifier()
    with single_thread():
        probs = torch.cat([model(preprocess(chunk)).softmax(-1) for chunk in torch.as_tensor(tokens).split(1024)])
        pred = probs.argmax(-1)
    frac = torch.bincount(pred, minlength=10).double() / max(len(pred), 1)
    nz = frac[frac > 0]
    out = {f"class_frac_{c}": frac[c].item() for c in range(10)}
    out["class_entropy"] = float(-(nz * nz.log()).sum())
    out["classifier_confidence"] = probs.max(-1).values.double().mean().item()
    if labels is not None:
        out["label_accuracy"] = (pred == torch.as_tensor(labels).cpu().long()).double().mean().item()
    return out
