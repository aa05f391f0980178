"""Translation tasks: source sentence -> target sentence with CATDM (paper 003 sec. 6.3).

Data model. ``TokenData.labels`` holds the source ids [N, S] (padded with ``pad_id``) and
``TokenData.tokens`` the target ids [N, M], padded with the same PAD id, which is a data
token of the target vocabulary: the diffusion learns the PAD positions too (DiffuSeq's
choice; see :mod:`catdiff_translate.backbone`), so a target's length is the number of its
non-PAD tokens. S = M = ``max_len``. Training pairs longer than that (or empty) are left
out; test pairs are truncated for the model but scored against their full references.

Decoding (``generate``). The length head proposes the top ``length_beam`` lengths per
source; for each, ``noise_beam`` samples are drawn with the positions past that length
fixed to PAD by the sampler's infilling, so the model only generates the chosen length.
The candidates are reranked by the model's own log-likelihood of its output: the negative
of the eq. 3 bound (``Method.nll_bound``, prior + L0 + L_inf, in nats over all M
positions, PAD included) averaged over ``rerank_draws`` times t_j = (j + 1/2) / R, with the
same (t, noise) draws for every candidate of a source (common random numbers), so the
comparison between candidates is not swamped by Monte-Carlo noise. L0 alone cannot rank:
at t = 0 the noise is so small that P(x | z_0) recovers any x.

Vocabularies (``bpe`` option): ``sentencepiece`` (a joint BPE model trained by ``catdiff
prepare TASK`` and cached), ``marked`` (text already split into BPE pieces with ``@@ ``
markers, as fairseq's prepare scripts write it; a joint fairseq-format dictionary of the
training text is built at first use and cached), ``auto`` (``marked`` when the training
source contains ``@@ ``, else ``sentencepiece``). With ``data_bin`` set, the fairseq
dictionaries and binarized splits of that directory are used instead of text.

The ``encdec`` backbone gets the source vocabulary size and the pad id from the task's data
spec (``data_spec().extras``: ``src_vocab``, ``pad_id``), derived from the vocabularies.

Cache: ``$CATDIFF_CACHE`` (default ``~/.cache/catdiff``) ``/translate/<task>-<key>/``,
the key hashing the data location and vocabulary settings.
"""
from __future__ import annotations

import dataclasses

import hashlib
import os
from pathlib import Path
from typing import NamedTuple

import torch

from catdiff.api.errors import UserError
from catdiff.api.settings import Setting, with_defaults
from catdiff.api.task import Task, TokenData
from catdiff.run.checkpoint import write_atomic

from .backbone import PRESETS
from .bleu import bleu_metric
from .data import TEXT_LAYOUT, check_aligned, pad_rows, read_data_bin, read_parallel
from .vocab import FairseqDictionary, SentencePieceVocab, remove_bpe_markers, train_sentencepiece


def cache_root() -> Path:
    return Path(os.environ.get("CATDIFF_CACHE") or Path.home() / ".cache" / "catdiff") / "translate"


BPE_MODES = ("auto", "sentencepiece", "marked")
TEXT_LEVELS = ("tokenized", "raw")
COMMON_SETTINGS = (
    Setting("data_dir", "", "the corpus: a directory of train / valid / test.{src,tgt}, one sentence per line (the "
            "layout of fairseq's prepare scripts); \"\" = the task's env var ($CATDIFF_IWSLT14, $CATDIFF_WMT14, "
            "$CATDIFF_TRANSLATION)"),
    Setting("data_bin", "", "a fairseq-preprocess output directory (`dict.LANG.txt` and the binarized splits, read "
            "natively; fairseq not needed), used instead of data_dir and bpe"),
    Setting("bpe", "auto", "the vocabulary: sentencepiece (a joint BPE model trained on the training split) | "
            "marked (text already in `@@ ` pieces: a joint fairseq dictionary) | auto (marked when the training "
            "source holds `@@ `, else sentencepiece)", choices=BPE_MODES),
    Setting("bpe_vocab", 10_000, "pieces of the joint sentencepiece BPE model", low=1),
    Setting("spm_model", "", "a sentencepiece model file to use; \"\" = the one trained into the cache "
            "($CATDIFF_CACHE/translate/)"),
    Setting("text", "tokenized", "the level of the corpus text: tokenized (Moses, as fairseq's scripts write it) | "
            "raw (tokenized BLEU Moses-tokenizes both sides first)", choices=TEXT_LEVELS),
    Setting("max_len", 128, "source and target tokens, S = M; longer training pairs are left out, longer test "
            "sources truncated", low=1),
    Setting("length_beam", 3, "target lengths tried per source: the length head's top ones", low=1, mutable=True),
    Setting("noise_beam", 2, "samples drawn per target length", low=1, mutable=True),
    Setting("rerank_draws", 4, "t draws of the model's likelihood bound that rerank the candidates; 0 = no "
            "reranking (one sample at the top length)", low=0, mutable=True),
)


