"""Checkpoints: one file holding config, step, the network, its sampling EMA, the networks the
method keeps (``nets``, e.g. CATDM's CM teacher), optimizer and RNG state.

Version 2; version 1 (catdiff 0.1) held a teacher copy for every method beside ``model``, under
a key of its own; it loads into ``nets`` (a method that keeps no teacher ignores it).

Written atomically (temp file in the same directory, fsync, rename), so an interrupted
write never leaves a half-written checkpoint behind the final name. They hold only tensors
and plain Python values and are read with ``torch.load(weights_only=True)``: a file whose
pickle asks for anything else (a class, a function) is refused, and nothing in it runs.
"""
from __future__ import annotations

import io
import os
import pickle
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..api.errors import UserError

FORMAT = "catdiff-checkpoint"
VERSION = 2
V1_CORE = ("format", "version", "config", "task", "plugins", "step", "model", "ema_eval", "method",
           "optimizer", "scaler", "rng", "best", "run_id")


class CheckpointError(UserError):
    """A checkpoint that cannot be read or written; the message says what to do."""


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


OUT_HINT = "Free space or pass a writable --out directory"
CACHE_HINT = "Free space, or set the task's cache_dir (or $CATDIFF_CACHE / $XDG_CACHE_HOME) to a disk with room"


def write_atomic(data: bytes, path: str | Path, what: str = "file", hint: str = OUT_HINT) -> Path:
    """Write ``data`` to ``path`` through a fsynced temp file and a rename. An OS error (disk
    full, read-only or missing directory) is a CheckpointError naming the path, the reason and
    ``hint`` (what to do); whatever ``path`` held before is left as it was, and no temp file."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        before = f"the previous {what} {path} is intact" if path.exists() else f"no {what} was written"
        raise CheckpointError(f"cannot write {what} {path}: {e.strerror or e}; {before}. {hint}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def save(payload: dict[str, Any], path: str | Path) -> Path:
    """Serialise in memory first, so that an OS error while writing surfaces as itself (torch's
    zip writer reports a full disk as "unexpected pos") and no partial file is ever renamed."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **payload}, buf)
    return write_atomic(buf.getbuffer(), path, "checkpoint")


def save_torch(payload: Any, path: str | Path, what: str, hint: str = CACHE_HINT) -> Path:
    """``torch.save`` of ``payload`` (a tokenizer, a classifier: a plugin's cache) through
    :func:`write_atomic`: serialised in memory, so a full disk names the file and leaves none."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    return write_atomic(buf.getbuffer(), path, what, hint)


def remove_stale_temps(directory: Path) -> list[Path]:
    """Delete ``*.tmp`` files of :func:`write_atomic` that a killed process left in ``directory``
    (call it only while holding the directory's run lock)."""
    stale = [p for p in Path(directory).glob("*.*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _short(reason: str, limit: int = 200) -> str:
    """The first line of ``reason``, cut at a word boundary to at most ``limit`` characters."""
    line = next((part.strip() for part in reason.splitlines() if part.strip()), reason.strip())
    return line if len(line) <= limit else line[:limit].rsplit(" ", 1)[0] + " ..."


def _corrupt(path: Path, reason: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path} is corrupt or not a torch file ({_short(reason)}). It was left "
                           f"untouched; pass another checkpoint (a run over it: --set resume=false moves it aside)")


def load_file(path: str | Path, what: str, fix: str, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """A dict of tensors and plain values saved with ``torch.save`` (a cache: a tokenizer's or a
    classifier's weights), read with ``weights_only=True``; an empty, cut-short or foreign file,
    or one without ``keys``, is a UserError naming it and saying ``fix`` (e.g. how to rebuild it)."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a damaged file
        raise UserError(f"{what} {path} is damaged or not a torch file ({_short(str(e)) or type(e).__name__}); "
                        f"{fix}") from None
    missing = [k for k in keys if not isinstance(payload, dict) or k not in payload]
    if missing:
        raise UserError(f"{what} {path} lacks {', '.join(missing)}; {fix}")
    return payload


def load(path: str | Path, map_location="cpu") -> dict[str, Any]:
    path = Path(path)
    if path.is_dir() and (path / "last.pt").is_file():  # a run directory stands for its checkpoint
        path = path / "last.pt"
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a directory that holds no checkpoint (last.pt) and no export (model.safetensors); pass "
            f"a checkpoint file, a run directory of `catdiff run` or a directory written by `catdiff export`")
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist; train one with `catdiff run TASK --out DIR` "
            f"(it writes DIR/last.pt) and pass that file"
        )
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL\s+([\w.]+)|Unsupported global: GLOBAL ([\w.]+)", str(e))
        if "Weights only load failed" in str(e) and found:
            raise CheckpointError(
                f"refused to load {path}: its pickle asks for `{found.group(1) or found.group(2)}`, which a catdiff "
                f"checkpoint never holds (only tensors and plain values); nothing in it was run. Use a checkpoint "
                f"written by catdiff") from None
        raise _corrupt(path, (str(e).strip().splitlines() or [type(e).__name__])[-1]) from None
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a damaged file
        raise _corrupt(path, f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a catdiff checkpoint (no '{FORMAT}' header)")
    if not isinstance(payload.get("version"), int) or payload["version"] > VERSION:
        raise CheckpointError(f"{path} has checkpoint version {payload.get('version')!r}; "
                              f"this catdiff reads <= {VERSION}: upgrade catdiff")
    if payload["version"] < 2:  # the keys beside the core's were the (one) teacher's
        payload = {**{k: v for k, v in payload.items() if k in V1_CORE},
                   "nets": {k: v for k, v in payload.items() if k not in V1_CORE}}
    missing = [k for k in ("config", "task", "step", "model", "ema_eval", "nets", "optimizer", "rng")
               if k not in payload]
    if missing:
        raise CheckpointError(f"{path} is an incomplete catdiff checkpoint (no {', '.join(missing)})")
    return payload
