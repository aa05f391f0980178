"""Token shards: pre-extracted token grids on disk, written resumably and read by memory map.

Layout of a shard directory (one per split)::

    index.json            format, seq_len, vocab_size, rows, shards, fingerprint, meta
    tokens-00000.u16      raw little-endian uint16, rows x seq_len (row-major)
    labels-00000.u16      raw uint16, rows (only when the data has class labels)
    ...

Each shard covers ``shard_size`` consecutive source items (images); an item may give more
than one row (e.g. the image and its horizontal flip). A shard is written to a temporary
file and renamed, then ``index.json`` is rewritten atomically, so an interrupted
extraction leaves only whole shards behind and a rerun continues with the first missing
one. The ``fingerprint`` (source list + settings) guards against resuming with other inputs.

Reading (:class:`ShardedTokens`) maps each shard with ``numpy.memmap``; ``rows(idx)``
gathers rows without loading the rest. ``lazy()`` wraps it as the engine's
:class:`catdiff.api.task.LazyTokenData`, so training reads only each batch's rows;
``token_data()`` materialises rows as an in-memory :class:`catdiff.api.task.TokenData` (int64,
8 bytes per token: 0.5 GB for FFHQ x2 flips, ~5 GB for ImageNet x2 flips), for small subsets.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from catdiff.api.errors import UserError
from catdiff.run.checkpoint import CACHE_HINT, write_atomic

FORMAT = 1
INDEX = "index.json"
DTYPE = np.dtype("<u2")


def fingerprint(items: Sequence[Any], settings: dict[str, Any]) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for item in items:
        h.update(str(item).encode() + b"\0")
    return h.hexdigest()[:20]


def _atomic_write(path: Path, data: bytes) -> None:
    write_atomic(data, path, "token shard", CACHE_HINT)


def write_shards(out_dir: str | Path, items: Sequence[Any], encode: Callable[[Sequence[Any]], tuple],
                 *, seq_len: int, vocab_size: int, shard_size: int = 10_000, batch_size: int = 64,
                 settings: dict[str, Any] | None = None, meta: dict[str, Any] | None = None,
                 progress: bool = True, stop_after: int | None = None,
                 batches: Callable[[Sequence[Any], int], Any] | None = None) -> Path:
    """Encode ``items`` in batches and write uint16 token shards (+ labels) into ``out_dir``.

    ``encode(batch) -> (tokens [R, seq_len] int array, labels [R] int array or None)``, where a
    batch is a slice of ``items``, or what ``batches(chunk, batch_size)`` yields for a shard's
    chunk of items, in order (e.g. a DataLoader whose workers decode the images).
    Resumes an earlier run with the same ``items`` and ``settings`` (skips finished shards);
    ``stop_after`` shards ends early (for tests of the resume). Returns the index path.
    """
    if vocab_size > np.iinfo(DTYPE).max + 1:
        raise UserError(f"vocab_size {vocab_size} does not fit uint16 shards")
    if not items:
        raise UserError(f"nothing to extract into {out_dir}: the source list is empty")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = dict(settings or {}, seq_len=seq_len, vocab_size=vocab_size, shard_size=shard_size)
    fp = fingerprint(items, settings)
    index_path = out / INDEX
    index = {"format": FORMAT, "fingerprint": fp, "seq_len": seq_len, "vocab_size": vocab_size,
             "shard_size": shard_size, "items": len(items), "settings": settings, "meta": meta or {},
             "shards": [], "complete": False}
    if index_path.is_file():
        old = read_index(index_path)
        if old.get("fingerprint") != fp:
            raise FileExistsError(f"{out} holds shards of other inputs or settings (fingerprint {old.get('fingerprint')} "
                                  f"!= {fp}); choose a new output directory or delete it")
        index["shards"] = [s for s in old["shards"] if _shard_ok(out, s, seq_len)]
    n_shards = -(-len(items) // shard_size)
    done = {s["id"] for s in index["shards"]}
    todo = [i for i in range(n_shards) if i not in done]
    if stop_after is not None:
        todo = todo[:stop_after]
    bar = _progress(len(items), len(done) * shard_size, progress, out.name)
    for sid in todo:
        chunk = items[sid * shard_size : (sid + 1) * shard_size]
        toks, labs = [], []
        feed = batches(chunk, batch_size) if batches else (chunk[lo : lo + batch_size] for lo in range(0, len(chunk), batch_size))
        for lo, batch in zip(range(0, len(chunk), batch_size), feed):
            t, lab = encode(batch)
            t = np.asarray(t)
            if t.ndim != 2 or t.shape[1] != seq_len:
                raise ValueError(f"encoder returned tokens of shape {t.shape}, expected [R, {seq_len}]")
            if t.size and (t.min() < 0 or t.max() >= vocab_size):
                raise ValueError(f"encoder returned ids in [{t.min()}, {t.max()}], outside [0, {vocab_size - 1}]")
            toks.append(t.astype(DTYPE))
            if lab is not None:
                labs.append(np.asarray(lab).astype(DTYPE))
            bar.update(min(batch_size, len(chunk) - lo))
        entry = {"id": sid, "rows": int(sum(len(t) for t in toks)), "tokens": f"tokens-{sid:05d}.u16"}
        _atomic_write(out / entry["tokens"], np.concatenate(toks).tobytes())
        if labs:
            entry["labels"] = f"labels-{sid:05d}.u16"
            _atomic_write(out / entry["labels"], np.concatenate(labs).tobytes())
        index["shards"] = sorted(index["shards"] + [entry], key=lambda s: s["id"])
        index["complete"] = len(index["shards"]) == n_shards
        index["rows"] = sum(s["rows"] for s in index["shards"])
        _atomic_write(index_path, (json.dumps(index, indent=1) + "\n").encode())
    bar.close()
    return index_path


def _shard_ok(out: Path, shard: dict, seq_len: int) -> bool:
    tok = out / shard["tokens"]
    if not tok.is_file() or tok.stat().st_size != shard["rows"] * seq_len * DTYPE.itemsize:
        return False
    lab = shard.get("labels")
    return lab is None or ((out / lab).is_file() and (out / lab).stat().st_size == shard["rows"] * DTYPE.itemsize)


def _progress(total: int, initial: int, enabled: bool, desc: str):
    from catdiff.run.trainlog import progress  # tqdm on a terminal, plain lines in logs

    return progress(total, f"extract {desc}", initial=min(initial, total), disable=not enabled)


def read_index(path: Path) -> dict[str, Any]:
    """``index.json`` of a shard directory, checked; a UserError names the file and what to do."""
    fix = f"delete {path.parent} and rerun the `catdiff prepare` command that wrote it"
    try:
        index = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not a valid shard index ({str(e).splitlines()[0][:120]}); {fix}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        got = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise UserError(f"{path}: shard format {got!r} != {FORMAT} (not an index written by `catdiff prepare`); {fix}")
    shards = index.get("shards")
    ok = (isinstance(index.get("complete"), bool) and all(_whole(index.get(k)) for k in ("seq_len", "vocab_size"))
          and isinstance(shards, list) and all(
              isinstance(s, dict) and isinstance(s.get("id"), int) and _whole(s.get("rows"), 0)
              and isinstance(s.get("tokens"), str) and isinstance(s.get("labels", ""), str) for s in shards)
          and isinstance(index.get("meta", {}), dict))
    if not ok:
        raise UserError(f"{path} is incomplete or damaged (complete, seq_len, vocab_size and shards with id, rows and "
                        f"tokens expected); {fix}")
    return index


def _whole(value, least: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


class ShardedTokens:
    """Read-only view of a shard directory: ``len``, ``rows(idx)``, ``has_labels``, ``lazy()`` and ``token_data()``."""

    def __init__(self, directory: str | Path, allow_incomplete: bool = False):
        self.dir = Path(directory)
        path = self.dir / INDEX
        if not path.is_file():
            raise FileNotFoundError(f"no token shards in {self.dir} (missing {INDEX})")
        self.index = read_index(path)
        if not self.index["complete"] and not allow_incomplete:
            raise FileNotFoundError(f"token extraction into {self.dir} is incomplete ({len(self.index['shards'])} shards "
                                    "written); rerun the same `catdiff prepare` command to resume it")
        self.seq_len, self.vocab_size = int(self.index["seq_len"]), int(self.index["vocab_size"])
        self.meta = self.index.get("meta", {})
        shards = self.index["shards"]
        self._tokens = [self._map(s["tokens"], (s["rows"], self.seq_len)) for s in shards]
        self._labels = [self._map(s["labels"], (s["rows"],)) for s in shards if "labels" in s] or None
        self.offsets = np.cumsum([0] + [s["rows"] for s in shards])

    def _map(self, name: str, shape: tuple[int, ...]) -> np.memmap:
        path = self.dir / name
        need = int(np.prod(shape)) * DTYPE.itemsize
        size = path.stat().st_size if path.is_file() else None
        if size != need:
            have = "is missing" if size is None else f"has {size} bytes"
            raise UserError(f"token shard {path} {have}, {self.dir / INDEX} says {need}: the shard directory is damaged; "
                            f"delete it and rerun `catdiff prepare` (it resumes from the intact shards)")
        if not need:  # numpy cannot map an empty file
            return np.zeros(shape, DTYPE)
        return np.memmap(path, DTYPE, "r", shape=shape)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def has_labels(self) -> bool:
        return self._labels is not None

    def _gather(self, maps, idx: np.ndarray) -> np.ndarray:
        shard = np.searchsorted(self.offsets, idx, side="right") - 1
        out = np.empty((len(idx),) + maps[0].shape[1:], dtype=np.int64)
        for s in np.unique(shard):
            sel = shard == s
            out[sel] = maps[s][idx[sel] - self.offsets[s]]
        return out

    def rows(self, idx) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tokens [len(idx), seq_len] (int64) and labels [len(idx)] or None, read from the memory maps."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"row index out of range [0, {len(self)})")
        tokens = torch.from_numpy(self._gather(self._tokens, idx))
        labels = None if self._labels is None else torch.from_numpy(self._gather(self._labels, idx))
        return tokens, labels

    def lazy(self):
        """The rows as a :class:`catdiff.api.task.LazyTokenData` (read from the memory maps batch by batch)."""
        from catdiff.api.task import LazyTokenData

        return LazyTokenData(self, seq_len=self.seq_len, vocab_size=self.vocab_size)

    def token_data(self, limit: int | None = None):
        """All rows (or the first ``limit``) as an in-memory TokenData (int64)."""
        from catdiff.api.task import TokenData

        tokens, labels = self.rows(np.arange(min(len(self), limit or len(self))))
        return TokenData(tokens, labels)
