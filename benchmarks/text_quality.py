"""Sample quality of text at equal training time: generative perplexity under an AR judge and
unigram entropy, per method, sampler and step count, beside the real test data's.

    python -m benchmarks.text_quality                                  # text-tdavid: judge 600 CPU-s, each method 150
    python -m benchmarks.text_quality --judge runs/ar/last.pt --methods catdm mdlm --sample-steps 16 64
    python -m benchmarks.text_quality --table text_quality.json        # reprint the table of a results file
    python -m benchmarks.text_quality --quick                          # text-file on GPL-3, tiny: a check

The judge (catdiff.run.judge) is an autoregressive model of the same task: ``--judge CKPT``, or
trained here for ``--judge-budget`` seconds of ``--clock`` and kept in ``--models`` (a rerun
loads it). Each method of ``--methods`` (compare's names and variants NAME[K=V,...]) trains for
``--budget`` seconds of the same clock (benchmarks.harness.train: the step rate probed in the
warmup sets the LR schedule's length) and is kept in ``--models`` too. Then every sampler the
method declares (``eng.method.samplers``; ``--samplers`` picks some, as compare's) draws
``--samples`` sequences at each count of ``--sample-steps`` (AR: no step count, one row per
sampler), timed on the same clock, and the judge scores them:

  gen. ppl   exp(mean over all sample tokens of -log p_judge(x_i | x_<i)); lower = more
             like the judge's idea of the text; bits/token = log2 of it (bits per
             character on character tasks)
  entropy    the mean over samples of each sample's unigram entropy in bits; degenerate,
             repetitive text scores a low perplexity and a low entropy, so read both

The "real test data" row scores as many real test rows with the same judge. Records go to
``--json`` as each (method, sampler, steps) finishes; a rerun skips the finished ones (same
task, method, seed, budget, samples and judge) unless ``--fresh``.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.compare import method_spec, sampler_arms, sampler_name
from benchmarks.harness import CLOCKS, likelihood, quick, quick_argument, train, write_json
from catdiff import Engine
from catdiff.api.hooks import registry
from catdiff.run.config import parse_sets
from catdiff.run.judge import Judge

METHODS = ["catdm", "mdlm", "udlm", "vqdiffusion"]
GPL3 = "/usr/share/common-licenses/GPL-3"


def slug(name: str) -> str:
    return re.sub(r"[^\w.=-]+", "_", name).strip("_")


def kept(path: Path, build, budget: float, clock: str, threads: int, log) -> tuple[Engine, dict]:
    """The engine saved at ``path`` (with its training record beside it), else ``build()`` trained
    for ``budget`` seconds of ``clock`` and saved there (the record first)."""
    if path.exists():
        info = json.loads(path.with_suffix(".json").read_text())
        log(f"loaded {path} ({info['steps']} steps in {info['train_s']:.0f} s {clock})")
        return Engine.from_checkpoint(path, threads=threads), info
    eng = build()
    res = train(eng, budget, clock)
    info = dict(res, steps=eng.step, budget_s=budget, clock=clock)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(info, default=str))
    eng.save(path)
    log(f"trained {path.name}: {eng.step} steps in {res['train_s']:.1f} s {clock}")
    return eng, info


def run_key(rec: dict) -> tuple:
    return (rec["task"], rec["method"], rec["seed"], rec["budget_s"], rec["samples"], rec["judge"], rec["sampler"],
            rec["sample_steps"])


def run(args, log=print) -> dict:
    sets = parse_sets(args.sets)
    tick = CLOCKS[args.clock]
    models = Path(args.models or Path(args.json).with_name(Path(args.json).stem + "_models"))
    data = {} if args.fresh or not Path(args.json).exists() else json.loads(Path(args.json).read_text())
    common = dict(sets, seed=args.seed, threads=args.threads)
    judge_path = Path(args.judge) if args.judge else models / f"judge-{slug(args.task)}-{args.judge_budget:g}s.pt"
    # one results file holds one task and one judge: records of others are dropped
    records = [r for r in data.get("records", []) if (r["task"], r["judge"]) == (args.task, str(judge_path))]
    done = {run_key(r) for r in records}

    # the judge, checked against the task's samples (vocabulary, seq_len) and scored on real data
    ref = Engine(args.task, **dict(common, steps=0))
    if not args.judge:
        kept(judge_path, lambda: Engine(args.task, **dict(common, method="ar")), args.judge_budget, args.clock,
             args.threads, log)
    judge = Judge.for_engine(judge_path, ref, threads=args.threads)
    test = ref.data("test")
    real_tokens = ref.rows(test, slice(0, min(len(test), args.samples)), "test")[0].cpu()
    real = judge.metrics(real_tokens)
    judge_info = dict(path=str(judge_path), steps=judge.eng.step, **likelihood(judge.eng))
    log(f"judge {judge_path}: {judge.eng.step} steps; real test data: gen. ppl {real['judge_gen_ppl']:.3f}, "
        f"entropy {real['unigram_entropy_bits']:.3f} bits")
    write_json(args.json, task=args.task, judge=judge_info, real=dict(real, rows=len(real_tokens)), records=records)

    for method in args.methods:
        label, train_overrides, _ = method_spec(method)
        overrides = dict(common, **train_overrides)
        base = dict(task=args.task, method=method, label=label, seed=args.seed, budget_s=args.budget,
                    samples=args.samples, judge=str(judge_path), clock=args.clock, threads=args.threads)
        probe = Engine(args.task, **dict(overrides, steps=0))  # which samplers it has; no training
        counts = [None] if probe.cfg.method == "ar" else list(args.sample_steps)
        samplers = ([o["sampler"] for _, o in sampler_arms(method, args.samplers) if "sampler" in o]
                    if args.samplers else list(probe.method.samplers))
        todo = [(s, n) for s in samplers for n in counts
                if run_key(dict(base, sampler=s, sample_steps=n)) not in done]
        del probe
        if not todo:
            log(f"{label}: every record is in {args.json}")
            continue
        path = models / f"{slug(args.task)}-{slug(method)}-seed{args.seed}-{args.budget:g}s.pt"
        eng, info = kept(path, lambda: Engine(args.task, **overrides), args.budget, args.clock, args.threads, log)
        for sampler, n in todo:
            c0, w0 = tick(), time.perf_counter()
            tokens = eng.sample(args.samples, steps=n, sampler=sampler, seed=args.seed)
            dt, dw = tick() - c0, time.perf_counter() - w0
            decoded = eng.task.decode(tokens[:1])
            rec = dict(base, sampler=sampler, sample_steps=n, train_steps=info["steps"], train_s=info["train_s"],
                       sample_s_per_sample=dt / args.samples, sample_wall_s_per_sample=dw / args.samples,
                       **judge.metrics(tokens),
                       example=decoded[0][:200] if isinstance(decoded, list) and isinstance(decoded[0], str) else None)
            records.append(rec)
            done.add(run_key(rec))
            write_json(args.json, records=records)
            log(f"  {label} {sampler} {'' if n is None else f'{n} steps '}gen. ppl {rec['judge_gen_ppl']:.3f}, "
                f"entropy {rec['unigram_entropy_bits']:.3f} bits, {1000 * rec['sample_s_per_sample']:.1f} ms/sample")
        del eng
    return json.loads(Path(args.json).read_text())


def markdown(data: dict) -> str:
    """The table of a results file: one row per (method, sampler, steps), the real test data first."""
    real, judge = data.get("real", {}), data.get("judge", {})
    bits = judge.get("bits_per_token", judge.get("bpc"))  # character tasks report bpc alone (= bits per token)
    lines = [f"**{data.get('task', '?')}**: judge {judge.get('path', '?')} ({judge.get('steps', '?')} steps"
             + (f", {bits:.3f} bits/token on the test split" if bits is not None else "") + "); "
             f"{real.get('rows', '?')} real test rows and each sampler's samples scored", "",
             "| method | train steps | sampler | steps | gen. ppl | bits/token | entropy (bits) | ms/sample |",
             "|---|---|---|---|---|---|---|---|"]
    if real:
        lines.append(f"| real test data | – | – | – | {real['judge_gen_ppl']:.3f} | {real['judge_bits_per_token']:.3f} "
                     f"| {real['unigram_entropy_bits']:.3f} | – |")
    for r in data.get("records", []):
        steps = "–" if r["sample_steps"] is None else r["sample_steps"]
        lines.append(f"| {r['label']} | {r['train_steps']} | {r['sampler']} | {steps} | {r['judge_gen_ppl']:.3f} "
                     f"| {r['judge_bits_per_token']:.3f} | {r['unigram_entropy_bits']:.3f} "
                     f"| {1000 * r['sample_s_per_sample']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="text-tdavid")
    p.add_argument("--judge", metavar="CKPT", help="an AR checkpoint of the task (default: train one here)")
    p.add_argument("--judge-budget", type=float, default=600.0, help="seconds of --clock to train the judge")
    p.add_argument("--methods", nargs="+", default=METHODS,
                   help="compare's method names or variants NAME[KEY=VALUE,...] (default: %(default)s)")
    p.add_argument("--budget", type=float, default=150.0, help="seconds of --clock to train each method")
    p.add_argument("--sample-steps", type=int, nargs="+", default=[4, 8, 16, 64, 256])
    p.add_argument("--samplers", nargs="+", type=sampler_name, default=None, metavar="SAMPLER",
                   help="as compare's (NAME, METHOD:NAME, all; default: every sampler of each method)")
    p.add_argument("--samples", type=int, default=64, help="samples per (method, sampler, steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the same for every method)")
    p.add_argument("--clock", choices=list(CLOCKS), default="cpu")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="config override of every model, judge included (e.g. path=... for text-file)")
    p.add_argument("--json", default="text_quality.json", help="raw results (read back to skip finished records)")
    p.add_argument("--models", help="where trained models are kept (default: JSON's name + _models)")
    p.add_argument("--fresh", action="store_true", help="ignore the records already in --json")
    p.add_argument("--table", metavar="JSON", help="only print the table of a results file")
    quick_argument(p)
    args = quick(p, p.parse_args(argv), task="text-file", sets=[f"path={GPL3}", "seq_len=64"], judge_budget=1.0,
                 budget=1.0, methods=["catdm", "vqdiffusion"], sample_steps=[2], samples=4,
                 json=lambda: str(Path(tempfile.mkdtemp()) / "text_quality_quick.json"))
    if args.table:
        print(markdown(json.loads(Path(args.table).read_text())))
        return 0
    known = registry().components["methods"]
    for m in args.methods:  # before the judge's training, not after it
        try:
            name = method_spec(m)[1].get("method", "catdm")
        except ValueError as e:
            p.error(str(e))
        if name not in known:
            p.error(f"--methods {m}: method {name!r} is not registered here (known: {', '.join(sorted(known))})")
    if args.samples < 1:
        p.error("--samples must be >= 1")
    t0 = time.perf_counter()
    data = run(args, log=lambda *a: print(*a, flush=True))
    print(f"\ncommand: python -m benchmarks.text_quality {' '.join(argv if argv is not None else sys.argv[1:])}; "
          f"{time.perf_counter() - t0:.0f} s wall\n")
    print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
