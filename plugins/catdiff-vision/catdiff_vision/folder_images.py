"""Reading a folder of images for ``image-folder``: listing, colour mode, the fixed test split, pixels.

Listing is :func:`.image_data.list_images` (recursive, sorted by path; ``classes``: one
sub-folder per class, label = rank of the sorted folder name). Images become uint8
``[C, size, size]`` tensors: converted to ``"L"`` (grey, C = 1) or ``"RGB"`` (C = 3) with PIL
(alpha dropped, palettes expanded, RGB -> grey by ITU-R 601 luma), then the shorter side is
resized to ``size`` (bicubic, antialiased) and the centre ``size`` x ``size`` cropped
(``crop="center"``, as :func:`.image_data.load_image` does), or the whole image is squashed to
``size`` x ``size`` (``crop="resize"``). Decoding runs in DataLoader worker processes; a
file PIL cannot read is reported by name (:class:`FolderImages` returns the error with the
item, so the main process raises one clear line instead of a worker traceback).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from catdiff.api.errors import UserError

from .image_data import center_crop, default_workers, list_images

GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})
COLORS = ("auto", "rgb", "grey")
CROPS = ("center", "resize")
SPLIT_SEED = 0  # the test split is the same for every run, seed and resume


def list_folder(root: str | Path, classes: bool) -> tuple[list[tuple[str, int]], list[str]]:
    """``[(relative path, label)]`` and class names; FileNotFoundError naming the folder when empty."""
    root = Path(root).expanduser()
    if root.is_dir() and not any(root.iterdir()):
        raise FileNotFoundError(f"image folder {root} is empty")
    return list_images(root, classes)


def _unreadable(path: Path, err: BaseException) -> UserError:
    why = str(err).splitlines()[0] if str(err) else type(err).__name__
    return UserError(f"{path}: not a readable image ({why}); remove or replace the file")


def scan_modes(root: Path, items: Sequence[tuple[str, int]]) -> dict[str, list[str]]:
    """``{"grey": [files], "rgb": [files]}`` from every file's header (PIL opens lazily: no decoding)."""
    from PIL import Image

    found: dict[str, list[str]] = {"grey": [], "rgb": []}
    for rel, _ in items:
        try:
            with Image.open(root / rel) as im:
                mode = im.mode
        except Exception as e:  # noqa: BLE001 - PIL raises many kinds; name the file
            raise _unreadable(root / rel, e) from None
        found["grey" if mode in GREY_MODES else "rgb"].append(rel)
    return found


def resolve_color(color: str, root: Path, items: Sequence[tuple[str, int]]) -> str:
    """``rgb`` / ``grey`` as given; ``auto``: grey when every image is grey, rgb when every one is
    colour, and a UserError for a folder that mixes both (set the mode to convert them)."""
    if color not in COLORS:
        raise UserError(f"task image-folder: option color={color!r} is not one of {', '.join(COLORS)}")
    if color != "auto":
        return color
    modes = scan_modes(root, items)
    if modes["grey"] and modes["rgb"]:
        raise UserError(f"{root} mixes grey ({len(modes['grey'])} files, e.g. {modes['grey'][0]}) and colour images "
                        f"({len(modes['rgb'])}, e.g. {modes['rgb'][0]}); set --set color=rgb (grey ones become RGB) "
                        "or color=grey (colour ones become grey) to convert them")
    return "grey" if modes["grey"] else "rgb"


def split_items(items: list, test_frac: float) -> tuple[list, list]:
    """(train, test): a fixed ``test_frac`` of the items (at least one) drawn with SPLIT_SEED, each in path order."""
    if not 0 < test_frac < 1:
        raise UserError(f"task image-folder: option test_frac={test_frac} must be in (0, 1)")
    if len(items) < 2:
        raise UserError(f"task image-folder needs at least 2 images (train and test), found {len(items)}")
    n_test = min(len(items) - 1, max(1, round(len(items) * test_frac)))
    test = set(np.random.default_rng(SPLIT_SEED).permutation(len(items))[:n_test].tolist())
    return [x for i, x in enumerate(items) if i not in test], [x for i, x in enumerate(items) if i in test]


def load_image(path: Path, size: int, color: str, crop: str = "center") -> torch.Tensor:
    """One image -> uint8 [C, size, size] (C = 1 for grey, 3 for rgb); see the module docstring."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("L" if color == "grey" else "RGB")
        if crop == "resize":
            im = im.resize((size, size), Image.BICUBIC, reducing_gap=None)
        else:
            im = center_crop(im, size)
        arr = np.array(im, dtype=np.uint8)  # a copy: writable
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


class FolderImages(torch.utils.data.Dataset):
    """``(uint8 image [C, size, size], label, error)`` of ``items`` under ``root``; ``error`` is ""
    or "PATH: why" (the image is then zeros), checked by :func:`checked` in the main process."""

    def __init__(self, root: Path, items: Sequence[tuple[str, int]], size: int, color: str, crop: str):
        self.root, self.items, self.size, self.color, self.crop = Path(root), items, size, color, crop

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        rel, label = self.items[i]
        try:
            return load_image(self.root / rel, self.size, self.color, self.crop), label, ""
        except Exception as e:  # noqa: BLE001 - reported by name in the main process
            return torch.zeros(1 if self.color == "grey" else 3, self.size, self.size, dtype=torch.uint8), label, \
                str(_unreadable(self.root / rel, e))


def checked(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """A collated FolderImages batch -> (images, labels); UserError naming the first unreadable file."""
    images, labels, errors = batch
    bad = [e for e in errors if e]
    if bad:
        raise UserError(bad[0] + (f" (and {len(bad) - 1} more in this batch)" if len(bad) > 1 else ""))
    return images, torch.as_tensor(labels)


def loader(root: Path, items, size: int, color: str, crop: str, batch_size: int = 64, workers: int = -1):
    """A DataLoader of FolderImages batches, in order, decoded by ``workers`` processes."""
    return torch.utils.data.DataLoader(FolderImages(root, items, size, color, crop), batch_size=batch_size,
                                       num_workers=default_workers(workers), shuffle=False)


def load_all(root: Path, items, size: int, color: str, crop: str, workers: int = -1) -> torch.Tensor:
    """Every item's image, uint8 [N, C, size, size] (for tokenizer training and FID references)."""
    parts = [checked(b)[0] for b in loader(root, items, size, color, crop, 256, workers)]
    return torch.cat(parts)
