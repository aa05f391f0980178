"""Vocabularies: a joint sentencepiece BPE model, and fairseq dictionaries for text that is
already split into BPE pieces with ``@@ `` continuation markers (subword-nmt, as fairseq's
``prepare-iwslt14.sh`` / ``prepare-wmt14en2de.sh`` produce) or binarized by
``fairseq-preprocess``.

Both expose ``size``, ``pad_id``, ``encode(line) -> list[int]`` and ``decode(ids) -> str``;
``decode`` drops PAD and returns the text at the level the corpus was written in (BPE
merged back, no further detokenization).
"""
from __future__ import annotations

import collections
from pathlib import Path
from typing import Iterable

from catdiff.api.errors import UserError, read_text
from catdiff.run.checkpoint import CACHE_HINT, write_atomic

# fairseq.data.Dictionary's fixed specials, in this order
FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")


def remove_bpe_markers(text: str) -> str:
    """Undo subword-nmt / fairseq BPE: ``"auf@@ gaben"`` -> ``"aufgaben"`` (fairseq's ``--remove-bpe``)."""
    return (text + " ").replace("@@ ", "").rstrip()


class SentencePieceVocab:
    """A sentencepiece model trained with pad=0, unk=1 and no bos/eos pieces (:func:`train_sentencepiece`)."""

    def __init__(self, path: str | Path):
        import sentencepiece as spm

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"sentencepiece model {self.path} not found")
        if not self.path.stat().st_size:
            raise UserError(f"sentencepiece model {self.path} is empty; delete it and train it again with "
                            f"`catdiff prepare TASK --force` (or give another spm_model)")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except RuntimeError as e:
            raise UserError(f"sentencepiece model {self.path} is damaged or not a sentencepiece model "
                            f"({str(e).strip().splitlines()[0][:200]}); train it again with `catdiff prepare TASK "
                            f"--force` (or give another spm_model)") from None
        if self.sp.get_piece_size() < 2:
            raise UserError(f"sentencepiece model {self.path} holds {self.sp.get_piece_size()} pieces; train it again "
                            f"with `catdiff prepare TASK --force`")
        self.pad_id = self.sp.pad_id()
        if self.pad_id < 0:
            raise UserError(f"{self.path} has no pad piece; train it with train_sentencepiece (pad_id=0)")
        self.size = self.sp.get_piece_size()

    def encode(self, line: str) -> list[int]:
        return self.sp.encode(line)

    def encode_all(self, lines: list[str]) -> list[list[int]]:
        return self.sp.encode(lines)

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([i for i in ids if i != self.pad_id])

    def pieces(self, line: str) -> list[str]:
        return self.sp.encode(line, out_type=str)


def train_sentencepiece(lines: Iterable[str], prefix: str | Path, vocab_size: int, seed_sentences: int = 2_000_000) -> Path:
    """Train a joint BPE model on ``lines`` (source and target text together); returns ``prefix.model``.

    pad=0, unk=1, no bos/eos (the diffusion needs neither); sentencepiece samples at most
    ``seed_sentences`` lines (``input_sentence_size``) on large corpora.
    """
    import sentencepiece as spm

    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tmp = prefix.with_name(prefix.name + ".partial")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(tmp), vocab_size=vocab_size, model_type="bpe",
        character_coverage=1.0, pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, input_sentence_size=seed_sentences,
        shuffle_input_sentence=True, num_threads=1, minloglevel=2, hard_vocab_limit=False)
    for ext in (".model", ".vocab"):  # rename last, so a half-written model is never picked up
        Path(str(tmp) + ext).replace(str(prefix) + ext)
    return Path(str(prefix) + ".model")


class FairseqDictionary:
    """fairseq's ``dict.xx.txt``: specials ``<s> <pad> </s> <unk>`` (ids 0..3), then one
    ``symbol count`` line per entry (a trailing ``#fairseq:overwrite`` flag is allowed)."""

    def __init__(self, symbols: list[str]):
        self.symbols = list(symbols)
        self.index = {s: i for i, s in enumerate(self.symbols)}
        self.bos_id, self.pad_id, self.eos_id, self.unk_id = range(4)
        self.size = len(self.symbols)

    @classmethod
    def load(cls, path: str | Path) -> "FairseqDictionary":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"fairseq dictionary {path} not found")
        symbols = list(FAIRSEQ_SPECIALS)
        for n, line in enumerate(read_text(path, "fairseq dictionary").splitlines(), 1):
            word, _, field = line.rstrip().rpartition(" ")
            overwrite = field == "#fairseq:overwrite"
            if overwrite:  # fairseq then appends the symbol again under a new id
                word, _, field = word.rpartition(" ")
            if not word or not field.lstrip("-").isdigit():
                raise UserError(f"{path}:{n}: expected 'symbol count' (fairseq dictionary format), got {line!r}")
            if word in symbols and not overwrite:
                raise UserError(f"{path}:{n}: duplicate symbol {word!r} (add '#fairseq:overwrite' to allow it)")
            symbols.append(word)
        if len(symbols) == len(FAIRSEQ_SPECIALS):
            raise UserError(f"fairseq dictionary {path} holds no symbols; give the dict.xx.txt that fairseq-preprocess "
                            f"wrote ('symbol count' lines)")
        return cls(symbols)

    @classmethod
    def build(cls, lines: Iterable[str], min_count: int = 1) -> tuple["FairseqDictionary", list[tuple[str, int]]]:
        """A dictionary of the whitespace tokens of ``lines`` (most frequent first, ties by symbol)."""
        counts = collections.Counter(tok for line in lines for tok in line.split())
        entries = sorted(((s, c) for s, c in counts.items() if c >= min_count and s not in FAIRSEQ_SPECIALS),
                         key=lambda sc: (-sc[1], sc[0]))
        return cls(list(FAIRSEQ_SPECIALS) + [s for s, _ in entries]), entries

    @staticmethod
    def save(entries: list[tuple[str, int]], path: str | Path) -> None:
        write_atomic("".join(f"{s} {c}\n" for s, c in entries).encode("utf-8"), path, "vocabulary", CACHE_HINT)

    def encode(self, line: str) -> list[int]:
        return [self.index.get(tok, self.unk_id) for tok in line.split()]

    def encode_all(self, lines: list[str]) -> list[list[int]]:
        return [self.encode(line) for line in lines]

    def decode(self, ids: Iterable[int]) -> str:
        """Symbols joined by spaces, specials dropped, ``@@ `` markers removed."""
        specials = (self.bos_id, self.pad_id, self.eos_id)
        return remove_bpe_markers(" ".join(self.symbols[i] for i in ids if i not in specials))
