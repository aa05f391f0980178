"""The text8 character alphabet: ``a``..``z`` are ids 0..25, space is id 26 (K = 27).

Cleaning (:func:`clean_text`, text8 style): Unicode NFKD with combining marks removed
(``é`` -> ``e``), lowercase, then every run of characters outside a-z (digits,
punctuation, newlines, other scripts, ``æ``, ...) becomes one space. Leading and trailing
spaces are kept, so cleaning a concatenation equals concatenating the cleaned parts up to
the spaces at the seams. Unlike Mahoney's ``wikifil.pl`` digits are not spelled out.
"""
from __future__ import annotations

import re
import unicodedata

import numpy as np
import torch

from catdiff.api.errors import UserError

ALPHABET = "abcdefghijklmnopqrstuvwxyz "
_INDEX = {c: i for i, c in enumerate(ALPHABET)}
_OTHER = re.compile(r"[^a-z]+")
_LUT = np.full(256, 255, dtype=np.uint8)  # byte -> id, 255 = not in the alphabet
for _c, _i in _INDEX.items():
    _LUT[ord(_c)] = _i


def clean_text(text: str) -> str:
    """text8-style cleaning: fold accents, lowercase, runs of anything but a-z to one space."""
    folded = unicodedata.normalize("NFKD", text)
    folded = "".join(c for c in folded if not unicodedata.combining(c))
    return _OTHER.sub(" ", folded.lower())


class CharTokenizer:
    """Characters of the text8 alphabet <-> token ids (see the module docstring)."""

    alphabet = ALPHABET
    vocab_size = len(ALPHABET)
    space_id = _INDEX[" "]

    def encode(self, text: str, clean: bool = False) -> torch.Tensor:
        """``text`` -> LongTensor [len]. Characters outside a-z and space raise UserError
        unless ``clean=True``, which applies :func:`clean_text` first (changing the length)."""
        if clean:
            text = clean_text(text)
        ids = _LUT[np.frombuffer(text.encode("utf-8"), dtype=np.uint8)]  # vectorised: text8 is 100M chars
        if (ids == 255).any():
            pos = next(i for i, c in enumerate(text) if c not in _INDEX)
            raise UserError(
                f"character {text[pos]!r} at position {pos} is not in the text8 alphabet (a-z and space); "
                "pass clean=True to lowercase it or turn runs of other characters into one space")
        return torch.from_numpy(ids.astype(np.int64))

    def decode(self, tokens) -> str:
        """Token ids (any iterable of ints in 0..26) -> string."""
        tokens = torch.as_tensor(tokens).flatten().tolist()
        bad = [t for t in tokens if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} outside [0, {self.vocab_size - 1}] of the text8 alphabet")
        return "".join(ALPHABET[t] for t in tokens)
