"""Sample quality of token sequences beside the bound: generative perplexity under a judge
model, and the unigram entropy of the samples.

    from catdiff.run.judge import Judge, unigram_entropy
    judge = Judge.for_engine("runs/ar/last.pt", eng)   # or Judge.load(path, expect_task=..., vocab_size=..., seq_len=...)
    judge.score(tokens)                 # {"judge_gen_ppl": ..., "judge_bits_per_token": ..., ...}
    unigram_entropy(tokens, eng.task.vocab_size)
    catdiff eval RUN --judge runs/ar/last.pt          # the same keys in metrics.json

Definitions (the choices made here):

- The **judge** is an autoregressive catdiff checkpoint (``method=ar``) of the same task: same
  task name, same vocabulary (size and, for tasks that decode ids to text, the same string
  per id) and a ``seq_len`` at least the samples' (a shorter sequence is scored as a prefix).
  Its likelihood is the AR's own exact one (``AR.token_nll``: teacher forcing on the slow EMA
  weights, under the judge's autocast, as ``Engine.likelihood`` computes it).
- **Generative perplexity** = exp(mean over all tokens of all samples of
  -log p_judge(x_i | x_<i)), the corpus-level mean (every token weighs the same; not the mean
  of per-sample perplexities). ``judge_bits_per_token`` = the same mean in bits
  (= log2 of the perplexity); on character tasks it is bits per character, comparable with a
  model's ``bpc``. ``judge_nats_per_token`` is the mean itself.
- **Unigram entropy** = the entropy in bits of each sample's empirical token distribution
  (counts / length), averaged over the samples (as MDLM, SEDD and Duo report it). Degenerate,
  repetitive samples get a low perplexity and a low entropy, so the two are read together.
- The **reference** values (suffix ``_real_test``) are the same numbers for as many rows of
  the real test split as there are samples.
"""
from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import torch

from ..api.errors import UserError

HINT = ("train one with `catdiff run TASK --set method=ar --out DIR` (the model's task, data and vocabulary "
        "settings) and pass DIR/last.pt")


def unigram_entropies(tokens, vocab_size: int) -> torch.Tensor:
    """Entropy in bits of each row's empirical token distribution, [N] (0 log 0 = 0)."""
    x = torch.as_tensor(tokens).long().cpu()
    if x.dim() != 2 or x.shape[1] == 0:
        raise ValueError(f"unigram entropy needs tokens [N, M] with M > 0, got shape {tuple(x.shape)}")
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= vocab_size):
        raise ValueError(f"token ids must lie in [0, {vocab_size - 1}], got [{int(x.min())}, {int(x.max())}]")
    ones = torch.ones_like(x, dtype=torch.float64)
    p = torch.zeros(len(x), vocab_size, dtype=torch.float64).scatter_add_(1, x, ones) / x.shape[1]
    return -(p * torch.where(p > 0, p.log2(), torch.zeros_like(p))).sum(1)


def unigram_entropy(tokens, vocab_size: int) -> float:
    """Mean over rows of :func:`unigram_entropies` (bits; see the module docstring)."""
    return unigram_entropies(tokens, vocab_size).mean().item()


def token_strings(task) -> list[str] | None:
    """Each id's text (``task.decode`` of it alone) for tasks whose ``decode`` gives strings, else None."""
    k, m = int(task.vocab_size), int(task.seq_len)
    probe = task.decode(torch.arange(m).remainder(k)[None])
    if not (isinstance(probe, list) and probe and isinstance(probe[0], str)):
        return None
    return list(task.decode(torch.arange(k)[:, None]))


