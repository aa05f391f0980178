"""The input of the ``text-file`` task: a UTF-8 file, a folder (recursive) or a glob.

Files are read in sorted path order (symlinks to the same file read once; names starting
with ``.`` skipped in folders, e.g. ``.git``); ``\\r\\n`` becomes ``\\n``. Each file is split
on its own, contiguously, like text8 (:func:`catdiff_text.corpus.split_text`): its first
``1 - 2 f`` characters go to train, the next ``f`` to valid, the last ``f`` to test
(``f = test_frac``). A split is the concatenation of its parts over the files (a newline
added after a part that does not end in one), so every file contributes to every split, no
text is in two splits, and the result depends only on the files and ``f``.
"""
from __future__ import annotations

import glob
from pathlib import Path

from catdiff.api.errors import UserError, read_text

from . import corpus

GLOB_CHARS = set("*?[")


def find_files(spec: str) -> list[Path]:
    """The files ``spec`` names (a file, a folder searched recursively, or a glob), sorted."""
    if not spec:
        raise UserError("task text-file needs its input: --set path=FILE, a folder of text files, or a glob "
                        "such as 'docs/**/*.txt'")
    p = Path(spec).expanduser()
    if GLOB_CHARS & set(spec) and not p.exists():
        files = [Path(f) for f in glob.glob(str(p), recursive=True) if Path(f).is_file()]
        if not files:
            raise UserError(f"text-file path {spec!r}: no file matches this glob")
    elif p.is_dir():
        hidden = lambda f: any(part.startswith(".") for part in f.relative_to(p).parts)  # noqa: E731
        files = [f for f in p.rglob("*") if f.is_file() and not hidden(f)]
        if not files:
            raise UserError(f"text-file path {p}: the folder holds no files; put UTF-8 text files in it")
    elif p.is_file():
        files = [p]
    else:
        raise UserError(f"text-file path {p} does not exist; give a UTF-8 text file, a folder or a glob")
    unique = {f.resolve(): f for f in sorted(files)}  # GPL -> GPL-3 style links: read once
    return sorted(unique.values())


def read_split(files: list[Path], test_frac: float, spec: str = "") -> dict[str, str]:
    """Train/valid/test texts of ``files`` (see the module docstring)."""
    parts: dict[str, list[str]] = {s: [] for s in corpus.SPLITS}
    for f in files:
        text = read_text(f, "text-file input").replace("\r\n", "\n")
        for split, part in corpus.split_text(text, (1 - 2 * test_frac, test_frac, test_frac)).items():
            if part:
                parts[split].append(part if part.endswith("\n") else part + "\n")
    if not parts["train"]:
        what = f"file {files[0]} is" if len(files) == 1 else f"all {len(files)} files of {spec or files[0].parent} are"
        raise UserError(f"text-file input: {what} empty; give UTF-8 text")
    return {split: "".join(p) for split, p in parts.items()}