class Corpus(NamedTuple):
    """Where a task's corpus comes from, for its "pass --set data_dir" message."""
    env_var: str = ""  # the environment variable that may name data_dir
    script: str = ""  # the fairseq script that prepares it
    subdir: str = ""  # the folder that script writes


class TranslationTask(Task):
    """Base of the translation tasks; subclasses set languages, corpus and defaults."""

    conditional = True
    src_lang = tgt_lang = ""
    corpus = Corpus()
    settings = COMMON_SETTINGS

    def __init__(self):
        self._vocabs = None
        self._refs: dict[str, list[str]] = {}
        self._stats: dict[str, float] = {}

    # ----------------------------------------------------------------- configuration
    @property
    def seq_len(self) -> int:
        return int(self.option("max_len"))

    @property
    def vocab_size(self) -> int:
        return self.vocabs()[1].size

    def setup(self, cfg) -> None:
        super().setup(cfg)
        self._vocabs = None
        try:
            src, tgt = self.vocabs()
        except FileNotFoundError:
            return  # `catdiff prepare` creates it; anything else fails on vocab_size with the message
        if src.pad_id != tgt.pad_id:
            raise UserError(f"source and target vocabularies have different pad ids ({src.pad_id}, {tgt.pad_id})")

    def data_spec(self):
        """The base spec plus what the encdec backbone needs: ``src_vocab`` and ``pad_id``."""
        spec = super().data_spec()  # vocab_size raises the "run prepare first" error when absent
        src, tgt = self.vocabs()
        return dataclasses.replace(spec, extras={"src_vocab": src.size, "pad_id": tgt.pad_id})

    def data_dir(self) -> Path:
        value = self.option("data_dir") or os.environ.get(self.corpus.env_var, "")
        layout = TEXT_LAYOUT.format(src=self.src_lang, tgt=self.tgt_lang, script=self.corpus.script,
                                    subdir=self.corpus.subdir)
        if not value:
            raise FileNotFoundError(f"task {self.name} needs its corpus: pass --set data_dir=DIR (or set "
                                    f"${self.corpus.env_var}) "
                                    f"to {layout}")
        path = Path(value).expanduser()
        missing = [f"{s}.{lang}" for s in ("train", "test") for lang in (self.src_lang, self.tgt_lang)
                   if not (path / f"{s}.{lang}").is_file()]
        if missing:
            raise FileNotFoundError(f"task {self.name}: {path} lacks {', '.join(missing)}; data_dir must be {layout}")
        return path

    def cache_dir(self) -> Path:
        where = self.option("data_bin") or str(self.data_dir().resolve())
        key = hashlib.sha1(f"{where}|{self.option('bpe_vocab')}".encode()).hexdigest()[:10]
        return cache_root() / f"{self.name}-{key}"

    def bpe_mode(self) -> str:
        mode = self.option("bpe")
        if mode == "auto":
            with open(self.data_dir() / f"train.{self.src_lang}", encoding="utf-8", errors="replace") as f:  # a sniff
                head = [line for _, line in zip(range(10_000), f)]
            mode = "marked" if any("@@ " in line for line in head) else "sentencepiece"
        return mode

    def spm_path(self) -> Path:
        return Path(self.option("spm_model")).expanduser() if self.option("spm_model") else self.cache_dir() / "spm.model"

    def vocabs(self):
        """(source vocabulary, target vocabulary), loaded once per setup."""
        if self._vocabs is None:
            self._vocabs = self._load_vocabs()
        return self._vocabs

    def _load_vocabs(self):
        if self.option("data_bin"):
            root = Path(self.option("data_bin")).expanduser()
            return tuple(FairseqDictionary.load(root / f"dict.{lang}.txt") for lang in (self.src_lang, self.tgt_lang))
        if self.bpe_mode() == "marked":
            path = self.cache_dir() / "dict.txt"
            if not path.is_file():
                self._build_dictionary(path)
            d = FairseqDictionary.load(path)
            return d, d
        path = self.spm_path()
        if not path.is_file():
            check_aligned(self.data_dir(), self.src_lang, self.tgt_lang)  # a broken corpus first: prepare needs it
            raise FileNotFoundError(f"task {self.name}: sentencepiece model {path} not found; train it with "
                                    f"`catdiff prepare {self.name}` (same --set options as the run)")
        v = SentencePieceVocab(path)
        return v, v

    def _build_dictionary(self, path: Path) -> None:
        src, tgt = read_parallel(self.data_dir(), "train", self.src_lang, self.tgt_lang)
        _, entries = FairseqDictionary.build(src + tgt)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")
        FairseqDictionary.save(entries, tmp)
        tmp.replace(path)

    # ----------------------------------------------------------------- preparation
    def prepare_arguments(self, parser) -> None:
        parser.add_argument("--force", action="store_true", help="retrain even if the model exists")

    def prepare(self, args) -> None:
        if self.option("data_bin"):
            print(f"data_bin {self.option('data_bin')}: fairseq dictionaries are used as they are; nothing to prepare")
            return
        if self.bpe_mode() == "marked":
            path = self.cache_dir() / "dict.txt"
            if args.force or not path.is_file():
                self._build_dictionary(path)
            print(f"text carries '@@ ' BPE markers; joint dictionary: {path}")
            return
        path = self.spm_path()
        if path.is_file() and not args.force:
            print(f"sentencepiece model exists: {path} (--force retrains)")
            return
        train_sentencepiece(self.bpe_training_text(), path.with_suffix(""), int(self.option("bpe_vocab")))
        print(f"trained joint sentencepiece BPE ({self.option('bpe_vocab')} pieces): {path}")

    def bpe_training_text(self) -> list[str]:
        src, tgt = read_parallel(self.data_dir(), "train", self.src_lang, self.tgt_lang)
        return src + tgt

    # ----------------------------------------------------------------- data
    def pairs(self, split: str) -> tuple[list[str], list[str]]:
        """Source and target lines of a split, as the corpus writes them."""
        return read_parallel(self.data_dir(), split, self.src_lang, self.tgt_lang)

    def load(self, split: str) -> TokenData:
        src_vocab, tgt_vocab = self.vocabs()
        if self.option("data_bin"):
            src_ids, tgt_ids = read_data_bin(Path(self.option("data_bin")).expanduser(), split,
                                             self.src_lang, self.tgt_lang)
            eos = tgt_vocab.eos_id
            src_ids = [s[:-1] if len(s) and s[-1] == eos else s for s in src_ids]
            tgt_ids = [s[:-1] if len(s) and s[-1] == eos else s for s in tgt_ids]
            refs = [tgt_vocab.decode(s) for s in tgt_ids]
        else:
            src_lines, tgt_lines = self.pairs(split)
            src_ids, tgt_ids = src_vocab.encode_all(src_lines), tgt_vocab.encode_all(tgt_lines)
            refs = [remove_bpe_markers(line) for line in tgt_lines]
        M = self.seq_len
        if split == "train":
            keep = [i for i, (s, t) in enumerate(zip(src_ids, tgt_ids)) if 0 < len(s) <= M and 0 < len(t) <= M]
            if not keep:
                raise UserError(f"task {self.name}: no training pair has 1..{M} tokens on both sides (max_len={M})")
            src_ids, tgt_ids, refs = ([x[i] for i in keep] for x in (src_ids, tgt_ids, refs))
        self._refs[split] = refs
        pad = tgt_vocab.pad_id
        return TokenData(pad_rows(tgt_ids, M, pad), pad_rows(src_ids, M, pad))

    # ----------------------------------------------------------------- decoding
    @torch.no_grad()
    def generate(self, ctx, n: int):
        """Translate the first ``n`` test sources: length beam x noise beam, reranked (see module doc)."""
        test = ctx.data("test")
        n = min(n, len(test))
        src, ref_tokens = test.labels[:n], test.tokens[:n]
        net, M = ctx.network, self.seq_len
        if not hasattr(net, "length_logits"):
            raise UserError(f"task {self.name} needs a backbone with a length head (backbone=encdec)")
        pad = net.pad_id
        k = max(1, min(int(self.option("length_beam")), M))
        d = max(1, int(self.option("noise_beam")))
        with ctx.autocast:
            top = torch.cat([net.length_logits(src[i:i + 256]) for i in range(0, n, 256)]).topk(k, -1).indices + 1
        ref_len = (ref_tokens != pad).sum(1).clamp(1, M)
        self._stats = {"length_accuracy": (top[:, 0] == ref_len).float().mean().item(),
                       f"length_top{k}_accuracy": (top == ref_len[:, None]).any(1).float().mean().item(),
                       "length_mean_abs_error": (top[:, 0] - ref_len).abs().float().mean().item()}
        # Without reranking (rerank_draws 0, or a method with no bound, e.g. maskgit) more
        # candidates would go unused: one draw at the top-1 length.
        if int(self.option("rerank_draws")) <= 0 or not ctx.has_bound:
            top, d = top[:, :1], 1
        C = top.shape[1] * d
        lengths = top.repeat_interleave(d, 1).reshape(-1)  # [n * C], source-major
        cond = src.repeat_interleave(C, 0)
        known = torch.full((n * C, M), pad, dtype=torch.long, device=src.device)
        mask = torch.arange(M, device=src.device)[None, :] >= lengths[:, None]
        cand = ctx.sample(n * C, labels=cond, known=known, known_mask=mask).view(n, C, M)
        if C == 1:
            return cand[:, 0], src.cpu()
        score = self.rerank_scores(ctx, cand, src)
        best = score.argmax(1)
        self._stats["rerank_changed_frac"] = (best != 0).float().mean().item()
        return cand[torch.arange(n), best], src.cpu()

    def rerank_scores(self, ctx, cand: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        """[n, C] estimates of log P(candidate | source): minus the eq. 3 bound, mean of R draws
        at t_j = (j + 1/2) / R with common random numbers across the C candidates."""
        n, C, _ = cand.shape
        R = int(self.option("rerank_draws"))
        scores = torch.zeros(n, C, dtype=torch.float64)
        for lo in range(0, n, 128):
            hi = min(n, lo + 128)
            for j in range(R):
                t = torch.full((hi - lo,), (j + 0.5) / R)
                seed = ctx.seed_of("rerank", step=lo * R + j)  # the same draws for every candidate
                for c in range(C):
                    b = ctx.nll_bound(cand[lo:hi, c], src[lo:hi], t, seed=seed)
                    scores[lo:hi, c] -= b["total"].double().cpu() / R
        return scores

    # ----------------------------------------------------------------- metrics and output
    def decode(self, tokens: torch.Tensor) -> list[str]:
        return self.hypotheses(tokens)

    def hypotheses(self, tokens: torch.Tensor) -> list[str]:
        tgt = self.vocabs()[1]
        return [tgt.decode(row.tolist()) for row in tokens]

    def evaluate(self, tokens, labels, out_dir) -> dict[str, float]:
        refs = self._refs.get("test")
        if refs is None:
            raise ValueError(f"task {self.name}: evaluate scores translations of the test split; load('test') first")
        hyps = self.hypotheses(tokens)
        metrics = bleu_metric(hyps, refs[: len(hyps)], self.tgt_lang, self.option("text") == "tokenized")
        metrics.update(self._stats)
        return metrics

    def save_samples(self, tokens, labels, out_dir: Path) -> list[Path]:
        """``translations.txt``: S (source), R (reference), H (hypothesis) per test sentence."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        hyps = self.hypotheses(tokens)
        lines = []
        if labels is not None and labels.dim() == 2:
            src_vocab = self.vocabs()[0]
            refs = self._refs.get("test", [])
            for i, h in enumerate(hyps):
                lines += [f"S-{i}\t{src_vocab.decode(labels[i].tolist())}"]
                lines += [f"R-{i}\t{refs[i]}"] if i < len(refs) else []
                lines += [f"H-{i}\t{h}", ""]
        else:
            lines = [f"H-{i}\t{h}" for i, h in enumerate(hyps)]
        path = out_dir / "translations.txt"
        write_atomic(("\n".join(lines) + "\n").encode("utf-8"), path, "translations")
        return [path]


BENCHMARK_DEFAULTS = dict(backbone="encdec", batch_size=128, lr=5e-4, warmup=4000, weight_decay=0.0, evidence=False,
                          positions="sinusoidal",  # fairseq's transformer
                          steps=300_000, ckpt_every=5000, log_every=200, sample_steps=20, n_samples=10**7,
                          eval_batches=16)


class IWSLT14(TranslationTask):
    name = "mt-iwslt14"
    description = "IWSLT14 German->English (fairseq prepare-iwslt14.sh layout; data_dir or $CATDIFF_IWSLT14)"
    src_lang, tgt_lang = "de", "en"
    corpus = Corpus("CATDIFF_IWSLT14", "prepare-iwslt14.sh", "iwslt14.tokenized.de-en/")
    defaults = {**BENCHMARK_DEFAULTS, **PRESETS["transformer_iwslt_de_en"]}


class WMT14(TranslationTask):
    name = "mt-wmt14"
    description = "WMT14 English->German (fairseq prepare-wmt14en2de.sh layout; data_dir or $CATDIFF_WMT14)"
    src_lang, tgt_lang = "en", "de"
    corpus = Corpus("CATDIFF_WMT14", "prepare-wmt14en2de.sh", "wmt14_en_de/")
    settings = with_defaults(COMMON_SETTINGS, bpe_vocab=32_000)
    defaults = {**BENCHMARK_DEFAULTS, **PRESETS["transformer"]}


class Translation(TranslationTask):
    """Any language pair in the plain-text layout: ``--set data_dir=DIR --set src=xx --set tgt=yy``
    reads DIR/train.xx, DIR/train.yy, DIR/test.xx, ... (tokenized text, or ``text=raw``). Its BPE
    vocabulary (sentencepiece, unless the text carries ``@@ `` markers) is trained on the training
    split at first use and cached, so a run is one command. CPU-sized defaults (mt-ding's); set
    the mt-iwslt14 sizes for a real corpus."""

    name = "translation"
    description = "any language pair, plain-text layout: --set data_dir=DIR --set src=de --set tgt=en"
    corpus = Corpus("CATDIFF_TRANSLATION", "prepare-*.sh", "or your own")
    settings = (
        *with_defaults(COMMON_SETTINGS, bpe_vocab=4000),
        Setting("src", "", "the source language: the suffix LANG of DIR/train.LANG (e.g. de)"),
        Setting("tgt", "", "the target language, another suffix (e.g. en)"),
    )
    defaults = dict(backbone="encdec", layers=2, width=128, heads=4, mlp_ratio=2.0, dropout=0.1, embed_dim=64,
                    batch_size=64, lr=1e-3, warmup=100, steps=600, ema_cm=0.9, log_every=50, ckpt_every=300,
                    positions="sinusoidal",  # what its settings were measured with
                    sample_steps=20, n_samples=10**7, eval_batches=4, evidence=False)

    def setup(self, cfg) -> None:
        self.cfg = cfg
        src, tgt = self.option("src"), self.option("tgt")
        if not src or not tgt or src == tgt:
            raise UserError("task translation needs two languages: --set src=LANG --set tgt=LANG, the suffixes of "
                            "DIR/train.LANG (e.g. src=de tgt=en), and --set data_dir=DIR")
        self.src_lang, self.tgt_lang = src, tgt
        super().setup(cfg)

    def cache_dir(self) -> Path:
        where = self.option("data_bin") or str(self.data_dir().resolve())
        key = hashlib.sha1(f"{where}|{self.src_lang}-{self.tgt_lang}|{self.option('bpe_vocab')}".encode()).hexdigest()
        return cache_root() / f"{self.name}-{key[:10]}"

    def _load_vocabs(self):
        if not self.option("data_bin") and self.bpe_mode() == "sentencepiece" and not self.spm_path().is_file():
            # first use: train on the training split (a smaller corpus gets fewer pieces, hard_vocab_limit off)
            train_sentencepiece(self.bpe_training_text(), self.spm_path().with_suffix(""), int(self.option("bpe_vocab")))
        return super()._load_vocabs()
