"""Reading and checking the user's token and label arrays (``.npy`` or ``.pt``).

Every problem is a :class:`catdiff.api.errors.UserError` that names the file and says what to
provide: a missing or unreadable file, another extension, a tensor of the wrong rank, a
non-integer dtype (floats are refused even when integral: a float array is usually not
token ids), an empty array, negative ids or labels.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from catdiff.api.errors import UserError

SUFFIXES = (".npy", ".pt")


def read_array(path: str | Path, what: str) -> np.ndarray:
    """The array in ``path`` (``.npy``: memory-mapped; ``.pt``: a tensor saved with torch.save)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"task tokens: {what} {p} not found; give a .npy or .pt integer array")
    if p.suffix not in SUFFIXES:
        raise UserError(f"task tokens: {what} {p} is not a .npy or .pt file (or a shard directory "
                        "written by `catdiff prepare`); save the array with numpy.save or torch.save")
    try:
        if p.suffix == ".npy":
            return np.load(p, mmap_mode="r", allow_pickle=False)
        import torch

        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated file, pickle of other objects, ...
        why = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise UserError(f"task tokens: cannot read {what} {p} ({why[:200]}); save the array with "
                        f"{'numpy.save' if p.suffix == '.npy' else 'torch.save'} again") from None
    if not isinstance(obj, torch.Tensor):
        raise UserError(f"task tokens: {what} {p} holds a {type(obj).__name__}, not a tensor; save the array "
                        "itself with torch.save(tensor, path)")
    return obj.numpy()


def _integer(arr: np.ndarray, path: Path, what: str) -> None:
    if not np.issubdtype(arr.dtype, np.integer):
        raise UserError(f"task tokens: {what} {path} has dtype {arr.dtype}; it must hold integer ids "
                        "(convert with .astype('int64') if the values are whole numbers)")


def check_tokens(arr: np.ndarray, path: Path) -> np.ndarray:
    """``arr`` as int64 [N, M] with N, M > 0 and no negative id."""
    if arr.ndim != 2:
        raise UserError(f"task tokens: {path} holds an array of shape {tuple(arr.shape)}; expected "
                        "[N, M] (N sequences of M token ids)")
    _integer(arr, path, "token array")
    if arr.size == 0:
        raise UserError(f"task tokens: {path} is empty (shape {tuple(arr.shape)}); give at least one sequence")
    arr = np.asarray(arr, dtype=np.int64)
    if arr.min() < 0:
        raise UserError(f"task tokens: {path} holds the negative id {arr.min()}; ids must be in [0, vocab_size)")
    return arr


def check_labels(arr: np.ndarray, path: Path, rows: int, tokens_path: Path) -> np.ndarray:
    """``arr`` as int64 [rows] of non-negative class ids."""
    if arr.ndim != 1:
        raise UserError(f"task tokens: labels {path} have shape {tuple(arr.shape)}; expected [N], one class id per row")
    _integer(arr, path, "labels")
    if len(arr) != rows:
        raise UserError(f"task tokens: labels {path} hold {len(arr)} entries but {tokens_path} has {rows} rows; "
                        "give one label per sequence")
    arr = np.asarray(arr, dtype=np.int64)
    if arr.min() < 0:
        raise UserError(f"task tokens: labels {path} hold the negative class {arr.min()}; classes are 0..C-1")
    return arr
