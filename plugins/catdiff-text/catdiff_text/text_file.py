"""``text-file``: a character- or BPE-level model of any UTF-8 text, scored in bits per character.

``catdiff run text-file --set path=notes/`` reads a file, a folder (recursive) or a glob
(:mod:`catdiff_text.sources`: sorted, each file split 90/5/5 contiguously), optionally
folds it (``clean=true``: text8-style a-z and space; ``lowercase=true``), and models chunks
of ``seq_len`` tokens (non-overlapping, the remainder dropped) of the vocabulary chosen by
``tokenizer`` (:mod:`catdiff_text.vocab`):

- ``chars`` (default): one id per character of ``alphabet``: derived from the training
  split (every character there, by code point) unless given (``alphabet=text8`` is a-z and
  space); others become U+FFFD (``unknown=replace``, one extra id) or are dropped
  (``unknown=drop``).
- ``sentencepiece``: a BPE model of ``bpe_vocab`` pieces trained on the training split (after
  the same character mapping), cached in ``cache_dir`` under a fingerprint of the training
  text and the settings; ``catdiff prepare text-file --set path=...`` trains it up front.

What setup stores. The derived ``alphabet`` and the serialised BPE model (``spm_proto``,
base64) are written into ``cfg.options``, so checkpoints carry their vocabulary and
``catdiff sample`` / ``eval`` rebuild the same ids without reading (or re-deriving from)
the data. A run resumed with the same data and options derives the same vocabulary; one
whose data now gives another vocabulary is refused by the engine's resume check.

BPC. The likelihood bound gives bits per token of the test chunks; bits per character =
bits per token * tokens / characters, the characters being those the evaluated chunks stand
for (``char_counts``: 1 per character id, the piece length per BPE id, so no estimate of
the text length is involved). Both are reported (``bpc``, ``bits_per_token``).
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Mapping

import torch

from catdiff.api.errors import UserError
from catdiff.api.settings import Setting, with_defaults
from catdiff.api.task import TokenData
from catdiff.run.checkpoint import CACHE_HINT, write_atomic

from . import corpus, sources
from .tasks import BPC_SETTINGS, FILL, FREE, TextTask
from .tokenizer import ALPHABET, clean_text
from .vocab import BpeVocab, CharVocab, derive_alphabet, finish_alphabet, load_proto, restrict, train_bpe

ALPHABET_PRESETS = {"text8": ALPHABET}
TOKENIZERS = ("chars", "sentencepiece")
BPE_FORMAT = 1  # part of the cache fingerprint: bump when train_bpe's settings change


def cache_root(option: str) -> Path:
    return Path(option).expanduser() if option else Path(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))) / "catdiff" / "text-file"


class TextFileTask(TextTask):
    """Any UTF-8 text: a file, a folder or a glob (see the module docstring)."""

    name = "text-file"
    vocab_size = 0  # set by setup from the data and options
    seq_len = 256
    # text-tdavid's small CPU model (see TdavidTask). On the characters of /usr/share/common-licenses
    # the core defaults (4 x 128, D 256, batch 32) gave a slightly better bound but took ~4x longer
    # (benchmarks/defaults.py; docs/results.md and docs/notes.md, "Core defaults on untuned tasks"); so this task
    # keeps the small model, for speed.
    defaults: Mapping[str, Any] = dict(
        layers=3, heads=4, width=96, embed_dim=64, batch_size=16, lr=2e-3, warmup=30, steps=1500, ema_cm=0.9,
        positions="rotary", evidence=True, ckpt_every=250, log_every=25, sample_steps=100, n_samples=8,
        eval_batches=1)
    settings = (
        Setting("path", "", "the text: a UTF-8 file, a folder (searched recursively) or a glob; each file is split "
                "contiguously into train / valid / test"),
        Setting("seq_len", 256, "tokens per chunk (characters or BPE pieces); chunks do not overlap", low=1),
        Setting("test_frac", 0.05, "fraction of each file for test, and as much for valid",
                low=0, low_open=True, high=0.5, high_open=True),
        Setting("lowercase", False, "lowercase the text"),
        Setting("clean", False, "fold the text text8-style to a-z and single spaces (overrides lowercase)"),
        Setting("alphabet", "", "the characters of the vocabulary (text8 = a-z and space); \"\" = every character "
                "of the training split; the resolved alphabet is stored with the checkpoint"),
        Setting("unknown", "replace", "characters outside the alphabet: replace (by U+FFFD, one extra id) | drop",
                choices=("replace", "drop")),
        Setting("tokenizer", "chars", "chars: one id per character of the alphabet | sentencepiece: a BPE model "
                "trained on the training split", choices=TOKENIZERS),
        Setting("spm_proto", "", "the BPE model, serialised and base64-encoded; \"\" = trained (or found in "
                "cache_dir) at setup; the resolved model is stored with the checkpoint"),
        Setting("bpe_vocab", 1000, "pieces of the BPE model (tokenizer=sentencepiece)", low=2),
        Setting("cache_dir", "", "where trained BPE models are cached; \"\" = $XDG_CACHE_HOME/catdiff/text-file, "
                "else ~/.cache/catdiff/text-file", mutable=True),
        *with_defaults(BPC_SETTINGS, bpc_draws=1),
    )  # a resume must match all but cache_dir and the bpc ones (and the vocabulary)
    description = "any UTF-8 text file, folder or glob (--set path=...), characters or BPE, bits per character"

    def __init__(self):
        super().__init__()
        self._raw: dict[str, str] | None = None
        self.bpe_cache_path: Path | None = None  # where setup found or put the BPE model

    # ------------------------------------------------------------- setup: options and vocabulary
    def setup(self, cfg) -> None:
        super().setup(cfg)
        self._raw = self._splits = None
        self.seq_len = int(self.option("seq_len"))
        unknown = self.option("unknown")
        alphabet = ALPHABET_PRESETS.get(self.option("alphabet"), self.option("alphabet"))
        if not alphabet:
            alphabet = derive_alphabet(self.raw_splits()["train"])
        alphabet = finish_alphabet(alphabet, unknown)
        cfg.options["alphabet"] = alphabet
        self.chars = CharVocab(alphabet)
        if self.option("tokenizer") == "chars":
            self.tokenizer = self.chars
        else:
            proto = self.option("spm_proto") or base64.b64encode(self._bpe_model()).decode("ascii")
            cfg.options["spm_proto"] = proto
            self.tokenizer = BpeVocab(base64.b64decode(proto))
        self.vocab_size = self.tokenizer.vocab_size

    def _bpe_model(self) -> bytes:
        """The BPE model for the training split and the settings: from the cache, else trained and cached."""
        train = self.split_texts()["train"]
        settings = {"format": BPE_FORMAT, "bpe_vocab": self.option("bpe_vocab"), "unknown": self.option("unknown"),
                    "alphabet": self.chars.alphabet}
        key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode() + train.encode()).hexdigest()[:16]
        path = cache_root(self.option("cache_dir")) / f"spm-{key}.model"
        self.bpe_cache_path = path
        if path.is_file():
            cached = path.read_bytes()
            if load_proto(cached) is not None:
                return cached
            print(f"catdiff: the cached BPE model {path} is damaged; training it again", file=sys.stderr)
        proto = train_bpe(train, int(self.option("bpe_vocab")), self.option("unknown"))
        write_atomic(proto, path, "BPE model", CACHE_HINT)
        return proto

    # ------------------------------------------------------------- data
    def raw_splits(self) -> dict[str, str]:
        """Train/valid/test texts after ``clean`` / ``lowercase``, before the vocabulary's mapping."""
        if self._raw is None:
            spec = self.option("path")
            splits = sources.read_split(sources.find_files(spec), float(self.option("test_frac")), spec)
            if self.option("clean"):
                splits = {k: clean_text(v) for k, v in splits.items()}
            elif self.option("lowercase"):
                splits = {k: v.lower() for k, v in splits.items()}
            self._raw = splits
        return self._raw

    def split_texts(self) -> dict[str, str]:
        """The texts as modelled: characters outside the alphabet replaced or dropped."""
        if self._splits is None:
            alphabet, unknown = self.chars.alphabet, self.option("unknown")
            self._splits = {k: restrict(v, alphabet, unknown) for k, v in self.raw_splits().items()}
        return self._splits

    def load(self, split: str) -> TokenData:
        if split not in corpus.SPLITS:
            raise ValueError(f"task {self.name!r} has splits {corpus.SPLITS}, not {split!r}")
        ids = self.tokenizer.encode(self.split_texts()[split])
        if ids.numel() < self.seq_len:
            raise UserError(
                f"text-file input {self.option('path')}: the {split} split ({self.option('test_frac'):g} of each file "
                f"for valid and test) holds {ids.numel()} tokens, shorter than one chunk of seq_len={self.seq_len}; "
                "give more text, or lower seq_len, or raise test_frac")
        return TokenData(corpus.chunk(ids, self.seq_len))

    # ------------------------------------------------------------- evaluation
    def bits_per_character(self, ctx, split: str = "test") -> dict[str, float]:
        """Bits per token of the first ``bpc_chunks`` (0 = all) chunks of ``split`` from the bound,
        and bits per character = bits per token * tokens / characters of exactly those chunks."""
        draws, chunks = int(self.option("bpc_draws")), int(self.option("bpc_chunks"))
        data = ctx.data(split)
        want = min(len(data), chunks) if chunks > 0 else len(data)
        batch = min(128, want)
        batches = math.ceil(want / batch)
        n = min(len(data), batches * batch)  # the rows Engine.likelihood evaluates
        res = ctx.likelihood(split, batches=batches, batch_size=batch, draws=draws)
        tokens = n * self.seq_len
        chars = int(self.tokenizer.char_counts(data.tokens[:n].cpu()).sum())
        ratio = tokens / chars
        bpt, bpt_se = res["nll_bound_bits_per_token"], res["nll_bound_bits_per_token_se"]
        return {"bpc": bpt * ratio, "bpc_se": bpt_se * ratio, "bits_per_token": bpt, "bits_per_token_se": bpt_se,
                "bpc_tokens": float(tokens), "bpc_characters": float(chars), "bpc_chunks": float(n),
                "bpc_draws": float(draws)}

    def save_samples(self, tokens: torch.Tensor, labels, out_dir: Path) -> list[Path]:
        """``samples.txt``: each decoded sample under a ``=== sample i ===`` line (samples may
        hold newlines and blank lines of their own); the first three are printed."""
        texts = [self.tokenizer.decode(row) for row in torch.as_tensor(tokens).cpu()]
        path = Path(out_dir) / "samples.txt"
        write_atomic("".join(f"=== sample {i} ===\n{t}\n" for i, t in enumerate(texts)).encode("utf-8"), path, "samples")
        for i, t in enumerate(texts[:3]):
            print(f"sample {i}: {t!r}")
        return [path]

    # ------------------------------------------------------------- infilling
    def parse_prompt(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A template of ``seq_len`` tokens: literal text is kept fixed (encoded with the task's
        vocabulary, after the same ``clean`` / ``lowercase`` / unknown-character mapping), ``_``
        is one token to generate, one ``*`` as many as fill ``seq_len``; without ``*`` the
        template is padded with free tokens at the end (TextTask's notation; with BPE a ``_``
        is one piece, not one character). ``"blessed is the man *the lord"``."""
        if text.count(FILL) > 1:
            raise UserError(f"--prompt may hold at most one {FILL!r}, got {text.count(FILL)}")
        known, mask, fill_at = [], [], None
        for piece in re.findall(r"\*|_+|[^_*]+", text):
            if piece == FILL:
                fill_at = len(known)
            elif piece[0] == FREE:
                known += [0] * len(piece)
                mask += [False] * len(piece)
            else:
                if self.option("clean"):
                    piece = clean_text(piece)
                elif self.option("lowercase"):
                    piece = piece.lower()
                ids = self.tokenizer.encode(restrict(piece, self.chars.alphabet, self.option("unknown"))).tolist()
                known += ids
                mask += [True] * len(ids)
        if len(known) > self.seq_len:
            raise UserError(f"--prompt spans {len(known)} tokens, more than seq_len={self.seq_len}")
        pad = self.seq_len - len(known)
        at = len(known) if fill_at is None else fill_at
        known[at:at] = [0] * pad
        mask[at:at] = [False] * pad
        return torch.tensor(known, dtype=torch.long), torch.tensor(mask)

    # ------------------------------------------------------------- preparation
    def prepare(self, args) -> None:
        """``catdiff prepare text-file --set path=... --set tokenizer=sentencepiece``: setup has
        trained (or found) the BPE model; say where it is and how large the vocabulary is."""
        if self.option("tokenizer") == "chars":
            print(f"text-file: {self.vocab_size} characters {self.chars.alphabet!r}, derived at run time; "
                  "nothing to prepare")
            return
        where = self.bpe_cache_path
        print(f"text-file: sentencepiece BPE of {self.vocab_size} ids (with the newline id)"
              + (f", cached at {where}" if where else ", given as spm_proto"))

