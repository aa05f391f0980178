"""Reading parallel corpora: plain-text directories, fairseq data-bin directories, and the
Ding German-English dictionary's example sentences."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import torch

from catdiff.api.errors import UserError, read_text

from .fairseq_bin import IndexedDataset

SPLIT_FILES = {"train": "train", "valid": "valid", "test": "test"}

TEXT_LAYOUT = (
    "a directory with one sentence per line in train.{src}, train.{tgt}, valid.{src}, valid.{tgt}, "
    "test.{src}, test.{tgt} (line i of .{src} translates to line i of .{tgt}), as fairseq's "
    "examples/translation/{script} writes it ({subdir})"
)


def text_lines(path: Path, what: str = "corpus file") -> list[str]:
    """The lines of a UTF-8 text file, split at ``\\n`` only (``\\r\\n`` endings allowed), as
    fairseq's scripts count them: a form feed or U+2028 inside a sentence does not split it."""
    text = read_text(path, what).replace("\r\n", "\n")
    lines = text.split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def count_lines(path: Path) -> int:
    """The number of lines :func:`text_lines` finds, counted on the bytes (no decoding)."""
    data = path.read_bytes()
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def check_aligned(data_dir: Path, src: str, tgt: str) -> None:
    """A UserError naming both files and both counts for the first split whose source and
    target files (those present) differ in line count."""
    for split in SPLIT_FILES.values():
        paths = [data_dir / f"{split}.{lang}" for lang in (src, tgt)]
        if all(p.is_file() for p in paths):
            counts = [count_lines(p) for p in paths]
            if counts[0] != counts[1]:
                raise _misaligned(paths, counts)


def _misaligned(paths: list[Path], counts: list[int]) -> UserError:
    return UserError(f"{paths[0]} has {counts[0]} lines but {paths[1]} has {counts[1]}; they must be line-aligned "
                     f"translations (line i of one translates line i of the other)")


def read_parallel(data_dir: Path, split: str, src: str, tgt: str) -> tuple[list[str], list[str]]:
    """Lines of ``{split}.{src}`` and ``{split}.{tgt}`` (same count required)."""
    paths = [data_dir / f"{SPLIT_FILES[split]}.{lang}" for lang in (src, tgt)]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"corpus file {p} not found; {data_dir} needs {paths[0].name} and {paths[1].name} "
                                    f"(one sentence per line, line-aligned)")
    src_lines, tgt_lines = (text_lines(p) for p in paths)
    if len(src_lines) != len(tgt_lines):
        raise _misaligned(paths, [len(src_lines), len(tgt_lines)])
    return src_lines, tgt_lines


def pad_rows(seqs: list[list[int]] | list[np.ndarray], length: int, pad_id: int) -> torch.Tensor:
    """[N, length] LongTensor: each sequence left-aligned (truncated to ``length``), then ``pad_id``."""
    lengths = np.minimum([len(s) for s in seqs], length)
    out = np.full((len(seqs), length), pad_id, dtype=np.int64)
    if len(seqs):
        flat = np.concatenate([np.asarray(s[:n], dtype=np.int64) for s, n in zip(seqs, lengths)])
        out[np.arange(length)[None, :] < lengths[:, None]] = flat
    return torch.from_numpy(out)


# ----------------------------------------------------------------------------- fairseq data-bin
def read_data_bin(data_bin: Path, split: str, src: str, tgt: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Sentences (id arrays, trailing ``</s>`` kept as fairseq stores it) of a ``fairseq-preprocess``
    output: ``{split}.{src}-{tgt}.{lang}.bin/.idx`` in ``data_bin``, read natively (fairseq_bin.py)."""
    out = []
    for lang in (src, tgt):
        prefix = data_bin / f"{split}.{src}-{tgt}.{lang}"
        try:
            out.append(IndexedDataset(prefix).items())
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{e} (fairseq-preprocess --source-lang {src} --target-lang {tgt} "
                                    f"--destdir {data_bin} writes {prefix}.bin/.idx)") from None
    if len(out[0]) != len(out[1]):
        raise UserError(f"{data_bin}: split {split} has {len(out[0])} source but {len(out[1])} target sentences")
    return out[0], out[1]


# ----------------------------------------------------------------------------- Ding de-en
DING_FILE = "/usr/share/trans/de-en"
# dictionary notation that does not belong in a sentence pair: alternatives, comments, grammar tags
_NOTATION = re.compile(r"[/;\[\]{}()<>~=+]|\.\.\.")


def ding_pairs(path: Path, min_words: int, max_words: int) -> list[tuple[str, str]]:
    """Example-sentence pairs of the Ding dictionary (Debian ``trans-de-en``).

    Lines are ``de :: en``; both sides hold the same number of `` | ``-separated
    sub-entries, aligned by position. A sub-entry pair is kept when both sides end in
    ``.``/``?``/``!``, contain no dictionary notation (alternatives ``/``, ``;``, brackets,
    ``...``) and have ``min_words``..``max_words`` words: sentences, not headwords. The first
    translation of a German sentence wins (deduplicated, file order).
    """
    pairs: dict[str, str] = {}
    for line in text_lines(path, "Ding dictionary file"):
        if line.startswith("#") or " :: " not in line:
            continue
        de, en = line.split(" :: ", 1)
        de_parts, en_parts = de.split(" | "), en.split(" | ")
        if len(de_parts) != len(en_parts):
            continue
        for a, b in zip(de_parts, en_parts):
            a, b = a.strip(), b.strip()
            if not (a.endswith((".", "?", "!")) and b.endswith((".", "?", "!"))):
                continue
            if _NOTATION.search(a) or _NOTATION.search(b):
                continue
            if min_words <= len(a.split()) <= max_words and min_words <= len(b.split()) <= max_words:
                pairs.setdefault(a, b)
    if not pairs:
        raise UserError(f"Ding dictionary file {path} holds no sentence pair of {min_words}..{max_words} words "
                        f"('german sentence. :: english sentence.' lines, as in Debian's trans-de-en "
                        f"/usr/share/trans/de-en); give that file (--set ding_file=PATH)")
    return list(pairs.items())


def hash_split(pairs: list[tuple[str, str]], test_percent: int) -> dict[str, list[tuple[str, str]]]:
    """Deterministic split by a hash of the source sentence (independent of file order):
    ``test_percent`` % test, as many valid, the rest train."""
    out: dict[str, list[tuple[str, str]]] = {"train": [], "valid": [], "test": []}
    for pair in pairs:
        bucket = int(hashlib.sha1(pair[0].encode("utf-8")).hexdigest()[:8], 16) % 100
        split = "test" if bucket < test_percent else "valid" if bucket < 2 * test_percent else "train"
        out[split].append(pair)
    return out
