"""A Fashion-MNIST CNN and its torch-fidelity feature extractor ``"fashion-classifier"``.

The classifier (conv 16 -> pool -> conv 32 -> pool -> conv 64 -> pool -> fc 128 -> fc 10) is
trained on the 60k TRAIN images only, deterministically, in about a minute on one CPU
thread, and cached as ``fashion-classifier-<hash>.pt`` in the task's ``cache_dir`` (hash of
architecture + recipe). Features: ``penultimate`` (128-d, post-ReLU; FID/KID/PR) and
``logits`` (10; the IS-like score). Numbers computed with it are NOT Inception metrics:
their keys say ``fashion_classifier``.

torch-fidelity input: uint8 ``[B, 1 or 3, 28, 28]`` (0..255), like the digits extractor.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from catdiff.api.errors import UserError
from catdiff.run.checkpoint import load_file, save_torch

from .classifier import single_thread

EXTRACTOR_NAME = "fashion-classifier"
HPARAMS = {"seed": 0, "epochs": 2, "batch_size": 128, "lr": 3e-3, "weight_decay": 1e-4}


class FashionCNN(nn.Module):
    FEATURES = ("penultimate", "logits")

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.conv3 = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1), \
            nn.Conv2d(32, 64, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(64 * 3 * 3, 128), nn.Linear(128, 10)

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: float [N, 1, 28, 28] in [0, 1]."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)   # 14
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)   # 7
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)   # 3
        pen = F.relu(self.fc1(x.flatten(1)))
        return {"penultimate": pen, "logits": self.fc2(pen)}

    def forward(self, x):
        return self.features(x)["logits"]


def weights_path(cache_dir: str | Path, images: torch.Tensor, labels: torch.Tensor, test=None, log=print) -> Path:
    """The cached classifier (trained now on ``images``/``labels`` if absent); reports test accuracy."""
    spec = json.dumps({"arch": repr(FashionCNN()), "hp": HPARAMS, "n": len(images)}, sort_keys=True)
    path = Path(cache_dir).expanduser() / f"fashion-classifier-{hashlib.sha256(spec.encode()).hexdigest()[:12]}.pt"
    if path.is_file():
        return path
    with single_thread(), torch.enable_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(HPARAMS["seed"])
        model = FashionCNN()
        gen = torch.Generator().manual_seed(HPARAMS["seed"])
        opt = torch.optim.AdamW(model.parameters(), lr=HPARAMS["lr"], weight_decay=HPARAMS["weight_decay"])
        x, bs = images.float() / 255, HPARAMS["batch_size"]
        total = HPARAMS["epochs"] * -(-len(x) // bs)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=HPARAMS["lr"], total_steps=total, pct_start=0.2)
        for _ in range(HPARAMS["epochs"]):
            perm = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), bs):
                idx = perm[i : i + bs]
                loss = F.cross_entropy(model(x[idx]), labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    model.eval().requires_grad_(False)
    payload = {"state_dict": model.state_dict(), "hparams": HPARAMS}
    if test is not None:
        payload["test_accuracy"] = accuracy(model, *test)
        if log:
            log(f"fashion classifier test accuracy {payload['test_accuracy']:.4f}")
    return save_torch(payload, path, "FID classifier")


_LOADED: dict[str, FashionCNN] = {}


def load(path: str | Path) -> FashionCNN:
    key = str(path)
    if key not in _LOADED:
        model = FashionCNN()
        payload = load_file(path, "fashion classifier", "delete it; `catdiff prepare fashion-mnist` trains it again",
                            ("state_dict",))
        model.load_state_dict(payload["state_dict"])
        _LOADED[key] = model.eval().requires_grad_(False)
    return _LOADED[key]


@torch.no_grad()
def accuracy(model: FashionCNN, images: torch.Tensor, labels: torch.Tensor) -> float:
    with single_thread():
        pred = torch.cat([model(c.float() / 255).argmax(-1) for c in images.split(2000)])
    return (pred == labels).double().mean().item()


def _extractor_class():
    from .feature_extractor import ClassifierFeatureExtractor

    class FashionClassifierFeatureExtractor(ClassifierFeatureExtractor):
        """torch-fidelity wrapper; weights from ``feature_extractor_weights_path`` (required)."""

        extractor_name = EXTRACTOR_NAME
        side = 28
        features = FashionCNN.FEATURES

        @staticmethod
        def load_model(weights_path):
            if weights_path is None:
                raise UserError(f"{EXTRACTOR_NAME} needs feature_extractor_weights_path (see fashion_classifier.weights_path)")
            return load(weights_path)

        @staticmethod
        def model_input(x):
            return x.float().mean(1, keepdim=True) / 255

    return FashionClassifierFeatureExtractor


def ensure_registered():
    import torch_fidelity
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    cls = FEATURE_EXTRACTORS_REGISTRY.get(EXTRACTOR_NAME)
    if cls is None:
        cls = _extractor_class()
        torch_fidelity.register_feature_extractor(EXTRACTOR_NAME, cls)
    return cls


def metrics(generated: torch.Tensor, reference: torch.Tensor, weights: str | Path, *, fid: bool = True,
            isc: bool = True, prc: bool = False) -> dict[str, float]:
    """Classifier-space metrics of uint8 images [N, 1, 28, 28] vs ``reference``:
    ``fid_fashion_classifier``, ``is_fashion_classifier`` (exp E KL(p(y|x) || p(y)) with the
    classifier's softmax, 10 splits, like the Inception Score; of ``generated`` only) and
    optionally ``precision/recall_fashion_classifier`` (k = 3)."""
    import torch_fidelity

    from .feature_extractor import UInt8Images

    ensure_registered()
    for name, t in (("generated", generated), ("reference", reference)):
        if len(t) < 2:
            raise UserError(f"metrics need at least 2 images per set; {name} has {len(t)}")
    with single_thread():
        m = torch_fidelity.calculate_metrics(
            input1=UInt8Images(generated.cpu()), input2=UInt8Images(reference.cpu()), fid=fid, isc=isc, prc=prc,
            feature_extractor=EXTRACTOR_NAME, feature_extractor_weights_path=str(weights), cuda=False,
            batch_size=1000, cache=False, save_cpu_ram=True, verbose=False)
    out = {}
    if fid:
        out["fid_fashion_classifier"] = float(m[torch_fidelity.KEY_METRIC_FID])
    if isc:
        out["is_fashion_classifier"] = float(m[torch_fidelity.KEY_METRIC_ISC_MEAN])
    if prc:
        out["precision_fashion_classifier"] = float(m[torch_fidelity.KEY_METRIC_PRECISION])
        out["recall_fashion_classifier"] = float(m[torch_fidelity.KEY_METRIC_RECALL])
    return out
