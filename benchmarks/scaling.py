"""The scaling curve: FID and bits/token against training CPU time, one line per method.

    python -m benchmarks.scaling --json scale.json [--budgets 25 50 100 200] [--methods catdm mdlm d3pm ar]
                                 [--seeds 0 1] [--jobs 2] [--plot docs/img/scaling.png] [--quick]

Trains every method at every budget with ``benchmarks.compare``'s equal-time mode (the same
step-rate probe and LR schedule sizing). Each (method, budget, seed) record is written to
``--json`` as it finishes and a rerun skips the finished ones, so a long curve can be spread
over several sittings; ``--jobs N`` trains N of them at once in worker processes (one
``--threads`` each: ``--jobs 2 --threads 1`` on 2 cores; CPU time stays the clock),
then prints one table (mean ± std over seeds at each budget, FID at each method's best
sampling step count, the bound on the test and on the training split) and, with ``--plot``,
draws it. ``--table`` only reads ``--json`` files.

Reading the curves (:func:`report`): each method's metric (FID; bits per character on text) is
fitted by a power law in training compute, log y = a + b log x, by least squares over every
seed's point, with the slope's standard error and R^2. CATDM's crossing with each other method
is *measured* where the difference of the seed means changes sign between two budgets
(interpolated on log axes), else *extrapolated* where the fitted lines meet, with a 90%
interval from the fits' coefficient uncertainty (parametric draws); lines whose slopes order
says they part give "no crossing ahead".
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

import numpy as np

from benchmarks import compare
from benchmarks.harness import quick, quick_argument, write_json
from catdiff.run.config import parse_sets


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
    """{method: {budget: (steps, FIDs, bits, train bits)}} over seeds; FID at the sampling step
    count whose mean over seeds is best (as compare.py's tables); bits are BPC on text tasks."""
    cells: dict = {}
    for r in recs:
        cells.setdefault(r["method"], {}).setdefault(r["budget_s"], []).append(r)
    out: dict = {}
    for method, by in cells.items():
        for budget, rs in by.items():
            per_n = {}
            for r in rs:
                for e in r.get("evals", []):
                    per_n.setdefault((e.get("arm"), e["sample_steps"]), []).append(e.get("fid", float("nan")))
            full = {n: v for n, v in per_n.items() if len(v) == len(rs)}
            fids = min(full.values(), key=statistics.mean) if full else [float("nan")]
            bits = [r.get("bpc", r.get("bits_per_token", float("nan"))) for r in rs]
            train = [r.get("train_bpc", r.get("train_bits_per_token", float("nan"))) for r in rs]
            out.setdefault(method, {})[budget] = ([r["steps"] for r in rs], fids, bits, train)
    return out


def fmt(values: list[float]) -> str:
    values = [v for v in values if v == v]  # no NaN (a method without a bound)
    if not values:
        return "–"
    if len(values) < 2:
        return f"{values[0]:.3g}"
    return f"{statistics.mean(values):.3g} ± {statistics.stdev(values):.2g}"


def table(data: dict, text: bool = False) -> str:
    """Steps, FID and bits/token (on the training split in brackets) per method and budget;
    ``text``: steps and bits per character (no samples)."""
    budgets = sorted({b for m in data.values() for b in m})
    what = "steps, bits/char (train)" if text else "steps, FID, bits/token (train)"
    seeds = max(len(cell[0]) for by in data.values() for cell in by.values())
    lines = ["| method | " + " | ".join(f"{b:g} CPU-s: {what}" for b in budgets) + " |",
             "|---|" + "---|" * len(budgets)]
    short = set()
    for method, by in data.items():
        cells = []
        for b in budgets:
            if b not in by:
                cells.append("–")
                continue
            train = [v for v in by[b][3] if v == v]
            n = len(by[b][0])
            if n < seeds:
                short.add(n)
            cells.append(f"{statistics.mean(by[b][0]):.0f}, " + ("" if text else f"{fmt(by[b][1])}, ") + fmt(by[b][2])
                         + (f" ({statistics.mean(train):.3g})" if train else "") + (" *" * (n < seeds)))
        lines.append(f"| {label(method)} | " + " | ".join(cells) + " |")
    if short:  # a cell whose other seeds have not finished
        lines += ["", f"\\* {' or '.join(map(str, sorted(short)))} of {seeds} seeds"]
    return "\n".join(lines)


def power_fit(points: list[tuple[float, float]]) -> dict | None:
    """log y = a + b log x by least squares over ``points`` (budget, value), every seed's point:
    the coefficients, their covariance, the slope's standard error and R^2; None with fewer
    than 3 points or 2 budgets."""
    pts = [(x, y) for x, y in points if y == y and y > 0]
    if len(pts) < 3 or len({x for x, _ in pts}) < 2:
        return None
    X = np.array([[1.0, np.log(x)] for x, _ in pts])
    y = np.log([v for _, v in pts])
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ coef
    dof = max(1, len(y) - 2)
    cov = (resid @ resid / dof) * np.linalg.inv(X.T @ X)
    tss = ((y - y.mean()) ** 2).sum()
    return {"a": float(coef[0]), "b": float(coef[1]), "b_se": float(np.sqrt(cov[1, 1])), "cov": cov,
            "r2": float(1 - (resid @ resid) / tss) if tss > 0 else 1.0, "n": len(y)}


def measured_crossings(mine: dict, other: dict) -> list[float]:
    """Budgets where the seed means of two curves ({budget: values}) change order, interpolated
    on log axes between neighbouring budgets."""
    budgets = sorted(set(mine) & set(other))
    gap = {b: np.log(statistics.mean(mine[b])) - np.log(statistics.mean(other[b])) for b in budgets}
    out = []
    for lo, hi in zip(budgets, budgets[1:]):
        if gap[lo] * gap[hi] < 0:
            w = gap[lo] / (gap[lo] - gap[hi])
            out.append(float(np.exp(np.log(lo) + w * (np.log(hi) - np.log(lo)))))
    return out


def extrapolated_crossing(mine: dict, other: dict, draws: int = 4000, seed: int = 0) -> tuple | None:
    """Where two power-law fits meet, (x, 5th, 95th percentile) from parametric draws of their
    coefficients, if ``mine`` falls faster (its slope is more negative); None if the lines part."""
    if mine["b"] >= other["b"]:
        return None
    x = np.exp((other["a"] - mine["a"]) / (mine["b"] - other["b"]))
    rng = np.random.default_rng(seed)
    c1 = rng.multivariate_normal([mine["a"], mine["b"]], mine["cov"], draws)
    c2 = rng.multivariate_normal([other["a"], other["b"]], other["cov"], draws)
    slope = c1[:, 1] - c2[:, 1]
    ok = slope < 0  # draws in which the lines still meet ahead
    with np.errstate(over="ignore"):  # lines that barely converge meet at an infinite budget
        xs = np.exp((c2[ok, 0] - c1[ok, 0]) / slope[ok])
    lo, hi = (np.percentile(xs, [5, 95]) if ok.any() else (float("nan"), float("nan")))
    return float(x), float(lo), float(hi), float(ok.mean())


def budget(x: float) -> str:
    """A CPU-s figure: whole seconds up to a million, beyond that its order (1.1e+12)."""
    return f"{x:.0f}" if x < 1e6 else f"{x:.2g}"


def report(data: dict, metric: int = 1, name: str = "FID", flagship: str = "catdm") -> str:
    """The fitted slopes and CATDM's crossing with every other method (see the module docstring);
    ``metric`` 1 reads FID, 2 the bound (bits)."""
    fits = {m: power_fit([(b, v) for b, vals in by.items() for v in vals[metric]]) for m, by in data.items()}
    lines = [f"{name} ~ compute^b (least squares on log axes over every seed's point):", "",
             "| method | b ± se | R^2 | points |", "|---|---|---|---|"]
    for m, f in fits.items():
        lines.append(f"| {label(m)} | " + (f"{f['b']:.2f} ± {f['b_se']:.2f} | {f['r2']:.3f} | {f['n']} |" if f else
                                             "– | – | – |"))
    mine = fits.get(flagship)
    if flagship not in data:
        return "\n".join(lines)
    lo, hi = min(data[flagship]), max(data[flagship])
    lines.append("")
    for m in data:
        if m == flagship:
            continue
        series = lambda by: {b: [v for v in vals[metric] if v == v] for b, vals in by.items()}  # noqa: E731
        ours, theirs = series(data[flagship]), series(data[m])
        common = [b for b in sorted(set(ours) & set(theirs)) if ours[b] and theirs[b]]
        if not common:
            continue
        ahead = [b for b in common if statistics.mean(ours[b]) < statistics.mean(theirs[b])]
        measured = measured_crossings({b: ours[b] for b in common}, {b: theirs[b] for b in common})
        text = f"- {label(flagship)} vs {label(m)}: better at {', '.join(f'{b:g}' for b in ahead) or 'no'} CPU-s"
        if measured:
            text += "; measured crossing at " + ", ".join(f"{x:.0f}" for x in measured) + " CPU-s"
        other = fits.get(m)
        if mine and other:
            ext = extrapolated_crossing(mine, other)
            if ext is None:
                text += f"; slopes {mine['b']:.2f} vs {other['b']:.2f}: the lines part, no crossing ahead"
            else:
                x, x5, x95, share = ext
                where = "inside" if lo <= x <= hi else f"{x / hi:.3g}x beyond" if x > hi else "below"
                text += (f"; fitted lines meet at {budget(x)} CPU-s ({where} the range {lo:g}-{hi:g}; 90% interval "
                         f"{budget(x5)}-{budget(x95)}, lines meet ahead in {share:.0%} of draws)")
        lines.append(text)
    return "\n".join(lines)


def plot(data: dict, path: str, text: bool = False) -> None:
    """FID and the bound against CPU-s on log axes (``text``: bits per character alone); one
    colour per method in every panel, each panel with its own legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = ((2, "bits/char (bound; AR exact)"),) if text else ((1, "FID"), (2, "bits/token (bound; AR exact)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for k, (method, by) in enumerate(data.items()):
        for ax, (i, _) in zip(axes[0], panels):
            cells = {b: [v for v in by[b][i] if v == v] for b in sorted(by)}  # no NaN (no bound)
            budgets = [b for b, v in cells.items() if v]
            if not budgets:
                continue
            means = [statistics.mean(cells[b]) for b in budgets]
            errs = [statistics.stdev(cells[b]) if len(cells[b]) > 1 else 0 for b in budgets]
            ax.errorbar(budgets, means, yerr=errs, marker="o", capsize=3, label=label(method), color=f"C{k}")
    for ax, (_, name) in zip(axes[0], panels):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("training CPU-seconds (one thread)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
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
                           samples=samples, threads=threads, clock="cpu", sets=sets, log=log, train_bound=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default=None, help="default: digits, or with --table the task of its records")
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
    if args.table:  # the records say which task they measured (its metric: FID, or BPC on text)
        missing = [path for path in paths if not Path(path).is_file()]
        if missing:
            p.error(f"no results file {', '.join(missing)} (write one with benchmarks.scaling --json)")
        tasks = sorted({r["task"] for r in records(paths)})
        if len(tasks) > 1 or (args.task and tasks and tasks != [args.task]):
            p.error(f"--table files hold the tasks {', '.join(tasks)}; give one task's records"
                    + (f" (--task {args.task})" if args.task else ""))
        args.task = tasks[0] if tasks else args.task or "digits"
    else:
        args.task = args.task or "digits"
        run(args)
    data = curves(records(paths))
    print(f"\nscaling on {args.task}: mean ± std over seeds at each training budget\n")
    text = compare.is_text(args.task)
    print(table(data, text))
    print("\n" + report(data, 2 if text else 1, "bits per character" if text else "FID"))
    if not text:  # the bound too: its curve may cross where the samples' does not
        print("\n" + report(data, 2, "bits per token"))
    if args.plot:
        plot(data, args.plot, text)


if __name__ == "__main__":
    main()
