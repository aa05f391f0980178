"""Image folders -> VQGAN token shards (``catdiff prepare image-* --images DIR --tokenizer CKPT``).

Source layouts:
  flat       any tree of image files (``*.png, *.jpg, *.jpeg, *.webp``), searched recursively,
             sorted by path (FFHQ ``images1024x1024/``, LSUN exported to files)
  classes    one sub-folder per class (``train/n01440764/*.JPEG``, ImageNet); the label of a
             folder is its rank among the sorted folder names (the usual 0..999 ImageNet ids)

Each image is resized (shorter side to ``size``, bicubic, antialiased) and centre-cropped
to ``size`` x ``size``, mapped to [-1, 1] and encoded by the VQGAN to a 16x16 code grid
(for size 256, f16), stored row-major as 256 tokens. ``flip`` also stores the mirrored image
(its tokens follow the original's), doubling the rows.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from catdiff.api.errors import UserError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def list_images(root: str | Path, classes: bool) -> tuple[list[tuple[str, int]], list[str]]:
    """``[(relative path, label)]`` sorted, and the class names (empty unless ``classes``)."""
    root = Path(root).expanduser()
    if root.is_file():
        raise FileNotFoundError(f"{root} is a file, not a directory of images; give its folder")
    if not root.is_dir():
        raise FileNotFoundError(f"image directory {root} not found (give the folder: --set images=DIR to "
                                f"`catdiff run`, --images DIR to `catdiff prepare`)")
    if classes:
        names = sorted(p.name for p in root.iterdir() if p.is_dir())
        if not names:
            raise FileNotFoundError(f"{root} has no class sub-folders; expected DIR/<class>/<image> "
                                    "(ImageNet: train/n01440764/n01440764_10026.JPEG, ...)")
        items = [(str(p.relative_to(root)), label) for label, name in enumerate(names)
                 for p in sorted((root / name).rglob("*")) if p.suffix.lower() in EXTENSIONS]
    else:
        names = []
        items = [(str(p.relative_to(root)), -1) for p in sorted(root.rglob("*")) if p.suffix.lower() in EXTENSIONS]
    if not items:
        raise FileNotFoundError(f"no images ({', '.join(EXTENSIONS)}) under {root}")
    return items, names


def center_crop(im, size: int):
    """A PIL image with its shorter side resized to ``size`` (bicubic, antialiased), centre-cropped
    to ``size`` x ``size``."""
    from PIL import Image

    w, h = im.size
    s = size / min(w, h)
    im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC, reducing_gap=None)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    return im.crop((left, top, left + size, top + size))


def load_image(path: str | Path, size: int) -> torch.Tensor:
    """One RGB image -> float [3, size, size] in [-1, 1] (shorter side resized, centre crop)."""
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(center_crop(im.convert("RGB"), size), dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1.0


def default_workers(workers: int | None = None) -> int:
    """Image-decoding DataLoader processes: ``workers``, or (None / < 0) up to 4, one per spare core."""
    return min(4, (os.cpu_count() or 1) - 1) if workers is None or workers < 0 else workers


class ImageFiles(torch.utils.data.Dataset):
    """``(image [3, size, size], label)`` of ``items`` (relative path, label) under ``root``."""

    def __init__(self, root: Path, items: Sequence[tuple[str, int]], size: int):
        self.root, self.items, self.size = root, items, size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        """``(image, label, error)``: ``error`` is "" or "PATH: why" (the image then zeros), raised
        by name in the main process (:func:`make_encoder`) rather than as a worker's traceback."""
        rel, label = self.items[i]
        try:
            return load_image(self.root / rel, self.size), label, ""
        except Exception as e:  # noqa: BLE001 - PIL raises many kinds; name the file
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            return torch.zeros(3, self.size, self.size), label, f"{self.root / rel}: not a readable image ({why}); " \
                "remove or replace the file"


def image_batches(root: str | Path, size: int, workers: int):
    """``batches(chunk, batch_size)`` for :func:`shards.write_shards`: a DataLoader that decodes
    and resizes the chunk's images in ``workers`` processes, in order."""
    def batches(chunk, batch_size):
        return torch.utils.data.DataLoader(ImageFiles(Path(root), chunk, size), batch_size=batch_size,
                                           num_workers=workers, shuffle=False)
    return batches


def make_encoder(vqgan, flip: bool, device="cpu"):
    """``encode((images [R, 3, S, S], labels [R])) -> (tokens [R, h*w], labels [R] or None)`` for
    :func:`shards.write_shards` (the batches come from :func:`image_batches`)."""
    def encode(batch):
        images, labels, *errors = batch
        bad = [e for e in (errors[0] if errors else []) if e]
        if bad:
            raise UserError(bad[0] + (f" (and {len(bad) - 1} more in this batch)" if len(bad) > 1 else ""))
        images, labels = images.to(device), np.asarray(labels)
        if flip:  # rows: originals, then their mirror images, per batch
            images = torch.cat([images, images.flip(-1)])
            labels = np.concatenate([labels, labels])
        tokens = vqgan.encode(images).flatten(1).cpu().numpy()
        return tokens, (labels if labels.min() >= 0 else None)

    return encode


def extract(images: str | Path, vqgan, out: str | Path, *, classes: bool, size: int = 256, flip: bool = False,
            shard_size: int = 10_000, batch_size: int = 32, device="cpu", tokenizer_id: str = "",
            stop_after: int | None = None, progress: bool = True, workers: int | None = None) -> Path:
    """Encode every image under ``images`` into token shards in ``out``; resumable (see :mod:`.shards`).
    Images are decoded by ``workers`` DataLoader processes (default: up to 4, one per spare core)."""

    from . import shards

    items, names = list_images(images, classes)
    grid = size // vqgan.factor
    return shards.write_shards(
        out, items, make_encoder(vqgan, flip, device), seq_len=grid * grid, vocab_size=vqgan.n_embed,
        shard_size=shard_size, batch_size=batch_size, stop_after=stop_after, progress=progress,
        batches=image_batches(images, size, default_workers(workers)),
        settings={"size": size, "flip": flip, "classes": classes, "tokenizer": tokenizer_id},
        meta={"images": str(Path(images).resolve()), "grid": [grid, grid], "class_names": names, "flip": flip})
