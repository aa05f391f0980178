"""catdiff hook implementations of catdiff-translate (entry point ``catdiff: translate``).

Components are named by reference (``Lazy``), imported on first use: loading or listing the
plugin imports neither torch nor sentencepiece, sacrebleu, sacremoses; ``catdiff list`` reads a
task's description from its class's source.
"""
from catdiff.api.hooks import Lazy, hookimpl

T = "catdiff_translate."


@hookimpl
def catdiff_tasks():
    return {"mt-iwslt14": Lazy(T + "task:IWSLT14"), "mt-wmt14": Lazy(T + "task:WMT14"),
            "mt-ding": Lazy(T + "ding:DingDeEn"), "translation": Lazy(T + "task:Translation")}


@hookimpl
def catdiff_backbones():
    return {"encdec": Lazy(T + "backbone:build_encdec")}


@hookimpl
def catdiff_tokenizers():
    return {"sentencepiece": Lazy(T + "vocab:SentencePieceVocab"), "fairseq-dict": Lazy(T + "vocab:FairseqDictionary.load")}


@hookimpl
def catdiff_metrics():
    return {"bleu": Lazy(T + "bleu:bleu"), "bleu-text": Lazy(T + "bleu:bleu_metric")}
