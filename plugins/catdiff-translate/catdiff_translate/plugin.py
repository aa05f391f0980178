"""catdiff hook implementations of catdiff-translate (entry point ``catdiff: translate``).

Components are named by reference (``Lazy``), imported on first use: loading or listing the
plugin imports neither torch nor sentencepiece, sacrebleu, sacremoses. The task descriptions
repeat the classes' own (a test keeps them equal).
"""
from catdiff.hooks import Lazy, hookimpl

T = "catdiff_translate."


@hookimpl
def catdiff_tasks():
    return {
        "mt-iwslt14": Lazy(T + "task:IWSLT14", "IWSLT14 German->English (fairseq prepare-iwslt14.sh layout; "
                           "data_dir or $CATDIFF_IWSLT14)"),
        "mt-wmt14": Lazy(T + "task:WMT14", "WMT14 English->German (fairseq prepare-wmt14en2de.sh layout; "
                         "data_dir or $CATDIFF_WMT14)"),
        "mt-ding": Lazy(T + "ding:DingDeEn", "German->English example sentences of the Ding dictionary "
                        "(Debian trans-de-en), CPU-sized"),
        "translation": Lazy(T + "task:Translation", "any language pair, plain-text layout: --set data_dir=DIR "
                            "--set src=de --set tgt=en"),
    }


@hookimpl
def catdiff_backbones():
    return {"encdec": Lazy(T + "backbone:build_encdec")}


@hookimpl
def catdiff_tokenizers():
    return {"sentencepiece": Lazy(T + "vocab:SentencePieceVocab"), "fairseq-dict": Lazy(T + "vocab:FairseqDictionary.load")}


@hookimpl
def catdiff_metrics():
    return {"bleu": Lazy(T + "bleu:bleu"), "bleu-text": Lazy(T + "bleu:bleu_metric")}
