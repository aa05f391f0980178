"""Reading, splitting and chunking the corpora of the text tasks.

- text8 (Mahoney): one line of 100,000,000 characters over a-z and space, published at
  http://mattmahoney.net/dc/text8.zip. Read from ``text8`` or ``text8.zip``.
- Treasury of David (Debian ``sword-comm-tdavid``): a SWORD zCom4 module. ``ot.czs`` holds
  one little-endian uint32 triple (offset, compressed size, uncompressed size) per block;
  block i is the zlib stream at ``ot.czz[offset : offset + size]`` (followed by padding the
  stream's end marker excludes), OSIS markup in UTF-8. The blocks in index order are the
  whole text (Psalms 1-150 with the preface).
"""
from __future__ import annotations

import hashlib
import html
import os
import re
import struct
import sys
import zipfile
import zlib
from pathlib import Path

import torch

from catdiff.api.errors import UserError
from catdiff.run.checkpoint import CACHE_HINT, write_atomic
from catdiff.run.trainlog import progress

from .tokenizer import clean_text

TEXT8_URL = "http://mattmahoney.net/dc/text8.zip"
SPLITS = ("train", "valid", "test")
_TAG = re.compile(r"<[^>]*>")


def split_text(text: str, fractions=(0.9, 0.05, 0.05)) -> dict[str, str]:
    """Contiguous train/valid/test parts in that order; boundaries at round(fraction * len).

    On text8 (exactly 10^8 characters) this is the standard 90M / 5M / 5M split."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    a = round(fractions[0] * len(text))
    b = round((fractions[0] + fractions[1]) * len(text))
    return {"train": text[:a], "valid": text[a:b], "test": text[b:]}


def chunk(ids: torch.Tensor, length: int) -> torch.Tensor:
    """[T] -> [T // length, length]: consecutive non-overlapping chunks, the remainder dropped."""
    n = ids.numel() // length
    if n == 0:
        raise UserError(f"text of {ids.numel()} characters is shorter than one chunk of {length}")
    return ids[: n * length].view(n, length)


def find_text8(path: str | os.PathLike | None) -> Path:
    """The text8 file: ``path`` (a file, or a directory holding ``text8`` or ``text8.zip``),
    else the environment variable CATDIFF_TEXT8."""
    given = str(path) if path else os.environ.get("CATDIFF_TEXT8", "")
    if not given:
        raise FileNotFoundError(
            f"text8 not configured: download {TEXT8_URL} and pass --set text8_path=/path/to/text8.zip "
            "(or the unzipped text8 file), or set the environment variable CATDIFF_TEXT8")
    p = Path(given).expanduser()
    candidates = [p / "text8", p / "text8.zip"] if p.is_dir() else [p]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"text8 not found at {p} (looked for {', '.join(map(str, candidates))}); the file `text8` "
        f"(or text8.zip) is published at {TEXT8_URL}")


def min_chars(seq_len: int = 256, fractions=(0.9, 0.05, 0.05)) -> int:
    """The fewest characters whose :func:`split_text` gives every split at least one chunk of ``seq_len``."""
    n = max(3 * seq_len, int(seq_len / min(fractions)) - 16)  # the rounding of the boundaries moves it by a few
    while min(len(part) for part in split_text(" " * n, fractions).values()) < seq_len:
        n += 1
    return n


def read_text8(path: Path, seq_len: int = 256) -> str:
    """The text of ``text8`` or of the member ``text8`` inside ``text8.zip``, checked to be clean
    and long enough for one chunk of ``seq_len`` characters in each of the 90/5/5 splits."""
    path = Path(path)
    fix = f"download it again from {TEXT8_URL}"
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                if "text8" not in z.namelist():
                    raise UserError(f"{path} has no member 'text8' (members: {z.namelist()[:5]}); {fix}")
                raw = z.read("text8")
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
            raise UserError(f"{path} is a damaged zip archive ({e}); {fix}") from None
    else:
        raw = path.read_bytes()
        if raw.startswith(b"PK\x03\x04"):
            raise UserError(f"{path} is a truncated or damaged zip archive; {fix}")
    bad = re.search(rb"[^a-z ]", raw)
    if bad:
        raise UserError(f"{path} is not text8: byte {bad.start()} is {raw[bad.start():bad.start() + 1]!r}, but text8 "
                        f"holds only a-z and space; give the file `text8` (or text8.zip) from {TEXT8_URL}")
    need = min_chars(seq_len)
    if len(raw) < need:
        raise UserError(f"{path} holds {len(raw):,} characters; text8 needs at least {need:,} (one chunk of {seq_len} "
                        f"in each of the 90/5/5 splits; the real file has 100,000,000): {fix}")
    return raw.decode("ascii")


def read_sword_blocks(module_dir: Path, testament: str = "ot") -> str:
    """Decompress every block of a SWORD zText/zCom module (``ot.czs`` + ``ot.czz``) in order."""
    index, data = module_dir / f"{testament}.czs", module_dir / f"{testament}.czz"
    for f in (index, data):
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found")
    fix = "reinstall the module (apt install --reinstall sword-comm-tdavid) or point sword_dir at an intact copy"
    raw_index, blob = index.read_bytes(), data.read_bytes()
    if not raw_index or len(raw_index) % 12:
        raise UserError(f"{index}: size {len(raw_index)} is not a positive multiple of 12 (uint32 triples); {fix}")
    parts = []
    bar = progress(len(raw_index) // 12, f"reading {data.name} (once; cached after)")
    for offset, size, usize in struct.iter_unpack("<III", raw_index):
        bar.update(1)
        try:
            block = zlib.decompressobj().decompress(blob[offset : offset + size])
            if len(block) != usize:
                raise UserError(f"{data}: block at {offset} inflates to {len(block)} bytes, index says {usize}; {fix}")
            parts.append(block.decode("utf-8"))
        except (zlib.error, UnicodeDecodeError) as e:
            raise UserError(f"{data}: block at byte {offset} is damaged ({e}); {fix}") from None
    bar.close()
    return "".join(parts)


def strip_markup(text: str) -> str:
    """OSIS/ThML -> plain text: every tag becomes a space, then entities are unescaped."""
    return html.unescape(_TAG.sub(" ", text))


def tdavid_text(module_dir: Path, cache_dir: Path | None) -> str:
    """The cleaned Treasury of David (a-z and single spaces), cached in ``cache_dir`` under a
    name derived from the module files' sizes and modification times."""
    files = [module_dir / "ot.czs", module_dir / "ot.czz"]
    cache = None
    if cache_dir is not None and all(f.is_file() for f in files):
        key = hashlib.sha1(repr([(f.stat().st_size, f.stat().st_mtime_ns) for f in files]).encode()).hexdigest()[:12]
        cache = cache_dir / f"tdavid-{key}.txt"
        if cache.is_file():
            try:
                return cache.read_text(encoding="ascii")
            except UnicodeDecodeError:  # damaged: rebuilt below and replaced
                pass
    print(f"catdiff-text: building the Treasury of David text from {module_dir} (minutes, once"
          + (f"; cached in {cache_dir})" if cache is not None else ")"), file=sys.stderr, flush=True)
    text = clean_text(strip_markup(read_sword_blocks(module_dir))).strip()
    if cache is not None:
        write_atomic(text.encode("ascii"), cache, "text cache", CACHE_HINT)
    return text
