"""A run directory (``--out``): its lock, its checkpoints and the files a run wrote there.

    DIR/last.pt            the checkpoint a run resumes from (written every ckpt_every steps)
    DIR/step-00001000.pt   keep_last step-numbered copies of it (hard links where possible)
    DIR/best.pt            the best evaluation so far (the task's best_metric)
    DIR/config.json        the config last.pt was trained with
    DIR/.catdiff-files     the names of the files evaluations wrote (metrics.json, the task's own)

Every file is written atomically (checkpoint.write_atomic). One process writes (rank 0), and
only while it holds the directory's lock (runlock). ``resume=false`` on a directory that holds
a run moves that run's files into ``DIR/previous-<time>/`` instead of deleting them.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from ..api.errors import UserError, read_text
from . import checkpoint
from .export import WEIGHTS as EXPORT_WEIGHTS  # what marks a `catdiff export` directory
from .runlock import RunLock

CKPT_NAME = "last.pt"
BEST_NAME = "best.pt"
MANIFEST = ".catdiff-files"
# What a run writes besides the files its evaluations record in MANIFEST ("samples.*" and
# "collapse.*": task files of runs written before the manifest)
RUN_FILES = (CKPT_NAME, BEST_NAME, "step-*.pt", "config.json", "train_log.csv", "eval_log.csv", "metrics.json",
             "tensorboard", "wandb", MANIFEST, "samples.*", "collapse.*")


def files(directory: Path) -> dict[str, int]:
    """Name -> modification time (ns) of the files in ``directory``."""
    directory = Path(directory)
    return {p.name: p.stat().st_mtime_ns for p in directory.iterdir() if p.is_file()} if directory.is_dir() else {}


def written(directory: Path, before: dict[str, int]) -> list[Path]:
    """The files of ``directory`` created or changed since ``before`` (:func:`files`), whatever
    wrote them (samples.txt, translations.txt, ...); hidden files left out."""
    return [Path(directory) / name for name, mtime in sorted(files(directory).items())
            if not name.startswith(".") and before.get(name) != mtime]


def record(directory: Path, paths: list[Path]) -> None:
    """Add the names of ``paths`` to ``directory``'s manifest (moved aside with the run)."""
    path = Path(directory) / MANIFEST
    names = set(path.read_text().split("\n")) if path.is_file() else set()
    names = sorted((names | {p.name for p in paths}) - {""})
    checkpoint.write_atomic(("\n".join(names) + "\n").encode(), path, "file list")


@contextlib.contextmanager
def recording(directory: Path):
    """Record the files written in ``directory`` inside the block, also when it fails (an error
    of the manifest's own then gives way to the block's)."""
    before = files(directory)
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            if new := written(directory, before):
                record(directory, new)
        raise
    if new := written(directory, before):
        record(directory, new)


class RunDir:
    def __init__(self, path: str | Path, rank: int = 0):
        self.path = Path(path)
        self.writer = rank == 0  # only rank 0 writes
        self.lock = RunLock(self.path)
        self.start_over = False  # resume=false: move the old run's files aside before writing

    @property
    def last(self) -> Path:
        return self.path / CKPT_NAME

    @contextlib.contextmanager
    def writing(self):
        """Hold the run lock (rank 0; re-entrant) and tidy the directory: remove temp files of
        killed writes, refuse an export's directory and, after ``resume=false`` or where no
        checkpoint is, move the run files there aside."""
        if not self.writer:
            yield
            return
        with self.lock:
            checkpoint.remove_stale_temps(self.path)
            if not self.last.exists() and (self.path / EXPORT_WEIGHTS).exists():
                raise UserError(f"--out {self.path} holds a catdiff export ({EXPORT_WEIGHTS}); a run there would "
                                f"replace its config.json: pass another --out")
            # after resume=false, or without a checkpoint (a crashed start, the user's own files)
            old = self._run_files() if self.start_over or not self.last.exists() else set()
            if old:
                self._move_aside(old, "resume=false: moved the previous run's files" if self.start_over
                                 else f"no {CKPT_NAME} here: moved the files a run would overwrite")
            self.start_over = False
            yield

    def _run_files(self) -> set[Path]:
        listed = self.path / MANIFEST
        names = listed.read_text().split() if listed.is_file() else []
        return {p for pattern in (*RUN_FILES, *names) for p in self.path.glob(pattern)}

    def _move_aside(self, old: set[Path], why: str) -> None:
        dest = self.path / time.strftime("previous-%Y%m%d-%H%M%S")
        while dest.exists():
            dest = dest.with_name(dest.name + "x")
        dest.mkdir()
        for p in sorted(old):
            shutil.move(str(p), str(dest / p.name))
        print(f"catdiff: {why} to {dest}", file=sys.stderr)

    def save(self, state: dict[str, Any]) -> Path:
        """last.pt, then config.json (its record): a checkpoint that cannot be written (a full disk)
        leaves both as they were, not a record ahead of its checkpoint."""
        path = checkpoint.save(state, self.last)
        checkpoint.write_atomic((json.dumps(state["config"], indent=2) + "\n").encode(),
                                self.path / "config.json", "config")
        return path

    def save_best(self, state: dict[str, Any]) -> Path:
        return checkpoint.save(state, self.path / BEST_NAME)

    def keep_step(self, step: int, keep_last: int) -> None:
        """``keep_last`` N: a step-numbered copy (a hard link) of last.pt; older ones are removed."""
        if not keep_last:
            return
        numbered = self.path / f"step-{step:08d}.pt"
        numbered.unlink(missing_ok=True)
        try:
            os.link(self.last, numbered)
        except OSError:  # a file system without hard links
            shutil.copyfile(self.last, numbered)
        for old in sorted(self.path.glob("step-*.pt"))[:-keep_last]:
            old.unlink()


def read_record(path: Path) -> dict[str, Any]:
    """A run directory's config.json (the record of its config): a JSON object, else a
    ValueError saying what it is not (a file that is not UTF-8: the UserError of read_text)."""
    try:
        record = json.loads(read_text(path, "config.json"))
    except ValueError as e:
        raise ValueError(f"is not valid JSON ({e})") from None
    if not isinstance(record, dict):
        raise ValueError("does not hold a JSON object")
    return record