class Judge:
    """An AR engine that scores token sequences by their exact likelihood (module docstring)."""

    def __init__(self, eng, path: str | Path):
        self.eng, self.path = eng, Path(path)

    @property
    def vocab_size(self) -> int:
        return int(self.eng.task.vocab_size)

    @property
    def seq_len(self) -> int:
        return int(self.eng.task.seq_len)

    @classmethod
    def load(cls, path: str | Path, expect_task: str | None = None, vocab_size: int | None = None,
             seq_len: int | None = None, vocabulary: list[str] | None = None, **overrides: Any) -> "Judge":
        """The judge in ``path`` (a checkpoint, a run directory or an export), checked: method ``ar``,
        task ``expect_task``, ``vocab_size`` ids (and ``vocabulary``, the string of each id, when
        given), a ``seq_len`` >= the given one. Each mistake is a one-line UserError.
        ``overrides``: run-level keys of the judge's engine (``device``, ``threads``, ...)."""
        from .engine import Engine

        path = Path(path)
        if not path.exists():
            raise UserError(f"judge checkpoint {path} does not exist; {HINT}")
        try:
            eng = Engine.load(path, **overrides)
        except UserError as e:  # corrupt, foreign, a plugin missing: the loader's own line, named
            raise UserError(f"judge: {e}") from None
        judge = cls(eng, path)
        judge.check(expect_task, vocab_size, seq_len, vocabulary)
        return judge

    @classmethod
    def for_engine(cls, path: str | Path, eng, **overrides: Any) -> "Judge":
        """:meth:`load` with what ``eng``'s samples need: its task, vocabulary and seq_len, its device."""
        return cls.load(path, expect_task=eng.task.name, vocab_size=eng.task.vocab_size, seq_len=eng.task.seq_len,
                        vocabulary=token_strings(eng.task), **dict({"device": eng.cfg.device}, **overrides))

    def check(self, task: str | None, vocab_size: int | None, seq_len: int | None,
              vocabulary: list[str] | None = None) -> None:
        where, cfg = f"judge {self.path}", self.eng.cfg
        if cfg.method != "ar":
            raise UserError(f"{where} was trained with method {cfg.method!r}; a judge must be autoregressive "
                            f"(method ar, whose likelihood is exact): {HINT}")
        if task is not None and self.eng.task.name != task:
            raise UserError(f"{where} was trained on task {self.eng.task.name!r}, not {task!r} (the task of the "
                            f"samples); {HINT}")
        if vocab_size is not None and self.vocab_size != vocab_size:
            raise UserError(f"{where} has vocab_size={self.vocab_size}, the samples {vocab_size}: it was trained on "
                            f"another vocabulary; {HINT}")
        if seq_len is not None and self.seq_len < seq_len:
            raise UserError(f"{where} was trained on seq_len={self.seq_len}, shorter than the samples' {seq_len}; "
                            f"train the judge with seq_len >= {seq_len}")
        if vocabulary is not None:
            mine = token_strings(self.eng.task)
            bad = next((i for i, (a, b) in enumerate(zip(mine or [], vocabulary)) if a != b), None)
            if mine is not None and bad is not None:
                raise UserError(f"{where} has another vocabulary of the same size: id {bad} is {mine[bad]!r} for "
                                f"the judge, {vocabulary[bad]!r} for the samples; {HINT}")

    # ----------------------------------------------------------------- scoring
    @torch.no_grad()
    def token_nll(self, tokens, cond=None, batch_size: int = 64) -> torch.Tensor:
        """-log p_judge(x_i | x_<i) in nats, [N, M] float64 on the CPU (the AR's ``token_nll``)."""
        eng = self.eng
        x = torch.as_tensor(tokens).long()
        if x.dim() != 2 or not 0 < x.shape[1] <= self.seq_len:
            raise UserError(f"judge {self.path} scores tokens [N, M] with 0 < M <= {self.seq_len}, got shape "
                            f"{tuple(x.shape)}")
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.vocab_size):
            raise UserError(f"judge {self.path}: token ids must lie in [0, {self.vocab_size - 1}], got "
                            f"[{int(x.min())}, {int(x.max())}]")
        if cond is None and eng.conditional:
            if not eng.task.num_classes:
                raise UserError(f"judge {self.path} is conditioned on task inputs; pass the samples' conditions")
            cond = torch.full((len(x),), eng.task.num_classes)  # the null class: the unconditional model
        out = []
        for lo in range(0, len(x), batch_size):
            xb = x[lo:lo + batch_size].to(eng.device)
            cb = None if cond is None or not eng.conditional else cond[lo:lo + batch_size].to(eng.device)
            with eng.autocast:
                out.append(eng.method.token_nll(eng.ema_eval, xb, cb).double().cpu())
        return torch.cat(out) if out else torch.zeros(0, x.shape[1], dtype=torch.float64)

    def score(self, tokens, cond=None, batch_size: int = 64) -> dict[str, float]:
        """``judge_gen_ppl``, ``judge_bits_per_token``, ``judge_nats_per_token`` of ``tokens`` [N, M]
        (the corpus-level mean over tokens; module docstring)."""
        nats = self.token_nll(tokens, cond, batch_size).mean().item()
        return {"judge_gen_ppl": math.exp(nats), "judge_bits_per_token": nats / math.log(2),
                "judge_nats_per_token": nats}

    def metrics(self, tokens, real=None, cond=None, real_cond=None) -> dict[str, float]:
        """:meth:`score` and ``unigram_entropy_bits`` of ``tokens``; with ``real`` (rows of real
        data), the same under the suffix ``_real_test``."""
        out = dict(self.score(tokens, cond), unigram_entropy_bits=unigram_entropy(tokens, self.vocab_size))
        if real is not None:
            ref = dict(self.score(real, real_cond), unigram_entropy_bits=unigram_entropy(real, self.vocab_size))
            out.update({f"{k}_real_test": v for k, v in ref.items()})
        return out

    @contextlib.contextmanager
    def judging(self, eng):
        """While inside, ``eng``'s task adds :meth:`metrics` of the scored samples (and of as many
        test rows) to what its ``evaluate`` returns, so ``Engine.evaluate`` prints and saves them."""
        task = eng.task
        own = vars(task).get("evaluate")  # an instance's own evaluate (a test's stub) is restored too
        original = task.evaluate

        def evaluate(tokens, labels, out_dir):
            metrics = dict(original(tokens, labels, out_dir))
            test = eng.data("test")
            real, real_cond = eng.rows(test, slice(0, min(len(test), len(tokens))), "test")
            metrics.update(self.metrics(tokens, real.cpu(), labels, None if real_cond is None else real_cond.cpu()))
            return metrics

        task.evaluate = evaluate
        try:
            yield self
        finally:
            if own is None:
                del task.evaluate  # the class's method again
            else:
                task.evaluate = own
