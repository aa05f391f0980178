"""Evaluation: the likelihood bound on a split, and ``Engine.evaluate``'s metrics and files."""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

from ..api import streams
from ..api.context import RunContext
from ..api.errors import UserError, naming
from ..api.method import Method
from . import checkpoint
from .trainlog import progress


@torch.no_grad()
def likelihood(eng, split: str = "test", batches: int | None = None, batch_size: int = 128,
               draws: int = 1, seed: int | None = None) -> dict[str, float]:
    """Mean of the eq. 3 bound per token (nats and bits) on ``split``, with its standard error.

    Each sequence's bound is the mean of ``draws`` Monte-Carlo draws of (t, eps); draw j of
    every row falls in the time stratum [j/draws, (j+1)/draws), and within a stratum the
    rows of a batch take one sub-stratum each in random order (draws=1: stratified across
    rows). The standard error is that of the mean of the per-sequence estimates."""
    if draws < 1:
        raise UserError(f"likelihood draws must be >= 1, got {draws}")
    data = eng.data(split)
    seed = eng.cfg.seed if seed is None else seed
    gen = streams.generator(seed, "likelihood")
    n = min(len(data), (batches or eng.cfg.eval_batches) * batch_size)
    totals, parts = [], {}
    streams.seed_global(seed, "likelihood-noise")
    bar = progress(n, "likelihood", disable=eng.rank != 0)
    for lo in range(0, n, batch_size):
        x, cond = eng.rows(data, slice(lo, min(n, lo + batch_size)), split)
        total = torch.zeros(len(x), dtype=torch.float64)
        for j in range(draws):
            u = ((torch.arange(len(x)) + torch.rand(len(x), generator=gen)) / len(x))[torch.randperm(len(x), generator=gen)]
            with eng.autocast:
                b = eng.method.nll_bound(eng.ema_eval, x, cond, ((j + u) / draws).to(eng.device))
            total += b["total"].double().cpu() / draws
            for k, v in b.items():
                if k != "total":
                    parts[k] = parts.get(k, 0.0) + v.double().sum().item() / draws
        totals.append(total)
        bar.update(len(x))  # after the batch's work: the rate counts finished rows
    bar.close()
    tot = torch.cat(totals) / eng.task.seq_len
    nats = tot.mean().item()
    se = (tot.std() / math.sqrt(len(tot))).item() if len(tot) > 1 else float("nan")
    res = {"nll_bound_nats_per_token": nats, "nll_bound_nats_per_token_se": se,
           "nll_bound_bits_per_token": nats / math.log(2), "nll_bound_bits_per_token_se": se / math.log(2)}
    res.update({f"nll_bound_{k}_per_token": v / (len(tot) * eng.task.seq_len) for k, v in parts.items()})
    return res


def warn_if_worse_than_uniform(eng, bits: float) -> None:
    """One warning line when a trained model's bound is above a uniform guess, log2 K bits per
    token: training went wrong (a learning rate far too high, say), yet the run goes on."""
    uniform = math.log2(eng.task.vocab_size)
    trained = eng.step >= max(100, 2 * eng.cfg.warmup)  # past the warmup: early bounds are not a verdict
    if trained and eng.rank == 0 and bits > uniform + 0.05:
        print(f"catdiff: warning: after {eng.step} steps the likelihood bound is {bits:.2f} bits/token, worse than "
              f"a uniform guess ({uniform:.2f}); check lr ({eng.cfg.lr}) and the data", file=sys.stderr)


def evaluate(eng, n: int, out: Path | None, on_metrics=None) -> dict[str, float]:
    """``Engine.evaluate`` on this process, writing into ``out`` unless it is None."""
    metrics: dict[str, float] = {"step": float(eng.step)}
    if eng.method.has_bound:
        metrics.update(likelihood(eng))
        warn_if_worse_than_uniform(eng, metrics["nll_bound_bits_per_token"])
    report = None
    if type(eng.method).collapse_report is not Method.collapse_report:  # a method that diffuses embeddings
        test = eng.data("test")
        x, cond = eng.rows(test, slice(0, min(len(test), 1024)), "test")
        report = eng.method.collapse_report(eng.ema_eval, x, cond)
    if report is not None:
        metrics.update({key: v for key, v in report.items() if isinstance(v, float)})
    ctx = RunContext(eng, out, shared=eng.group.active)
    metrics.update(eng.task.model_metrics(ctx))
    t0 = time.perf_counter()
    tokens, labels = eng.task.generate(ctx, n)
    metrics["sample_seconds"] = time.perf_counter() - t0
    metrics.update(eng.task.evaluate(tokens, labels, out))
    if out is not None:
        # the settings it was measured with beside the numbers: `catdiff eval --set ...` rewrites this file
        config = {k: v for k, v in eng.cfg.to_dict().items() if k != "resume"}  # resume: how the engine was opened
        record = {**metrics, "config": {**config, "n_samples": n}}
        checkpoint.write_atomic((json.dumps(record, indent=2) + "\n").encode(), out / "metrics.json", "metrics")
    if on_metrics is not None:
        on_metrics(metrics)
    if out is not None:
        with naming(out):  # a task's write that names no file: name the directory
            eng.task.save_samples(tokens, labels, out)
            if report is not None:
                eng.task.diagnostics(report, out)
    return metrics
