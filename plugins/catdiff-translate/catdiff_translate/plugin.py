"""catdiff hook implementations of catdiff-translate (entry point ``catdiff: translate``).

sentencepiece, sacrebleu and sacremoses are imported only when used.
"""
from catdiff.hooks import hookimpl


@hookimpl
def catdiff_tasks():
    from .ding import DingDeEn
    from .task import IWSLT14, WMT14, Translation

    return {"mt-iwslt14": IWSLT14, "mt-wmt14": WMT14, "mt-ding": DingDeEn, "translation": Translation}


@hookimpl
def catdiff_backbones():
    from .backbone import build_encdec

    return {"encdec": build_encdec}


@hookimpl
def catdiff_tokenizers():
    from .vocab import FairseqDictionary, SentencePieceVocab

    return {"sentencepiece": SentencePieceVocab, "fairseq-dict": FairseqDictionary.load}


@hookimpl
def catdiff_metrics():
    from .bleu import bleu, bleu_metric

    return {"bleu": bleu, "bleu-text": bleu_metric}
