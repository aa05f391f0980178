"""Native reader of fairseq's binarized datasets (``fairseq-preprocess`` output), numpy only,
so reading a data-bin directory needs neither fairseq nor a compiler.

The layouts are those of fairseq 0.12's ``fairseq/data/indexed_dataset.py``; every number is
little-endian.

``mmap`` (``--dataset-impl mmap``, fairseq-preprocess's default; its ``MMapIndexedDataset``)
    ``.idx``: magic ``b"MMIDIDX\\x00\\x00"`` (9 bytes), version ``<Q`` = 1, dtype code ``<B``,
    item count N ``<Q``, then ``sizes`` int32[N] (tokens per item) and ``pointers`` int64[N]
    (byte offset of each item in ``.bin``), and nothing after them (Megatron-LM's variant of
    the format adds a document count and index; fairseq's has neither).
    ``.bin``: the items' tokens back to back, in the dtype of the header.

``lazy`` / ``cached`` (the legacy TorchNet format; fairseq's ``IndexedDataset``)
    ``.idx``: magic ``b"TNTIDX\\x00\\x00"`` (8 bytes), version ``<Q`` = 1, dtype code ``<Q``,
    element size ``<Q``, item count N ``<Q``, dimension count S ``<Q``, then ``dim_offsets``
    int64[N+1], ``data_offsets`` int64[N+1] (in elements) and ``sizes`` int64[S] (item i's shape
    is ``sizes[dim_offsets[i]:dim_offsets[i+1]]``). ``.bin`` holds every id + 1 (Lua indexing);
    fairseq's loader (``data_utils.load_indexed_dataset``, ``fix_lua_indexing=True``) takes the
    1 off again, and so does this reader.

Items come back as int64 arrays, as fairseq returns them (``.long()``). The dictionaries
(``dict.xx.txt``) are read by :class:`catdiff_translate.vocab.FairseqDictionary`.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

MMAP_MAGIC = b"MMIDIDX\x00\x00"
TNT_MAGIC = b"TNTIDX\x00\x00"
HUFFMAN_MAGIC = b"HUFFIDX\x00\x00"  # fairseq/data/huffman/huffman_mmap_indexed_dataset.py
# fairseq's _code_to_dtype (6 and 7 are both float64 there: np.float64 and np.double)
DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float64,
          8: np.uint16, 9: np.uint32, 10: np.uint64}
REPREPROCESS = "re-run fairseq-preprocess with --dataset-impl mmap (its default)"


class DataBinError(ValueError):
    """A ``.idx`` / ``.bin`` pair that is not a readable fairseq dataset; the message names the file."""


class IndexedDataset:
    """The dataset ``{prefix}.idx`` + ``{prefix}.bin``, in either format above.

    ``len(ds)`` items; ``ds[i]`` is item i (int64 array); ``ds.items()`` all of them in one
    pass; ``ds.sizes`` the tokens per item; ``ds.impl`` is ``"mmap"`` or ``"lazy"``.
    """

    def __init__(self, prefix: str | Path):
        self.prefix = str(prefix)
        self.idx_path, self.bin_path = Path(self.prefix + ".idx"), Path(self.prefix + ".bin")
        for p in (self.idx_path, self.bin_path):
            if not p.is_file():
                raw = Path(self.prefix)
                hint = (f"; {raw} is a text file, as --dataset-impl raw writes it: {REPREPROCESS}"
                        if raw.is_file() else "")
                raise FileNotFoundError(f"{p} not found{hint}")
        head = self.idx_path.read_bytes()
        self._dims = None  # (dim_offsets, shapes) of the TNTIDX format, for items of more than one axis
        if head.startswith(MMAP_MAGIC):
            self._read_mmap_index(head)
        elif head.startswith(TNT_MAGIC):
            self._read_tnt_index(head)
        elif head.startswith(HUFFMAN_MAGIC):
            raise DataBinError(f"{self.idx_path}: a fairseq 'huffman' index, which this reader does not read; "
                               f"{REPREPROCESS}")
        else:
            raise DataBinError(f"{self.idx_path}: not a fairseq index (starts with {head[:9]!r}; expected "
                               f"{MMAP_MAGIC!r}, or {TNT_MAGIC!r} for the legacy lazy/cached format)")
        nbytes = self.bin_path.stat().st_size
        self._bin = np.memmap(self.bin_path, mode="r") if nbytes else b""  # numpy cannot map an empty file
        end = self._offsets + self.sizes * self.dtype.itemsize
        bad = (self._offsets < 0) | (end > nbytes)
        if bad.any():
            i = int(np.argmax(bad))
            raise DataBinError(f"{self.bin_path}: truncated, or not the data of {self.idx_path.name}: item {i} "
                               f"lies at bytes {self._offsets[i]}..{end[i]}, the file has {nbytes}")

    # ------------------------------------------------------------------ index formats
    def _check(self, head: bytes, need: int, what: str, exact: bool = True) -> None:
        if len(head) < need:
            raise DataBinError(f"{self.idx_path}: truncated: {len(head)} bytes, {what} needs {need}")
        if exact and len(head) > need:
            raise DataBinError(f"{self.idx_path}: {len(head) - need} bytes after the end of {what} "
                               f"(not written by fairseq; a Megatron-LM index is a different format)")

    def _dtype(self, code: int) -> np.dtype:
        if code not in DTYPES:
            raise DataBinError(f"{self.idx_path}: unknown dtype code {code} (fairseq defines {sorted(DTYPES)})")
        return np.dtype(DTYPES[code]).newbyteorder("<")

    def _version(self, head: bytes, at: int) -> None:
        (version,) = struct.unpack_from("<Q", head, at)
        if version != 1:
            raise DataBinError(f"{self.idx_path}: index version {version}; fairseq writes (and this reads) version 1")

    def _read_mmap_index(self, head: bytes) -> None:
        self.impl, self._shift = "mmap", 0
        self._check(head, 26, "the mmap index header", exact=False)
        self._version(head, 9)
        self.dtype = self._dtype(head[17])
        (n,) = struct.unpack_from("<Q", head, 18)
        self._check(head, 26 + 12 * n, f"an mmap index of {n} items")
        self.sizes = np.frombuffer(head, "<i4", n, 26).astype(np.int64)
        self._offsets = np.frombuffer(head, "<i8", n, 26 + 4 * n)
        if (self.sizes < 0).any():
            raise DataBinError(f"{self.idx_path}: negative item sizes")

    def _read_tnt_index(self, head: bytes) -> None:
        self.impl, self._shift = "lazy", 1  # ids were stored + 1
        self._check(head, 48, "the lazy/cached index header", exact=False)
        self._version(head, 8)
        code, element_size, n, s = struct.unpack_from("<QQQQ", head, 16)
        self.dtype = self._dtype(code)
        self._check(head, 48 + 16 * (n + 1) + 8 * s, f"a lazy/cached index of {n} items")
        dim_offsets = np.frombuffer(head, "<i8", n + 1, 48)
        data_offsets = np.frombuffer(head, "<i8", n + 1, 48 + 8 * (n + 1))
        shapes = np.frombuffer(head, "<i8", s, 48 + 16 * (n + 1))
        if (np.diff(dim_offsets) < 0).any() or dim_offsets[0] < 0 or dim_offsets[-1] > s or (shapes < 0).any():
            raise DataBinError(f"{self.idx_path}: inconsistent dimension offsets or sizes")
        if (np.diff(dim_offsets) == 1).all():  # one axis per item, as fairseq-preprocess writes
            self.sizes = shapes[dim_offsets[:-1]].copy()
        else:
            self._dims = dim_offsets, shapes
            self.sizes = np.array([int(np.prod(self._shape(i))) for i in range(n)], dtype=np.int64)
        self._offsets = data_offsets[:-1] * element_size  # fairseq seeks by the header's element size

    def _shape(self, i: int) -> tuple[int, ...]:
        dim_offsets, shapes = self._dims
        return tuple(shapes[dim_offsets[i]:dim_offsets[i + 1]].tolist())

    # ------------------------------------------------------------------ items
    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(f"item {i} of {self.prefix} ({len(self)} items)")
        a = np.frombuffer(self._bin, self.dtype, int(self.sizes[i]), int(self._offsets[i])).astype(np.int64)
        a -= self._shift
        return a.reshape(self._shape(i)) if self._dims is not None else a

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def items(self) -> list[np.ndarray]:
        """Every item; one conversion of the whole ``.bin`` when the items start on whole elements
        (the returned arrays are then views of one buffer)."""
        step = self.dtype.itemsize
        if self._dims is not None or not len(self) or (self._offsets % step).any():
            return list(self)
        flat = np.frombuffer(self._bin, self.dtype, len(self._bin) // step).astype(np.int64)
        flat -= self._shift
        starts = (self._offsets // step).tolist()
        return [flat[a:a + n] for a, n in zip(starts, self.sizes.tolist())]
