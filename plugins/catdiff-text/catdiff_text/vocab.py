"""Vocabularies of the ``text-file`` task: any characters, or a sentencepiece BPE model.

Characters (:class:`CharVocab`). The vocabulary is an ``alphabet`` string: id i is its i-th
character. Derived from the training split it is every character that occurs there, sorted
by code point, so the same data and options always give the same ids. Characters outside it
(in the test split, or outside an alphabet the user restricted to) are either mapped to
U+FFFD ``REPLACEMENT`` (``unknown=replace``, the default: one extra id, texts keep their
length and every character is scored) or dropped (``unknown=drop``) by :func:`restrict`.

BPE (:class:`BpeVocab`). A sentencepiece model trained on the restricted training text, one
line per sentence, with identity normalisation, no dummy prefix and extra whitespace kept,
so that decoding gives back exactly the encoded text and the characters of a piece are the
piece's characters (``▁`` is one space). Newlines are not sentencepiece pieces: each line is
encoded alone and a newline is one extra id after the model's pieces. The training
alphabet covers every character (``character_coverage=1``) and ``REPLACEMENT`` is a
user-defined piece, so after :func:`restrict` no text encodes to ``<unk>``.

Both expose ``vocab_size``, ``encode(text) -> LongTensor``, ``decode(ids) -> str`` and
``char_counts(ids)``: how many characters of the text each id stands for (1 for a
character; the piece length for BPE), which turns bits per token into bits per character.
"""
from __future__ import annotations

import io
from typing import Iterable

import numpy as np
import torch

from catdiff.api.errors import UserError

REPLACEMENT = "\ufffd"
TRAIN_LINE_CHARS = 2000  # sentencepiece skips training sentences over 4192 bytes: long lines are cut


def derive_alphabet(text: str) -> str:
    """Every character of ``text``, sorted by code point."""
    return "".join(sorted(set(text)))


def finish_alphabet(alphabet: str, unknown: str) -> str:
    """Duplicates removed (first occurrence kept), REPLACEMENT appended for ``unknown=replace``."""
    out = "".join(dict.fromkeys(alphabet))
    if unknown == "replace" and REPLACEMENT not in out:
        out += REPLACEMENT
    return out


def restrict(text: str, alphabet: str, unknown: str) -> str:
    """``text`` with characters outside ``alphabet`` replaced by REPLACEMENT or dropped."""
    outside = set(text) - set(alphabet)
    if not outside:
        return text
    to = REPLACEMENT if unknown == "replace" else None
    return text.translate({ord(c): to for c in outside})


class CharVocab:
    """Characters of ``alphabet`` <-> ids 0..len(alphabet)-1."""

    def __init__(self, alphabet: str):
        if not alphabet or len(set(alphabet)) != len(alphabet):
            raise ValueError(f"an alphabet must be non-empty without repeated characters, got {alphabet!r}")
        self.alphabet = alphabet
        self.vocab_size = len(alphabet)
        self._points = np.array([ord(c) for c in alphabet], dtype=np.int64)
        self._order = np.argsort(self._points)  # searchsorted over the sorted code points

    def encode(self, text: str) -> torch.Tensor:
        """``text`` -> LongTensor [len]; a character outside the alphabet raises ValueError."""
        points = np.frombuffer(text.encode("utf-32-le"), dtype="<u4").astype(np.int64)
        sorted_points = self._points[self._order]
        pos = np.searchsorted(sorted_points, points).clip(0, len(sorted_points) - 1)
        bad = sorted_points[pos] != points
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"character {text[i]!r} at position {i} is not in the vocabulary")
        return torch.from_numpy(self._order[pos])

    def decode(self, ids) -> str:
        ids = torch.as_tensor(ids).flatten().tolist()
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} outside [0, {self.vocab_size - 1}] of the character vocabulary")
        return "".join(self.alphabet[i] for i in ids)

    def char_counts(self, ids) -> torch.Tensor:
        return torch.ones_like(torch.as_tensor(ids), dtype=torch.long)


def train_bpe(text: str, vocab_size: int, unknown: str) -> bytes:
    """A sentencepiece BPE model (serialised) trained on the lines of ``text`` (see the module
    docstring); deterministic for the same text and settings."""
    import sentencepiece as spm

    lines = [line[i : i + TRAIN_LINE_CHARS] for line in text.split("\n") for i in range(0, len(line), TRAIN_LINE_CHARS)]
    if not lines:
        raise UserError("the training text has no characters to train a sentencepiece model on")
    spm.set_random_generator_seed(0)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size, model_type="bpe",
            character_coverage=1.0, normalization_rule_name="identity", remove_extra_whitespaces=False,
            add_dummy_prefix=False, unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
            user_defined_symbols=[REPLACEMENT] if unknown == "replace" else [], hard_vocab_limit=False,
            input_sentence_size=1_000_000, shuffle_input_sentence=True, num_threads=1, minloglevel=2)
    except RuntimeError as e:
        chars = set(text) - {"\n"} | ({REPLACEMENT} if unknown == "replace" else set())
        need = len(chars) + 1  # every character is a piece (coverage 1), plus <unk>
        why = (f"it needs at least {need} (the {len(chars)} distinct characters and <unk>)"
               if vocab_size < need else str(e))
        raise UserError(f"sentencepiece cannot train a BPE model of bpe_vocab={vocab_size} pieces on the training "
                        f"text: {why}; raise bpe_vocab or use tokenizer=chars") from None
    return model.getvalue()


def load_proto(proto: bytes):
    """A SentencePieceProcessor of the serialised model ``proto``; None when it is empty or damaged."""
    import sentencepiece as spm

    try:
        sp = spm.SentencePieceProcessor(model_proto=proto) if proto else None
    except RuntimeError:
        return None
    return sp if sp is not None and sp.get_piece_size() > 0 else None


class BpeVocab:
    """A sentencepiece model (serialised bytes, :func:`train_bpe`) plus one newline id."""

    def __init__(self, proto: bytes):
        self.sp = load_proto(proto)
        if self.sp is None:
            raise UserError(f"the BPE model ({len(proto)} bytes; option spm_proto) is empty or not a sentencepiece "
                            "model; leave spm_proto unset so the model is trained on the data")
        self.newline_id = self.sp.get_piece_size()
        self.vocab_size = self.newline_id + 1
        lengths = [0 if self.sp.is_control(i) else 1 if self.sp.is_unknown(i) else len(self.sp.id_to_piece(i))
                   for i in range(self.newline_id)]
        self._lengths = torch.tensor(lengths + [1], dtype=torch.long)

    def encode(self, text: str) -> torch.Tensor:
        ids: list[int] = []
        for i, line in enumerate(self.sp.encode(text.split("\n"))):
            if i:
                ids.append(self.newline_id)
            ids.extend(line)
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, ids: Iterable[int]) -> str:
        ids = torch.as_tensor(ids).flatten().tolist()
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} outside [0, {self.vocab_size - 1}] of the BPE vocabulary")
        lines, cur = [], []
        for i in ids:
            if i == self.newline_id:
                lines.append(cur)
                cur = []
            else:
                cur.append(i)
        return "\n".join(self.sp.decode(line) for line in lines + [cur])

    def char_counts(self, ids) -> torch.Tensor:
        return self._lengths[torch.as_tensor(ids, dtype=torch.long)]
