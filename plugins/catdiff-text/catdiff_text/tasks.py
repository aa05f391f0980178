"""Character-level text tasks: ``text8`` and ``text-tdavid``, scored in bits per character.

What BPC bounds. A test chunk x is 256 consecutive characters. The continuous-time bound of
paper 003 eq. 3,

    -log P_theta(x) <= KL(q(z_1 | x) || N(0, I)) + L0 + L_inf,
    L_inf = -1/2 E_{t ~ U(0,1), eps} [ SNR'(t) || EMB(x) - EMB_hat(z_t; t) ||^2 ],

is an upper bound on the negative log-likelihood of the *whole chunk* under the model (the
chunk modelled on its own, no context across chunk boundaries, as in D3PM / SEDD / MDLM).
BPC = (mean over test chunks of the bound, in nats) / (256 * ln 2): the per-character
average of a bound on -log2 P(chunk). The expectation over (t, eps) is estimated by
Monte Carlo (``Engine.likelihood``): ``bpc_draws`` draws per chunk, draw j in the time
stratum [j / draws, (j + 1) / draws). ``bpc_se`` is the standard error of the mean over
chunks of the per-chunk estimates (it covers both the Monte-Carlo noise and, when
``bpc_chunks`` evaluates a subset, the choice of chunks). Every chunk holds exactly 256
real characters of the split (no padding), so per token = per character.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from catdiff.api.errors import UserError
from catdiff.api.settings import Setting, with_defaults
from catdiff.api.task import Task, TokenData
from catdiff.run.checkpoint import write_atomic

from . import corpus
from .tokenizer import ALPHABET, CharTokenizer

FREE, FILL = "_", "*"
BPC_SETTINGS = (
    Setting("bpc_draws", 4, "Monte-Carlo draws of t per test chunk for bpc (stratified: draw j in [j/draws, "
            "(j+1)/draws))", low=1, mutable=True),
    Setting("bpc_chunks", 0, "test chunks the bpc is computed on (the first ones); 0 = all", low=0, mutable=True),
)


class TextTask(Task):
    """Shared by the text tasks: chunked splits, BPC, text samples, ``--prompt`` infilling.

    Subclasses implement :meth:`corpus_text` (the cleaned text of the whole corpus)."""

    vocab_size = len(ALPHABET)
    seq_len = 256
    settings = BPC_SETTINGS

    def __init__(self):
        self.tokenizer = CharTokenizer()
        self._splits: dict[str, str] | None = None

    def corpus_text(self) -> str:
        raise NotImplementedError

    def split_texts(self) -> dict[str, str]:
        """The contiguous 90/5/5 train/valid/test texts (computed once)."""
        if self._splits is None:
            self._splits = corpus.split_text(self.corpus_text())
        return self._splits

    def load(self, split: str) -> TokenData:
        if split not in corpus.SPLITS:
            raise ValueError(f"task {self.name!r} has splits {corpus.SPLITS}, not {split!r}")
        return TokenData(corpus.chunk(self.tokenizer.encode(self.split_texts()[split]), self.seq_len))

    # ------------------------------------------------------------- evaluation
    def bits_per_character(self, ctx, split: str = "test") -> dict[str, float]:
        """BPC of ``split`` from the likelihood bound (see the module docstring)."""
        draws, chunks = int(self.option("bpc_draws")), int(self.option("bpc_chunks"))
        n = len(ctx.data(split))
        n = min(n, chunks) if chunks > 0 else n
        batch = 128
        res = ctx.likelihood(split, batches=math.ceil(n / batch), batch_size=batch, draws=draws)
        return {"bpc": res["nll_bound_bits_per_token"], "bpc_se": res["nll_bound_bits_per_token_se"],
                "bpc_chunks": float(n), "bpc_draws": float(draws)}

    def model_metrics(self, ctx) -> dict[str, float]:
        """``bpc``, ``bpc_se`` (test split, see the module docstring), ``bpc_chunks``,
        ``bpc_draws``; none for a method without a likelihood bound (e.g. maskgit)."""
        return self.bits_per_character(ctx) if ctx.has_bound else {}

    def evaluate(self, tokens: torch.Tensor, labels, out_dir: Path | None) -> dict[str, float]:
        """``sample_word_known_frac``: fraction of the words of the samples (the first and last
        word of each sample dropped as possibly cut) that occur in the training split, and
        ``test_word_known_frac``, the same for as many real test chunks."""
        tokens = torch.as_tensor(tokens).cpu()
        vocab = set(self.split_texts()["train"].split())
        test = self.load("test").tokens[: len(tokens)]
        out = {}
        out["sample_word_known_frac"] = self._known_frac(tokens, vocab)
        out["test_word_known_frac"] = self._known_frac(test, vocab)
        return out

    def _known_frac(self, tokens: torch.Tensor, vocab: set[str]) -> float:
        words = [w for row in tokens for w in self.tokenizer.decode(row).split()[1:-1]]
        return sum(w in vocab for w in words) / max(1, len(words))

    def decode(self, tokens: torch.Tensor) -> list[str]:
        return [self.tokenizer.decode(row) for row in torch.as_tensor(tokens).cpu()]

    def save_samples(self, tokens: torch.Tensor, labels, out_dir: Path) -> list[Path]:
        """``samples.txt``: one decoded sample per paragraph; the first three are printed."""
        texts = [self.tokenizer.decode(row) for row in torch.as_tensor(tokens).cpu()]
        path = Path(out_dir) / "samples.txt"
        write_atomic(("\n\n".join(texts) + "\n").encode("utf-8"), path, "samples")
        for i, t in enumerate(texts[:3]):
            print(f"sample {i}: {t}")
        return [path]

    # ------------------------------------------------------------- infilling
    def parse_prompt(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A template of ``seq_len`` characters: letters and spaces are kept fixed, ``_`` marks
        one character to generate, one ``*`` stands for as many ``_`` as fill ``seq_len``;
        a template without ``*`` is padded with ``_`` at the end. Uppercase is lowercased.

        ``"in the beginning"`` (prefix), ``"*and they lived"`` (suffix), ``"the ____ of *"``."""
        text = text.lower()
        if text.count(FILL) > 1:
            raise UserError(f"--prompt may hold at most one {FILL!r}, got {text.count(FILL)}")
        fixed_len = len(text) - text.count(FILL)
        if fixed_len > self.seq_len:
            raise UserError(f"--prompt spans {fixed_len} characters, more than seq_len={self.seq_len}")
        pad = FREE * (self.seq_len - fixed_len)
        text = text.replace(FILL, pad) if FILL in text else text + pad
        mask = torch.tensor([c != FREE for c in text])
        known = self.tokenizer.encode(text.replace(FREE, " "))  # raises on characters outside the alphabet
        return torch.where(mask, known, 0), mask


