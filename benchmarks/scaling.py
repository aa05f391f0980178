"""The scaling curve: FID and bits/token against training CPU time, one line per method.

    python -m benchmarks.scaling --json scale.json [--budgets 25 50 100 200] [--methods catdm mdlm d3pm ar]
                                 [--seeds 0 1] [--jobs 2] [--plot docs/img/scaling.png] [--quick]

Trains every method at every budget with ``benchmarks.compare``'s equal-time mode (the same
step-rate probe and LR schedule sizing). Each (method, budget, seed) record is written to
``--json`` as it finishes and a rerun skips the finished ones, so a long curve can be spread
over several sittings; ``--jobs N`` trains N of them at once in worker processes (one
``--threads`` each: ``--jobs 2 --threads 1`` on 2 cores; CPU time stays the clock),
then prints one table (mean ± std over seeds at each budget, FID at each method's best
sampling step count) and, with ``--plot``, draws it. ``--table`` only reads ``--json`` files.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import functools
import json
import multiprocessing
import statistics
import tempfile
from pathlib import Path

from benchmarks import compare
from benchmarks.harness import quick, quick_argument, write_json
from catdiff.config import parse_sets


def label(method: str) -> str:
    """compare's label of a method or variant (``catdm[l0_rows=auto]`` -> "CATDM l0_rows=auto")."""
    return compare.method_spec(method)[0]


def records(paths: list[str]) -> list[dict]:
    out = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        out += [r for r in data.get("records", []) if r.get("mode") == "time"]
    return out


def curves(recs: list[dict]) -> dict:
    """{method: {budget: (steps, FIDs, bits)}} over seeds; FID at the sampling step count whose
    mean over seeds is best (as compare.py's tables)."""
    cells: dict = {}
    for r in recs:
        cells.setdefault(r["method"], {}).setdefault(r["budget_s"], []).append(r)
    out: dict = {}
    for method, by in cells.items():
        for budget, rs in by.items():
            per_n = {}
            for r in rs:
                for e in r.get("evals", []):
                    per_n.setdefault(e["sample_steps"], []).append(e.get("fid", float("nan")))
            full = {n: v for n, v in per_n.items() if len(v) == len(rs)}
            fids = min(full.values(), key=statistics.mean) if full else [float("nan")]
            out.setdefault(method, {})[budget] = ([r["steps"] for r in rs], fids,
                                                  [r.get("bits_per_token", float("nan")) for r in rs])
    return out


def fmt(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3g}"
    return f"{statistics.mean(values):.3g} ± {statistics.stdev(values):.2g}"


def table(data: dict) -> str:
    budgets = sorted({b for m in data.values() for b in m})
    lines = ["| method | " + " | ".join(f"{b:g} CPU-s: steps, FID, bits/token" for b in budgets) + " |",
             "|---|" + "---|" * len(budgets)]
    for method, by in data.items():
        cells = [f"{statistics.mean(by[b][0]):.0f}, {fmt(by[b][1])}, {fmt(by[b][2])}" if b in by else "–"
                 for b in budgets]
        lines.append(f"| {label(method)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(data: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for method, by in data.items():
        budgets = sorted(by)
        for ax, i in zip(axes, (1, 2)):
            means = [statistics.mean(by[b][i]) for b in budgets]
            errs = [statistics.stdev(by[b][i]) if len(by[b][i]) > 1 else 0 for b in budgets]
            ax.errorbar(budgets, means, yerr=errs, marker="o", capsize=3, label=label(method))
    for ax, name in zip(axes, ("FID", "bits/token (bound; AR exact)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("training CPU-seconds (one thread)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def run(args) -> list[dict]:
    """Train and evaluate every (budget, seed, method) not yet in ``args.json``, ``args.jobs`` at a
    time; the parent alone writes the file, after each record (an interrupt loses the runs in flight)."""
    path = Path(args.json)
    recs = json.loads(path.read_text()).get("records", []) if path.exists() else []
    done = {compare.run_key(r) for r in recs}
    sets = parse_sets(args.sets)
    todo = [(m, b, s) for b in args.budgets for s in args.seeds for m in args.methods
            if (args.task, m, s, "time", b) not in done and not (compare.is_text(args.task) and not compare.has_likelihood(m))]
    print(f"{args.task}: {len(todo)} runs to go ({len(recs)} in {path})", flush=True)
    one = functools.partial(_run_one, args.task, sample_steps=args.sample_steps, samples=args.samples,
                            threads=args.threads, sets=sets)
    with contextlib.ExitStack() as stack:
        if args.jobs <= 1:
            results = map(one, todo)
        else:
            pool = stack.enter_context(concurrent.futures.ProcessPoolExecutor(
                args.jobs, mp_context=multiprocessing.get_context("spawn")))
            results = (f.result() for f in concurrent.futures.as_completed([pool.submit(one, spec) for spec in todo]))
        for rec in results:
            recs.append(rec)
            write_json(path, records=recs)
    return recs


def _run_one(task: str, spec: tuple, *, sample_steps, samples: int, threads: int, sets: dict) -> dict:
    method, budget, seed = spec
    log = lambda *a: print(f"[{method} {budget:g}s seed {seed}]", *a, flush=True)  # noqa: E731
    return compare.run_one(task, method, seed, "time", budget=budget, steps=None, sample_steps=sample_steps,
                           samples=samples, threads=threads, clock="cpu", sets=sets, log=log)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="digits")
    p.add_argument("--methods", nargs="+", default=["catdm", "mdlm", "d3pm", "ar"], type=compare.method_name,
                   help="as compare's: a method, or a variant NAME[KEY=VALUE,...] (a lever's curve)")
    p.add_argument("--budgets", type=float, nargs="+", default=[25, 50, 100, 200])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--samples", type=int, default=300)
    p.add_argument("--sample-steps", type=int, nargs="+", default=[25, 50])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--jobs", type=int, default=1, help="trainings at once, in worker processes")
    p.add_argument("--json", default="scaling_results.json")
    p.add_argument("--table", nargs="+", metavar="JSON", help="only print (and --plot) these results files")
    p.add_argument("--plot", help="write the curves to this image")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every run")
    quick_argument(p)
    args = quick(p, p.parse_args(argv), budgets=[3.0], seeds=[0], samples=16, sample_steps=[4],
                 methods=["catdm", "ar"], json=lambda: str(Path(tempfile.mkdtemp()) / "scaling_quick.json"))
    paths = args.table or [args.json]
    if not args.table:
        run(args)
    data = curves(records(paths))
    print(f"\nscaling on {args.task}: mean ± std over seeds at each training budget\n")
    print(table(data))
    if args.plot:
        plot(data, args.plot)


if __name__ == "__main__":
    main()
