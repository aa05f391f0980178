"""``mt-ding``: German->English example sentences of the Ding dictionary, small enough for CPU.

The pairs come from Debian's ``trans-de-en`` file (``/usr/share/trans/de-en``, GPL v2+,
(c) Frank Richter, TU Chemnitz), read at run time and never copied into this repository
(``apt install trans-de-en``; option ``ding_file`` or ``$CATDIFF_DING`` for another path).
:func:`catdiff_translate.data.ding_pairs` keeps sentence pairs (not headwords); a hash of the
German sentence splits them deterministically (``test_percent`` % test, as many valid).
A joint sentencepiece BPE model (``bpe_vocab`` pieces) is trained on the train split at
first use and cached. Raw text: tokenized BLEU Moses-tokenizes both sides first.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

from catdiff.api.errors import UserError
from catdiff.api.settings import Setting, with_defaults

from .data import DING_FILE, ding_pairs, hash_split
from .task import COMMON_SETTINGS, TranslationTask, cache_root
from .vocab import SentencePieceVocab, train_sentencepiece


@lru_cache(maxsize=2)
def _splits(path: str, min_words: int, max_words: int, test_percent: int):
    return hash_split(ding_pairs(Path(path), min_words, max_words), test_percent)


# the translation settings that mean something else here (the pairs come from ding_file)
DING_CHANGES = {
    "data_dir": dict(doc="not read by mt-ding: its pairs come from ding_file"),
    "data_bin": dict(doc="must stay \"\" for mt-ding: its pairs come from ding_file"),
    "bpe": dict(doc="sentencepiece: a joint BPE model trained on the training pairs (the only vocabulary here)",
                choices=("sentencepiece",)),
}


class DingDeEn(TranslationTask):
    name = "mt-ding"
    description = "German->English example sentences of the Ding dictionary (Debian trans-de-en), CPU-sized"
    src_lang, tgt_lang = "de", "en"
    settings = (
        *(replace(s, **DING_CHANGES[s.name]) if s.name in DING_CHANGES else s
          for s in with_defaults(COMMON_SETTINGS, bpe="sentencepiece", bpe_vocab=2000, text="raw", max_len=24)),
        Setting("ding_file", "", "the Ding dictionary ('german :: english' lines); \"\" = $CATDIFF_DING, else "
                f"Debian trans-de-en's {DING_FILE}"),
        Setting("min_words", 3, "fewest words of a kept sentence (each side)", low=1),
        Setting("max_words", 12, "most words of a kept sentence (each side)", low=1),
        Setting("test_percent", 4, "percent of the pairs for test (by a hash of the German sentence), as many for "
                "valid", low=1, high=50),
    )
    # 600 steps (~3.5 epochs) fit the "minutes on CPU" budget.
    # ema_cm 0.9, not the paper's 0.99 (a teacher lagging ~100 of 600 steps): a better BLEU and a
    # far lower bound (docs/notes.md, "Task defaults: the CM teacher's EMA").
    defaults = dict(backbone="encdec", layers=2, width=128, heads=4, mlp_ratio=2.0, dropout=0.1, embed_dim=64,
                    batch_size=64, lr=1e-3, warmup=100, steps=600, ema_cm=0.9, log_every=50, ckpt_every=300,
                    positions="sinusoidal",  # what its settings were measured with
                    sample_steps=20, n_samples=10**7, eval_batches=4,
                    evidence=False)  # it lowers the bound but halves BLEU (notes.md, "mt-ding: what did not help")

    def ding_file(self) -> Path:
        path = Path(self.option("ding_file") or os.environ.get("CATDIFF_DING") or DING_FILE).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"task {self.name} reads the Ding dictionary from {path}: install Debian's "
                                    f"trans-de-en package (apt install trans-de-en), or pass --set ding_file=PATH "
                                    f"(or $CATDIFF_DING) to a file of 'german :: english' lines")
        return path

    def splits(self):
        return _splits(str(self.ding_file()), int(self.option("min_words")), int(self.option("max_words")),
                       int(self.option("test_percent")))

    def pairs(self, split):
        pairs = self.splits()[split]
        return [a for a, _ in pairs], [b for _, b in pairs]

    def cache_dir(self) -> Path:
        f = self.ding_file()
        settings = "|".join(str(self.option(k)) for k in ("min_words", "max_words", "test_percent", "bpe_vocab"))
        key = hashlib.sha1(f"{f.resolve()}|{f.stat().st_size}|{settings}".encode()).hexdigest()[:10]
        return cache_root() / f"{self.name}-{key}"

    def bpe_mode(self) -> str:
        if self.option("bpe") != "sentencepiece" or self.option("data_bin"):
            raise UserError(f"task {self.name} uses sentencepiece BPE on the Ding text (bpe=sentencepiece, no data_bin)")
        return "sentencepiece"

    def bpe_training_text(self) -> list[str]:
        src, tgt = self.pairs("train")
        return src + tgt

    def _load_vocabs(self):
        path = self.spm_path()
        if not path.is_file():  # first use: train on the train split (a second or so)
            train_sentencepiece(self.bpe_training_text(), path.with_suffix(""), int(self.option("bpe_vocab")))
        v = SentencePieceVocab(path)
        return v, v