class Text8Task(TextTask):
    """text8 (paper 003 sec. 6.2, app. B.2): 90M / 5M / 5M characters, chunks of 256."""

    name = "text8"
    # Paper 003 app. B.2: 12 layers, 12 heads, width 768, D = 256, batch 512, lr 3e-4,
    # 500 epochs = 500 * 351,562 train chunks / 512 = 343,000 steps.
    defaults: Mapping[str, Any] = dict(
        layers=12, heads=12, width=768, embed_dim=256, batch_size=512, lr=3e-4, warmup=2000, evidence=False,
        positions="sinusoidal",  # the paper's transformer
        steps=343_000, ckpt_every=5000, log_every=100, sample_steps=256, n_samples=16, eval_batches=1)
    settings = (
        Setting("text8_path", "", "the text8 file, text8.zip, or a directory holding one; \"\" = env CATDIFF_TEXT8"),
        *with_defaults(BPC_SETTINGS, bpc_draws=1),
    )
    description = "text8 characters (a-z, space), 90M/5M/5M, chunks of 256; needs text8(.zip)"

    def corpus_text(self) -> str:
        return corpus.read_text8(corpus.find_text8(self.option("text8_path")))


DEFAULT_SWORD_DIR = "/usr/share/sword/modules/comments/zcom/tdavid"


class TdavidTask(TextTask):
    """Spurgeon's Treasury of David (Debian ``sword-comm-tdavid``), 11.2M cleaned characters."""

    name = "text-tdavid"
    # ema_cm 0.9, not the paper's 0.99: a 0.99 CM teacher lags ~100 of 300 steps and left its bound
    # far from converged (docs/notes.md, "Task defaults: the CM teacher's EMA").
    # positions=rotary and evidence=true (both beyond the paper): with the paper's sinusoids
    # added to the input, L0's dropped characters stayed at the unigram loss for 1000+ steps
    # (no context learned); each of the two lowered BPC, both together most (docs/method.md,
    # docs/notes.md "text-tdavid: positions, evidence and other options").
    # embed_norm=sqrt(D), time_warp=train (CDCD) and l0_rows=auto (after Plaid), beyond the paper:
    # together they lowered the bound at equal time on every seed, where they left FID on the
    # image tasks within seed noise (docs/results.md, "CATDM levers at equal time").
    defaults: Mapping[str, Any] = dict(
        layers=3, heads=4, width=96, embed_dim=64, batch_size=16, lr=2e-3, warmup=30, steps=1500, ema_cm=0.9,
        positions="rotary", evidence=True, embed_norm=8.0, time_warp="train", l0_rows="auto",
        ckpt_every=250, log_every=25,
        sample_steps=100, n_samples=8, eval_batches=1)
    settings = (
        Setting("sword_dir", DEFAULT_SWORD_DIR, "the SWORD module directory holding ot.czs and ot.czz (Debian "
                "sword-comm-tdavid)"),
        Setting("cache_dir", "", "where the cleaned text is cached; \"\" = $XDG_CACHE_HOME/catdiff, else "
                "~/.cache/catdiff"),
        *with_defaults(BPC_SETTINGS, bpc_draws=1),
    )
    description = "Treasury of David prose (Debian sword-comm-tdavid), a-z and space, 90/5/5 split, chunks of 256"

    def corpus_text(self) -> str:
        module = Path(self.option("sword_dir"))
        if not (module / "ot.czs").is_file():
            raise FileNotFoundError(
                f"{module}/ot.czs not found: install the Debian package sword-comm-tdavid (`make data`) "
                "or point --set sword_dir=DIR at a directory holding ot.czs and ot.czz")
        cache = self.option("cache_dir") or os.path.join(
            os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "catdiff")
        return corpus.tdavid_text(module, Path(cache))
