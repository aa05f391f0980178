"""The 8x8 digits data (scikit-learn's copy of the UCI optical digits test set) and its split.

1797 images of 8x8 pixels, grey levels 0..16, labels 0..9. The split is a permutation of
all 1797 indices by ``numpy.random.RandomState(SPLIT_SEED)`` (a generator whose stream
numpy guarantees never to change): the first 1497 are ``train``, the last 300 ``test``.
The data ships inside scikit-learn, so nothing is downloaded.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

N_IMAGES = 1797
N_TRAIN = 1497
N_TEST = N_IMAGES - N_TRAIN
SPLIT_SEED = 0
LEVELS = 17  # grey levels 0..16
SIDE = 8
SPLITS = ("train", "test")


@functools.lru_cache(maxsize=1)
def _all_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise FileNotFoundError(
            "the 'digits' data ships with scikit-learn, which is not installed. "
            "Install it with `pip install scikit-learn` (or install the plugin with its "
            "dependencies: `pip install -e plugins/catdiff-vision`)."
        ) from e
    bunch = load_digits()
    data = np.asarray(bunch.data)
    labels = np.asarray(bunch.target)
    if data.shape != (N_IMAGES, SIDE * SIDE) or labels.shape != (N_IMAGES,):
        raise RuntimeError(f"unexpected sklearn digits shapes {data.shape}, {labels.shape}")
    levels = np.rint(data).astype(np.int64)
    if not np.array_equal(levels, data) or levels.min() < 0 or levels.max() >= LEVELS:
        raise RuntimeError("sklearn digits are not integer grey levels 0..16")
    levels.setflags(write=False)
    labels = labels.astype(np.int64)
    labels.setflags(write=False)
    return levels, labels


@functools.lru_cache(maxsize=1)
def split_indices() -> dict[str, np.ndarray]:
    perm = np.random.RandomState(SPLIT_SEED).permutation(N_IMAGES)
    out = {"train": perm[:N_TRAIN], "test": perm[N_TRAIN:]}
    for v in out.values():
        v.setflags(write=False)
    return out


def load_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens LongTensor [N, 64], labels LongTensor [N])`` of ``"train"`` or ``"test"`` (fresh copies)."""
    if split not in SPLITS:
        raise ValueError(f"unknown digits split {split!r}; expected one of {', '.join(SPLITS)}")
    levels, labels = _all_digits()
    idx = split_indices()[split]
    return torch.from_numpy(levels[idx].copy()), torch.from_numpy(labels[idx].copy())
