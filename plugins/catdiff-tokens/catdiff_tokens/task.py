"""``tokens``: a diffusion model of any integer token array, optionally class-conditional.

``catdiff run tokens --set path=tokens.npy`` models the rows of an int array [N, M] saved
with ``numpy.save`` (``.npy``, memory-mapped while read) or ``torch.save`` (``.pt``, a
tensor). ``labels=labels.npy`` ([N] class ids) makes the task class-conditional (guidance
and ``--label`` then work). ``path`` may also be a token shard directory written by
``catdiff prepare`` of an image task (``index.json`` + ``tokens-*.u16``), or a directory
holding ``train/`` and ``test/`` shard directories; shards are read lazily, batch by batch,
with the labels they carry (read through ``catdiff_vision.shards``, imported only then:
catdiff-vision is what writes them).

Test split: ``test_path`` (and ``test_labels``), else a fixed ``test_frac`` of the rows,
chosen by a permutation with its own seed (0, not the run's ``seed``), so the split is the
same for every run and resume and disjoint from train.

What setup stores. ``vocab_size`` (max id + 1 over train and test, or the shards' declared
vocabulary, unless given), ``seq_len`` (M) and ``num_classes`` (max label + 1, or the shards'
class names, unless given) are written into ``cfg.options``, so a checkpoint is sampled
(``catdiff sample``) with the same vocabulary without reading the data again.

Metrics, besides the engine's bound in bits per token: ``unigram_bits`` (the entropy of the
training tokens' unigram distribution: the bound a model without context reaches),
``sample_unigram_tv`` (total variation between the samples' token frequencies and the
training ones) and ``test_unigram_tv`` (the same for as many real test rows: the floor that
finite samples leave).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from catdiff.api.errors import UserError
from catdiff.api.settings import Setting
from catdiff.api.task import LazyTokenData, Task, TokenData

from .arrays import check_labels, check_tokens, read_array

SPLIT_SEED = 0
UNIGRAM_ROWS = 10_000  # rows of train read for the unigram metrics


class ArraySource:
    """Rows of an in-memory int64 array (and labels)."""

    def __init__(self, tokens: np.ndarray, labels: np.ndarray | None, path: Path):
        self.tokens, self.labels, self.path = tokens, labels, path
        self.seq_len = tokens.shape[1]
        self.max_id = int(tokens.max())
        self.max_label = None if labels is None else int(labels.max())

    def __len__(self) -> int:
        return len(self.tokens)

    def subset(self, idx: np.ndarray) -> "ArraySource":
        return ArraySource(self.tokens[idx], None if self.labels is None else self.labels[idx], self.path)

    def data(self, vocab_size: int) -> TokenData:
        return TokenData(torch.from_numpy(self.tokens), None if self.labels is None else torch.from_numpy(self.labels))


class ShardSource:
    """Rows ``idx`` (all by default) of a token shard directory, read on demand."""

    def __init__(self, shards, path: Path, idx: np.ndarray | None = None):
        self.shards, self.path = shards, path
        self.idx = np.arange(len(shards)) if idx is None else idx
        self.seq_len = shards.seq_len
        self.max_id = shards.vocab_size - 1  # the declared vocabulary (a tokenizer's codebook), not scanned
        names = shards.meta.get("class_names") or []
        self.max_label = (len(names) - 1 if names else None) if shards.has_labels else None
        self.labels = True if shards.has_labels else None  # only tested for presence

    def __len__(self) -> int:
        return len(self.idx)

    def subset(self, idx: np.ndarray) -> "ShardSource":
        return ShardSource(self.shards, self.path, self.idx[idx])

    def rows(self, idx):
        return self.shards.rows(self.idx[np.asarray(idx, dtype=np.int64)])

    def data(self, vocab_size: int) -> LazyTokenData:
        return LazyTokenData(self, seq_len=self.seq_len, vocab_size=vocab_size)


def _open_shards(directory: Path) -> ShardSource:
    try:
        from catdiff_vision.shards import ShardedTokens
    except ImportError:
        raise UserError(f"task tokens: {directory} is a token shard directory; reading it needs the catdiff-vision "
                        "plugin (pip install -e plugins/catdiff-vision)") from None
    try:
        return ShardSource(ShardedTokens(directory), directory)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"task tokens: {e}") from None


class TokensTask(Task):
    """Any integer token array [N, M] (see the module docstring)."""

    name = "tokens"
    vocab_size = 0  # vocab_size, seq_len, num_classes: set by setup from the data or the options
    seq_len = 0
    # The core defaults: any token array, of any modality, is the task nobody tuned that they were
    # chosen for (four such tasks at 1300 steps, docs/results.md#core-defaults-on-untuned-tasks);
    # only the budget is set here. Image tokens sample better with token_grid and conv_kernel=3.
    defaults: Mapping[str, Any] = dict(steps=1300, sample_steps=50, n_samples=64, ckpt_every=250, log_every=25)
    settings = (
        Setting("path", "", "the tokens: an integer array [N, M] (.npy, memory-mapped, or .pt), a token shard "
                "directory of `catdiff prepare`, or a directory of train/ and test/ shards"),
        Setting("labels", "", "class ids [N] of path's rows (.npy / .pt): a class-conditional model; shards carry "
                "their own"),
        Setting("test_path", "", "the test tokens (same M); \"\" = a fixed test_frac of path's rows"),
        Setting("test_labels", "", "class ids of test_path's rows (needed when labels is given)"),
        Setting("test_frac", 0.1, "fraction of path's rows held out for test when there is no test_path (a fixed "
                "split, seed 0, not the run's seed)", low=0, low_open=True, high=1, high_open=True),
        Setting("vocab_size", 0, "token ids 0..vocab_size-1; 0 = max id + 1 over train and test (or the shards' "
                "vocabulary); resolved at setup and stored with the checkpoint", low=0),
        Setting("seq_len", 0, "tokens per row, M; 0 = the data's; resolved at setup and stored", low=0),
        Setting("num_classes", 0, "classes of the labels; 0 = max label + 1 (or the shards' class names); resolved "
                "at setup and stored", low=0),
    )
    description = "any integer token array [N, M] (.npy/.pt, --set path=...) or token shards, optional labels"

    def __init__(self):
        self._splits: dict[str, ArraySource | ShardSource] | None = None

    # ------------------------------------------------------------- setup
    def setup(self, cfg) -> None:
        super().setup(cfg)
        self._splits = None
        vocab, seq, classes = (int(self.option(k)) for k in ("vocab_size", "seq_len", "num_classes"))
        maybe_labels = bool(self.option("labels")) or Path(self.option("path")).expanduser().is_dir()
        if not (vocab > 0 and seq > 0 and (classes > 0 or not maybe_labels)):
            vocab, seq, classes = self._from_data(vocab, seq, classes)
        cfg.options.update(vocab_size=vocab, seq_len=seq, num_classes=classes)
        self.vocab_size, self.seq_len, self.num_classes = vocab, seq, classes

    def _from_data(self, vocab: int, seq: int, classes: int) -> tuple[int, int, int]:
        """vocab_size, seq_len, num_classes from the data, checked against the given ones (> 0)."""
        splits = self.splits()
        train, test = splits["train"], splits["test"]
        if test.seq_len != train.seq_len:
            raise UserError(f"task tokens: test data {test.path} has sequences of {test.seq_len} tokens but "
                            f"{train.path} has {train.seq_len}; both must have the same M")
        if seq and seq != train.seq_len:
            raise UserError(f"task tokens: {train.path} has sequences of {train.seq_len} tokens, not seq_len={seq}; "
                            "leave seq_len unset (0) to take it from the data")
        top = max(train.max_id, test.max_id)
        if vocab and top >= vocab:
            where = train.path if train.max_id >= vocab else test.path
            raise UserError(f"task tokens: {where} holds token id {top}, outside [0, {vocab - 1}] of "
                            f"vocab_size={vocab}; "
                            "raise vocab_size or leave it unset (0: max id + 1)")
        if (train.labels is None) != (test.labels is None):
            raise UserError(f"task tokens: {train.path if train.labels is None else test.path} has no labels but the "
                            "other split has; give labels for both (labels and test_labels) or for neither")
        if train.labels is not None:
            known = [s.max_label for s in (train, test) if s.max_label is not None]
            if not known and not classes:
                raise UserError(f"task tokens: the shards of {train.path} carry labels but no class names; "
                                "give num_classes")
            top_label = max(known) if known else -1
            if classes and top_label >= classes:
                raise UserError(f"task tokens: labels hold class {top_label}, outside [0, {classes - 1}] of "
                                f"num_classes={classes}; raise num_classes or leave it unset (0: max label + 1)")
            classes = classes or top_label + 1
        return vocab or top + 1, train.seq_len, classes

    # ------------------------------------------------------------- data
    def splits(self) -> dict[str, ArraySource | ShardSource]:
        """Train and test sources (read once per setup)."""
        if self._splits is None:
            spec = self.option("path")
            if not spec:
                raise UserError("task tokens needs its data: --set path=tokens.npy (an integer array [N, M], .npy or "
                                ".pt) or a token shard directory; optional labels=labels.npy ([N] class ids)")
            train = self._source(Path(spec).expanduser(), self.option("labels"), "train")
            test_spec = self.option("test_path")
            if test_spec:
                test = self._source(Path(test_spec).expanduser(), self.option("test_labels"), "test")
            elif isinstance(train, tuple):  # a directory of train/ and test/ shards
                train, test = train
            else:
                train, test = self._split(train)
            self._splits = {"train": train, "test": test}
        return self._splits

    def _source(self, path: Path, labels: str, split: str):
        if path.is_dir():
            if labels:
                raise UserError(f"task tokens: {path} is a shard directory, which carries its own labels; "
                                "drop the labels / test_labels option")
            if (path / "index.json").is_file():
                return _open_shards(path)
            if split == "train" and (path / "train" / "index.json").is_file():
                train = _open_shards(path / "train")
                if (path / "test" / "index.json").is_file():
                    return train, _open_shards(path / "test")
                return train
            raise UserError(f"task tokens: {path} is a directory without token shards (index.json, or "
                            "train/index.json); "
                            "give a .npy / .pt array or a shard directory written by `catdiff prepare`")
        tokens = check_tokens(read_array(path, "token array"), path)
        lab = None
        if labels:
            lpath = Path(labels).expanduser()
            lab = check_labels(read_array(lpath, "labels"), lpath, len(tokens), path)
        elif split == "test" and self.option("labels"):
            raise UserError(f"task tokens: the train data has labels; give test_labels for {path}")
        return ArraySource(tokens, lab, path)

    def _split(self, source):
        """A fixed fraction of the rows for test, drawn by a permutation of seed SPLIT_SEED."""
        n = len(source)
        n_test = max(1, round(self.option("test_frac") * n))
        if n - n_test < 1:
            raise UserError(f"task tokens: {source.path} has {n} rows, too few to split off a test set "
                            f"(test_frac={self.option('test_frac')}); give more rows or a test_path")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED)).numpy()
        return source.subset(np.sort(perm[n_test:])), source.subset(np.sort(perm[:n_test]))

    def load(self, split: str) -> TokenData | LazyTokenData:
        if split not in ("train", "test"):
            raise ValueError(f"task tokens has splits train and test, not {split!r}")
        source = self.splits()[split]
        if source.seq_len != self.seq_len or source.max_id >= self.vocab_size:
            raise UserError(f"task tokens: {source.path} holds sequences of {source.seq_len} tokens with ids up to "
                            f"{source.max_id}; this run has seq_len={self.seq_len}, vocab_size={self.vocab_size}")
        return source.data(self.vocab_size)

    # ------------------------------------------------------------- evaluation
    def _frequencies(self, tokens: torch.Tensor) -> torch.Tensor:
        counts = torch.bincount(torch.as_tensor(tokens).flatten().cpu(), minlength=self.vocab_size).double()
        return counts / counts.sum()

    def _head(self, split: str, rows: int) -> torch.Tensor:
        data = self.load(split)
        if isinstance(data, LazyTokenData):
            return data.rows(slice(0, min(rows, len(data))))[0]
        return data.tokens[:rows]

    def evaluate(self, tokens: torch.Tensor, labels, out_dir: Path | None) -> dict[str, float]:
        """``unigram_bits``, ``sample_unigram_tv``, ``test_unigram_tv`` (see the module docstring)."""
        p = self._frequencies(self._head("train", UNIGRAM_ROWS))
        nz = p[p > 0]
        tv = lambda x: 0.5 * (self._frequencies(x) - p).abs().sum().item()  # noqa: E731
        return {"unigram_bits": float(-(nz * nz.log2()).sum()), "sample_unigram_tv": tv(tokens),
                "test_unigram_tv": tv(self._head("test", len(tokens)))}

    def save_samples(self, tokens: torch.Tensor, labels, out_dir: Path) -> list[Path]:
        """``samples.npy`` (int64 [n, M]), ``sample_labels.npy`` (conditional tasks) and
        ``samples.txt``: one sample per line, its ids separated by spaces (after ``label:``)."""
        out_dir = Path(out_dir)
        tokens = torch.as_tensor(tokens).cpu().numpy().astype(np.int64)
        files = [out_dir / "samples.npy", out_dir / "samples.txt"]
        np.save(files[0], tokens)
        lab = None if labels is None else torch.as_tensor(labels).cpu().numpy().astype(np.int64)
        rows = [" ".join(map(str, row)) for row in tokens.tolist()]
        lines = rows if lab is None else [f"{c}: {r}" for c, r in zip(lab.tolist(), rows)]
        files[1].write_text("\n".join(lines) + "\n")
        if lab is not None:
            files.append(out_dir / "sample_labels.npy")
            np.save(files[-1], lab)
        return files

    def parse_prompt(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids separated by spaces or commas; ``_`` is one token to generate, one ``*`` as
        many as fill ``seq_len`` (without ``*`` free tokens pad the end): ``"5 3 _ 7 *"``."""
        items = re.split(r"[\s,]+", text.strip())
        bad = [s for s in items if not re.fullmatch(r"\d+|_|\*", s)]
        if bad or not items or items == [""]:
            raise UserError(f"--prompt: {bad[0] if bad else text!r} is not a token id, '_' or '*'; "
                            "write e.g. '5 3 _ 7 *'")
        if items.count("*") > 1:
            raise UserError(f"--prompt may hold at most one '*', got {items.count('*')}")
        fixed = len(items) - items.count("*")
        if fixed > self.seq_len:
            raise UserError(f"--prompt spans {fixed} tokens, more than seq_len={self.seq_len}")
        fill = ["_"] * (self.seq_len - fixed)
        at = items.index("*") if "*" in items else len(items)
        items = [s for s in items if s != "*"]
        items[at:at] = fill
        out = [s for s in items if s != "_" and int(s) >= self.vocab_size]
        if out:
            raise UserError(f"--prompt: token id {out[0]} outside [0, {self.vocab_size - 1}]")
        mask = torch.tensor([s != "_" for s in items])
        return torch.tensor([0 if s == "_" else int(s) for s in items], dtype=torch.long), mask
