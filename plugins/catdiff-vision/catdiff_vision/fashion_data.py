"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (idx files, nothing downloaded).

Files: ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`` in ``/usr/share/datasets/fashion-mnist``
(override with the task option ``data_dir`` or env ``CATDIFF_FASHION_MNIST``). 60,000 train and
10,000 test images of 28x28 grey levels 0..255, labels 0..9 (t-shirt, trouser, pullover, dress,
coat, sandal, shirt, sneaker, bag, ankle boot).
"""
from __future__ import annotations

import functools
import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from catdiff.api.errors import UserError

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
MISSING = "install Debian package dataset-fashion-mnist (make data)"


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    return Path(explicit or os.environ.get("CATDIFF_FASHION_MNIST") or DEFAULT_DIR).expanduser()


def available(explicit=None) -> bool:
    d = data_dir(explicit)
    return all((d / f).is_file() for pair in FILES.values() for f in pair)


def _idx(path: Path, ndim: int) -> np.ndarray:
    fix = "install the Debian package dataset-fashion-mnist again, or point data_dir at intact *-ubyte.gz files"
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as e:  # not gzip (BadGzipFile), cut short, damaged
        raise UserError(f"{path}: not a readable gzip file ({e or type(e).__name__}); {fix}") from None
    magic = int.from_bytes(raw[:4], "big")
    if len(raw) < 4 + 4 * ndim or magic != 0x800 + ndim:
        raise UserError(f"{path}: not an idx{ndim} ubyte file (magic {magic:#x}); {fix}")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    have, need = len(raw) - 4 - 4 * ndim, int(np.prod(dims))
    if have != need:
        raise UserError(f"{path}: {have} bytes of data, its header ({' x '.join(map(str, dims))}) says {need}; {fix}")
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


@functools.lru_cache(maxsize=4)
def load(split: str, explicit: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 [N, 1, 28, 28], labels int64 [N])`` of ``"train"`` or ``"test"``."""
    if split not in FILES:
        raise ValueError(f"unknown fashion-mnist split {split!r}; expected train or test")
    d = data_dir(explicit)
    paths = [d / f for f in FILES[split]]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"Fashion-MNIST file {p} not found: {MISSING}, or point the task option "
                                    "data_dir / env CATDIFF_FASHION_MNIST at a directory with the four *-ubyte.gz files")
    images, labels = _idx(paths[0], 3), _idx(paths[1], 1)
    if len(images) != len(labels) or images.shape[1:] != (28, 28):
        raise UserError(f"{d}: unexpected Fashion-MNIST shapes {images.shape}, {labels.shape}")
    return torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64))
