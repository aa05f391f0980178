"""BLEU, both ways the literature reports it.

- ``bleu_tokenized``: corpus BLEU on word-tokenized text (Moses-tokenized references,
  hypotheses at the same level), with no further tokenization (sacrebleu
  ``tokenize="none"``) - what fairseq's ``--scoring bleu`` / ``multi-bleu.perl`` print and
  what the non-autoregressive translation tables (paper 003 Table 5) report.
- ``sacrebleu``: SacreBLEU (its ``13a`` tokenizer) on detokenized text, the comparable
  signature-stamped score.
"""
from __future__ import annotations

from functools import lru_cache


def bleu(hyps_tok: list[str], refs_tok: list[str], hyps_detok: list[str], refs_detok: list[str]) -> dict[str, float]:
    """``{"bleu_tokenized": ..., "sacrebleu": ...}`` (0..100) from one reference per hypothesis."""
    import sacrebleu

    if not (len(hyps_tok) == len(refs_tok) == len(hyps_detok) == len(refs_detok)):
        raise ValueError("bleu needs one reference per hypothesis at both levels (equal list lengths)")
    tok = sacrebleu.corpus_bleu(hyps_tok, [refs_tok], tokenize="none", force=True)  # tokenized on purpose
    sacre = sacrebleu.corpus_bleu(hyps_detok, [refs_detok])
    return {"bleu_tokenized": tok.score, "sacrebleu": sacre.score}


@lru_cache(maxsize=4)
def _moses(lang: str):
    from sacremoses import MosesDetokenizer, MosesTokenizer

    return MosesTokenizer(lang), MosesDetokenizer(lang)


def moses_tokenize(lines: list[str], lang: str) -> list[str]:
    """Moses word tokenization (no XML escaping), the level tokenized BLEU is computed at."""
    tok = _moses(lang)[0]
    return [tok.tokenize(line, escape=False, return_str=True) for line in lines]


def moses_detokenize(lines: list[str], lang: str) -> list[str]:
    """Moses detokenization (also unescapes ``&apos;`` etc. of escaped tokenized corpora)."""
    detok = _moses(lang)[1]
    return [detok.detokenize(line.split()) for line in lines]


def bleu_metric(hyps: list[str], refs: list[str], lang: str, tokenized: bool) -> dict[str, float]:
    """BLEU of hypotheses/references given at the corpus's level: Moses-tokenized
    (``tokenized=True``, e.g. fairseq's IWSLT14/WMT14 preparation) or raw text."""
    if tokenized:
        return bleu(hyps, refs, moses_detokenize(hyps, lang), moses_detokenize(refs, lang))
    return bleu(moses_tokenize(hyps, lang), moses_tokenize(refs, lang), hyps, refs)
