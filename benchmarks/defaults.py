"""Do the core defaults work on a task nobody tuned? The untuned tasks against their tuned arms.

    python -m benchmarks.defaults [--steps 1300] [--seeds 0 1 2] [--tasks words digits text-chars text-bpe]
    python -m benchmarks.defaults --arms core --core positions=sinusoidal   # try a candidate default
    python -m benchmarks.defaults --tasks digits --seeds 1 --append rows.jsonl   # parallel jobs, then:
    python -m benchmarks.defaults --table rows.jsonl
    python -m benchmarks.defaults --quick                                    # a tiny model: a check

For each task, two runs at the same budget: **core**, a task that declares only its data,
``vocab_size`` and ``seq_len`` (every other key at the ``catdiff.run.config.Config`` default), and
**tuned**, the task's own defaults. Printed per task: the likelihood bound in bits per token
(on the same test rows for both: ``--eval-batches`` x 128; mean ± std over seeds, or ± the
standard error over the rows for one seed) of both, the unigram entropy of the training tokens
beside it (what a model without context reaches), and what the samples are worth
(``SAMPLE_QUALITY``): FID on digits, the share of real words among the distinct sampled words on
words, the share of sampled words that occur in the training text on text (beside the same share
for real test text, the ceiling). Tasks (all offline):

  words       12-letter slots of the distinct words of /usr/share/common-licenses (a-z + space)
  digits      sklearn digits, 64 grey-level tokens (catdiff-vision)
  text-chars  text-file on /usr/share/common-licenses, characters, chunks of 64
  text-bpe    the same text as 500 sentencepiece pieces, chunks of 64
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path

import torch

from benchmarks.harness import QUICK_SETS, append_jsonl, quick, quick_argument, read_jsonl, train
from catdiff.api.hooks import registry
from catdiff.api.task import Task, TokenData
from catdiff.run.config import for_task
from catdiff.run.engine import Engine

LICENSES = Path("/usr/share/common-licenses")
ALPHABET = "abcdefghijklmnopqrstuvwxyz "
# the settings every first-party small task overrides: the "tuned" arm of `words`
SMALL = dict(lr=2e-3, warmup=20, ema_cm=0.9, embed_dim=16, drop_l0=0.5, layers=2, width=64)
# what the samples are worth beside the bound: FID (digits), the share of sampled words that are
# real (words), the share of sampled words found in the training text, and of real test text (text)
SAMPLE_QUALITY = ("fid_digits_classifier", "real_word_frac", "sample_word_known_frac", "test_word_known_frac")
BUDGET = ("steps", "threads", "seed", "n_samples", "sample_steps", "log_every", "ckpt_every", "eval_batches")


class Words(Task):
    """Distinct words (3-12 letters) of the Debian licenses, space-padded to 12; 10% held out."""

    name, vocab_size, seq_len = "words", 27, 12
    defaults = SMALL

    def __init__(self):
        text = " ".join(p.read_text(errors="ignore") for p in sorted(LICENSES.glob("*")) if p.is_file())
        self.words = sorted({w for w in re.findall(r"[a-z]+", text.lower()) if 3 <= len(w) <= 12})
        ids = torch.tensor([[ALPHABET.index(c) for c in w.ljust(12)] for w in self.words])
        perm = torch.randperm(len(ids), generator=torch.Generator().manual_seed(0))
        self.split = {"test": ids[perm[: len(ids) // 10]], "train": ids[perm[len(ids) // 10 :]]}

    def load(self, split):
        return TokenData(self.split[split])

    def evaluate(self, tokens, labels, out_dir):
        made = {"".join(ALPHABET[i] for i in row).strip() for row in tokens.tolist()}
        return {"real_word_frac": len(made & set(self.words)) / max(1, len(made))}


def make(task: str):
    """(task instance, its options) for a task name of this benchmark."""
    if task == "words":
        return Words(), {}
    if task == "digits":
        return registry().get("tasks", "digits").factory(), {}
    options = {"path": str(LICENSES), "seq_len": 64}
    if task == "text-bpe":
        options.update(tokenizer="sentencepiece", bpe_vocab=500)
    return registry().get("tasks", "text-file").factory(), options


def bare(task: Task) -> Task:
    """The same task declaring nothing but its data: no ``defaults``."""
    task.defaults = {}
    return task


def unigram_bits(eng: Engine) -> float:
    tokens = eng.data("train").tokens.flatten().cpu()
    p = torch.bincount(tokens, minlength=eng.task.vocab_size).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log2()).sum())


def run(task: str, arm: str, seed: int, args) -> dict:
    instance, options = make(task)
    extra = {}
    if arm == "core":
        instance, extra = bare(instance), dict(args.core)
    # the same test rows for both arms: eval_batches x 128 (Engine.likelihood)
    budget = dict(steps=args.steps, threads=args.threads, seed=seed, n_samples=args.samples, sample_steps=50,
                  log_every=max(1, args.steps // 4), ckpt_every=10**9, eval_batches=args.eval_batches)
    if args.quick:  # the tiny model in both arms (so not in "changed"), 4 sampling steps
        budget = {**QUICK_SETS, **budget, "sample_steps": QUICK_SETS["sample_steps"]}
    t0 = time.perf_counter()
    eng = Engine(instance, **{**options, **budget, **extra})  # --core candidates win over --quick's model
    train(eng)
    metrics = eng.evaluate()
    core = for_task(bare(make(task)[0]), overrides={**options, **budget}).to_dict()  # the config alone
    keys = [k for k in metrics if k in SAMPLE_QUALITY + ("bpc",)]
    return {"task": task, "arm": arm, "seed": seed, "core": dict(args.core) if arm == "core" else {},
            "bits": metrics["nll_bound_bits_per_token"],
            "se": metrics["nll_bound_bits_per_token_se"], "unigram": unigram_bits(eng), "seconds": time.perf_counter() - t0,
            "metric": {k: metrics[k] for k in keys},
            "changed": {k: v for k, v in eng.cfg.to_dict().items() if k not in BUDGET and k != "task_options"
                        and v != core[k]}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["words", "digits", "text-chars", "text-bpe"])
    ap.add_argument("--steps", type=int, default=1300, help="the budget of every run (digits' default: 1300)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-batches", type=int, default=8, help="test rows of the bound / 128, the same for both arms")
    ap.add_argument("--arms", nargs="+", default=["core", "tuned"], choices=["core", "tuned"])
    ap.add_argument("--core", nargs="*", default=[], metavar="KEY=VALUE",
                    help="settings added to the core arm: try a candidate default before changing catdiff.run.config")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--append", help="append each row to this JSON-lines file as it is measured (for parallel jobs)")
    ap.add_argument("--table", help="print the table of the rows in this JSON-lines file; run nothing")
    quick_argument(ap)
    args = quick(ap, ap.parse_args(argv), tasks=["words", "digits"], steps=2, samples=8, eval_batches=1)
    args.core = [tuple(item.split("=", 1)) for item in args.core]
    if args.table:
        rows = read_jsonl(args.table)
        return table(rows, list(dict.fromkeys(r["task"] for r in rows)))
    rows = []
    for t in args.tasks:
        for arm in args.arms:
            for s in args.seeds:
                rows.append(run(t, arm, s, args))
                if args.append:
                    append_jsonl(args.append, rows[-1])
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print(f"\nsteps {args.steps}, seeds {args.seeds}, threads {args.threads}")
    table(rows, args.tasks)


def table(rows: list[dict], tasks: list[str]) -> None:
    """Markdown table: per task, the bound (bits per token, test) and metric of each arm; core
    rows run with different ``--core`` candidates are separate rows, labelled by them."""
    print("| task | unigram | core defaults | tuned defaults | core metric | tuned metric | tuned changes |")
    print("|---|---|---|---|---|---|---|")

    def cell(rs):
        if not rs:
            return "-"
        bits = [r["bits"] for r in rs]
        spread = f" ± {statistics.stdev(bits):.2f} (seeds)" if len(bits) > 1 else f" ± {rs[0]['se']:.2f}"
        return f"{statistics.mean(bits):.2f}{spread}"

    def metric(rs):
        if not rs:
            return "-"
        return ", ".join(f"{k} {statistics.mean(r['metric'][k] for r in rs):.3g}" for k in rs[0]["metric"])

    for task in tasks:
        tuned = [r for r in rows if r["task"] == task and r["arm"] == "tuned"]
        core = [r for r in rows if r["task"] == task and r["arm"] == "core"]
        candidates = list(dict.fromkeys(json.dumps(r.get("core", {}), sort_keys=True) for r in core)) or ["{}"]
        changes = ", ".join(f"{k}={v}" for k, v in tuned[0]["changed"].items()) if tuned else "-"
        unigram = next(r["unigram"] for r in rows if r["task"] == task)
        for cand in candidates:
            rs = [r for r in core if json.dumps(r.get("core", {}), sort_keys=True) == cand]
            label = task + "".join(f" {k}={v}" for k, v in json.loads(cand).items())
            print(f"| {label} | {unigram:.2f} | {cell(rs)} | {cell(tuned)} | {metric(rs)} | {metric(tuned)} | "
                  f"{changes} |")


if __name__ == "__main__":
    main()
