"""The few-step table (paper 000 Table 5 analogue) and the sampling-cost frontier, read from
``benchmarks.compare`` results.

    python -m benchmarks.compare --tasks fashion-mnist-cond --modes steps --steps 2000 \\
        --methods catdm mdlm udlm maskgit vqdiffusion d3pm ar --seeds 0 1 2 \\
        --sample-steps 1 2 3 4 5 6 7 8 16 50 --samples 300 --threads 1 --no-speed --batch1 4 \\
        --samplers ancestral ddim dpmpp_2m heun "dpmpp_2m[sample_grid=logsnr]" "heun[sample_grid=logsnr]" \\
                   cached purity confidence --json fc_steps.json
    python -m benchmarks.frontier --json fc_steps.json fc_time.json [--plot docs/img] [--quick]

For each (task, training mode) of the records it prints, in markdown:
- FID of every sampling arm at every step count (mean ± std over seeds; "–" where the method
  cannot take that count: AR always takes one step per token), and the samples' diversity
  (benchmarks.harness.diversity: a feature-space FID can miss near-copies);
- one arm per method (its sampler with the lowest FID averaged over the counts: a method with
  more samplers must not win by the minimum of more noisy draws), and at each count CATDM's
  against the best other method's, their ratio, and the counts at which CATDM is best;
- against paper 000 Table 5 (class-conditional ImageNet): MaskGIT / VQ-LCMD there, MaskGIT /
  best CATDM here, at 2 to 8 steps;
- the frontier: for a limit on network calls (NFE) or on sampling time per sample (CPU ms at
  batch 256 and at batch 1), the best mean FID each method reaches within it, and the ranges of
  the limit in which CATDM's is the best of all ("crossing points").
``--plot DIR`` draws FID against NFE, ms/sample at batch 256 and at batch 1 per task
(``DIR/frontier-TASK.png``, one row per training mode, log axes).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from benchmarks.harness import mean_std, quick_argument

# paper 000 Table 5: class-conditional ImageNet FID against sampling steps
PAPER_TABLE5 = {"MaskGIT": {2: 97.83, 3: 46.43, 4: 20.29, 5: 10.95, 6: 7.74, 7: 6.79, 8: 6.80},
                "VQ-LCMD": {2: 17.83, 3: 10.57, 4: 8.51, 5: 7.87, 6: 7.56, 7: 7.45, 8: 7.44}}
COSTS = (("nfe_per_sample", "NFE"), ("sample_s_per_sample", "ms/sample, batch 256"),
         ("sample_s_per_sample_b1", "ms/sample, batch 1"))


def family(rec: dict) -> str:
    """The method a record trained (its compare name without a variant), e.g. ``catdm``."""
    return rec["method"].partition("[")[0]


def points(records: list[dict]) -> dict:
    """{(task, mode, budget): {arm: {"family", "by_n": {n: {"fid": [..], cost: [..]}}}}} over seeds.
    An arm measured twice for one seed (a later file that trained the seed again to add samplers)
    counts once, from the first record."""
    out: dict = {}
    seen: set = set()
    for r in records:
        arms = out.setdefault((r["task"], r["mode"], r["budget_s"]), {})
        for e in r["evals"]:
            key = (r["task"], r["mode"], r["budget_s"], r["seed"], e["arm"], e["sample_steps"])
            if "fid" not in e or key in seen:
                continue
            seen.add(key)
            a = arms.setdefault(e["arm"], {"family": family(r), "by_n": {}, "seeds": set()})
            a["seeds"].add(r["seed"])
            cell = a["by_n"].setdefault(e["sample_steps"], {})
            cell.setdefault("fid", []).append(e["fid"])
            for key, _ in COSTS:
                if key in e:
                    cell.setdefault(key, []).append(e[key] * (1 if key == "nfe_per_sample" else 1000))
            if "pair_difference" in e:
                cell.setdefault("pair_difference", []).append(e["pair_difference"])
    return out


def mean(vals) -> float:
    return statistics.fmean(vals) if vals else math.nan


def label(arm: str, a: dict, seeds: list) -> str:
    """The arm's name, with its seeds when it has fewer than the table's."""
    return arm if len(a["seeds"]) >= len(seeds) else f"{arm} (seeds {sorted(a['seeds'])})"


def chosen(arms: dict) -> dict:
    """Each method's one arm (sampler): the lowest FID averaged over all its step counts. Comparing
    methods through one arm each keeps a method with many samplers from winning by the minimum of
    more noisy draws (the per-arm table shows them all)."""
    pick: dict = {}
    for arm, a in arms.items():
        score = mean([mean(c["fid"]) for c in a["by_n"].values()])
        if a["family"] not in pick or score < pick[a["family"]][1]:
            pick[a["family"]] = (arm, score)
    return {arm: arms[arm] for arm, _ in pick.values()}


def best_by_family(arms: dict, n) -> dict:
    """{family: (arm, mean FID)} of the best arm of each method at step count ``n`` (AR: its own)."""
    best: dict = {}
    for arm, a in arms.items():
        cell = a["by_n"].get(n) or (a["by_n"].get(None) if None in a["by_n"] else None)
        if cell is None:
            continue
        f = mean(cell["fid"])
        if a["family"] not in best or f < best[a["family"]][1]:
            best[a["family"]] = (arm, f)
    return best


def frontier(arms: dict, cost: str) -> dict:
    """{family: [(cost, FID), ...]}: every (mean cost, mean FID) point of the method's arms."""
    out: dict = {}
    for a in arms.values():
        for cell in a["by_n"].values():
            if cost in cell:
                out.setdefault(a["family"], []).append((mean(cell[cost]), mean(cell["fid"])))
    return out


def best_within(pts: list, limit: float) -> float:
    return min((f for c, f in pts if c <= limit * (1 + 1e-9)), default=math.inf)


def crossings(front: dict, flagship: str = "catdm") -> list[tuple[float, float | None]]:
    """The ranges [lo, hi) of the cost limit in which ``flagship``'s best FID within the limit is the
    best of all methods (hi None: up to the largest cost measured)."""
    limits = sorted({c for pts in front.values() for c, _ in pts})
    wins = []
    for lim in limits:
        best = {fam: best_within(pts, lim) for fam, pts in front.items()}
        top = min(best, key=best.get)
        wins.append(top == flagship and best[top] < math.inf)
    ranges, start = [], None
    for i, (lim, w) in enumerate(zip(limits, wins)):
        if w and start is None:
            start = lim
        if not w and start is not None:
            ranges.append((start, lim))
            start = None
    if start is not None:
        ranges.append((start, None))
    return ranges


def versus(stepped: dict, n) -> tuple | None:
    """((CATDM's arm, FID), (the best other method's arm, FID)) at step count ``n``, or None when
    either is missing (``stepped``: one arm per method, AR left out: it takes no step count)."""
    best = best_by_family(stepped, n)
    others = [v for fam, v in best.items() if fam != "catdm"]
    if "catdm" not in best or not others:
        return None
    return best["catdm"], min(others, key=lambda v: v[1])


def intervals(ranges: list) -> str:
    """Cost ranges [lo, hi) as text (hi None: up to the largest cost measured)."""
    return ", ".join(f"[{lo:.3g}, {'∞' if hi is None else f'{hi:.3g}'})" for lo, hi in ranges)


def tables(records: list[dict]):
    """(task, what was held equal, seeds, step counts, arms) of each (task, training mode)."""
    for (task, mode, budget), arms in points(records).items():
        seeds = sorted({r["seed"] for r in records if r["task"] == task and r["mode"] == mode})
        steps = sorted({r["steps"] for r in records if r["task"] == task and r["mode"] == mode})
        what = f"equal training time, {budget:.0f} CPU-s each" if mode == "time" else f"equal training steps ({steps[0]})"
        yield task, what, seeds, sorted({n for a in arms.values() for n in a["by_n"] if n is not None}), arms


def compact(records: list[dict]) -> str:
    """One table per (task, training mode): each method's one arm (:func:`chosen`) at every step
    count, CATDM's ratio to the best other method, paper 000 Table 5's VQ-LCMD / MaskGIT beside
    it, then the counts and cost limits at which CATDM is the best method."""
    lines = []
    for task, what, seeds, counts, arms in tables(records):
        picked = chosen(arms)
        lines += ["", f"**{task}, {what}** (seeds {seeds}; FID, mean ± std over seeds; one arm per method)", "",
                  "| arm | " + " | ".join(str(n) for n in counts) + " |", "|---|" + "---|" * len(counts)]
        for arm, a in sorted(picked.items(), key=lambda kv: kv[1]["family"] != "catdm"):
            if None in a["by_n"]:
                own = a["by_n"][None]
                lines.append(f"| {label(arm, a, seeds)} (NFE {mean(own['nfe_per_sample']):.0f}) | "
                             f"{mean_std(own['fid'], 3)} |" + " – |" * (len(counts) - 1))
            else:
                lines.append(f"| {label(arm, a, seeds)} | " + " | ".join(mean_std(a["by_n"][n]["fid"], 3) if n in a["by_n"] else "–"
                                                       for n in counts) + " |")
        stepped = {a: v for a, v in picked.items() if None not in v["by_n"]}
        ratios, wins = [], []
        for n in counts:
            pair = versus(stepped, n)
            r = pair[0][1] / pair[1][1] if pair else math.nan
            ratios.append(f"{r:.2f}")
            if r < 1:
                wins.append(n)
        lines.append("| CATDM / best other | " + " | ".join(ratios) + " |")
        lines.append("| paper: VQ-LCMD / MaskGIT | " + " | ".join(
            f"{PAPER_TABLE5['VQ-LCMD'][n] / PAPER_TABLE5['MaskGIT'][n]:.2f}" if n in PAPER_TABLE5["MaskGIT"] else ""
            for n in counts) + " |")
        said = []
        for key, name in COSTS:
            front = frontier(picked, key)
            if len(front) >= 2 and "catdm" in front:
                said.append(f"{name} " + (intervals(crossings(front)) or "none"))
        lines += ["", f"CATDM is the best method at step counts {wins}." if wins else
                  "CATDM is the best method at no step count.",
                  "Limits within which it gives the lowest FID of all: " + "; ".join(said) + "."]
    return "\n".join(lines)


def report(records: list[dict], brief: bool = False) -> str:
    """The markdown of the module docstring; ``brief``: the frontier's crossing points without
    its tables (best FID within each limit)."""
    lines = []
    for task, what, seeds, counts, arms in tables(records):
        lines += ["", f"**{task}, {what}** (seeds {seeds}; FID, mean ± std over seeds)", "",
                  "| arm | " + " | ".join(str(n) for n in counts) + " |", "|---|" + "---|" * len(counts)]
        for arm, a in arms.items():
            if None in a["by_n"]:  # AR: one step per token, whatever the count
                own = a["by_n"][None]
                cells = [f"{mean_std(own['fid'], 3)} (NFE {mean(own['nfe_per_sample']):.0f})"] + ["–"] * (len(counts) - 1)
            else:
                cells = [mean_std(a["by_n"][n]["fid"], 3) if n in a["by_n"] else "–" for n in counts]
            lines.append(f"| {label(arm, a, seeds)} | " + " | ".join(cells) + " |")
        if any("pair_difference" in c for a in arms.values() for c in a["by_n"].values()):
            lines += ["", "Diversity: the share of positions in which two samples of one class differ (mean over seeds):",
                      "", "| arm | " + " | ".join(str(n) for n in counts) + " |", "|---|" + "---|" * len(counts)]
            for arm, a in arms.items():
                cells = [f"{mean(a['by_n'][n]['pair_difference']):.2f}" if "pair_difference" in a["by_n"].get(n, {})
                         else "–" for n in counts]
                lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        head = ["", "| steps | CATDM arm | FID | best other arm | FID | CATDM / other |", "|---|---|---|---|---|---|"]
        wins, compared = [], []
        picked = chosen(arms)
        lines += ["", "One arm per method from here on (its lowest FID averaged over the step counts): "
                  + ", ".join(picked) + "."]
        stepped = {a: v for a, v in picked.items() if None not in v["by_n"]}  # AR takes no step count
        for n in counts:
            pair = versus(stepped, n)
            if pair is None:
                continue
            (c_arm, c_fid), (o_arm, o_fid) = pair
            if c_fid < o_fid:
                wins.append(n)
            compared.append(f"| {n} | {c_arm} | {c_fid:.3g} | {o_arm} | {o_fid:.3g} | {c_fid / o_fid:.2f} |")
        if compared:
            lines += head + compared + ["", f"CATDM is the best method at {wins or 'no'} step count(s)."]
        mask = next((a for a in arms if a.startswith("MaskGIT")), None)
        if mask:
            lines += ["", "| steps | paper MaskGIT | paper VQ-LCMD | paper CATDM / MaskGIT | MaskGIT | CATDM | CATDM / MaskGIT |",
                      "|---|---|---|---|---|---|---|"]
            for n in range(2, 9):
                if n not in arms[mask]["by_n"]:
                    continue
                m, c = mean(arms[mask]["by_n"][n]["fid"]), best_by_family(picked, n).get("catdm", ("", math.nan))[1]
                pm, pc = PAPER_TABLE5["MaskGIT"][n], PAPER_TABLE5["VQ-LCMD"][n]
                lines.append(f"| {n} | {pm} | {pc} | {pc / pm:.2f} | {m:.3g} | {c:.3g} | {c / m:.2f} |")
        for key, name in COSTS:
            front = frontier(picked, key)
            if len(front) < 2 or "catdm" not in front:
                continue
            limits = sorted({c for pts in front.values() for c, _ in pts})
            probes = [limits[0]] + [x for x in (1, 2, 4, 8, 16, 32, 64, 128, 256, 1e3, 1e4) if limits[0] < x < limits[-1]] + [limits[-1]]
            if not brief:
                lines += ["", f"Best FID within a limit on {name}:", "",
                          f"| {name} ≤ | " + " | ".join(front) + " |", "|---|" + "---|" * len(front)]
                for lim in probes:
                    lines.append(f"| {lim:.3g} | " + " | ".join(
                        f"{best_within(pts, lim):.3g}" if best_within(pts, lim) < math.inf else "–"
                        for pts in front.values()) + " |")
            said = intervals(crossings(front)) or "nowhere"
            lines.append(f"\nCATDM is the best method for a limit on {name} in {said}.")
    return "\n".join(lines)


def plot(records: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    data = points(records)
    for task in dict.fromkeys(t for t, _, _ in data):
        keys = sorted((k for k in data if k[0] == task), key=lambda k: k[1] != "steps")  # equal steps first
        fig, axes = plt.subplots(len(keys), len(COSTS), figsize=(5 * len(COSTS), 4 * len(keys)), squeeze=False)
        for row, key in zip(axes, keys):
            arms = data[key]
            palette = plt.get_cmap("tab20")  # one colour per arm (tab10 repeats past ten arms)
            for ax, (cost, name) in zip(row, COSTS):
                for k, (arm, a) in enumerate(arms.items()):
                    pts = sorted((mean(c[cost]), mean(c["fid"])) for c in a["by_n"].values() if cost in c)
                    if pts:
                        style = "-o" if a["family"] == "catdm" else "--s"
                        ax.plot(*zip(*pts), style, ms=3, label=arm, color=palette(k % 20),
                                lw=1.5 if a["family"] == "catdm" else 1)
                ax.set(xscale="log", yscale="log", xlabel=name, ylabel="FID (lower is better)",
                       title=f"{task}, {'equal time' if key[1] == 'time' else 'equal steps'}")
            row[0].legend(fontsize=6)
        fig.tight_layout()
        path = out / f"frontier-{task}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", nargs="+", help="benchmarks.compare results files")
    p.add_argument("--plot", metavar="DIR", help="write DIR/frontier-TASK.png")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the --quick compare run")
    p.add_argument("--brief", action="store_true", help="the crossing points without the frontier's tables")
    p.add_argument("--compact", action="store_true", help="only one arm per method: a table per task and mode")
    p.add_argument("--seeds", type=int, nargs="+", help="only these seeds' records (the seeds every method has)")
    quick_argument(p)
    args = p.parse_args(argv)
    if args.quick:  # the whole path on a tiny compare run
        import tempfile

        from benchmarks import compare

        tmp = Path(tempfile.mkdtemp())
        compare.main(["--quick", "--methods", "catdm", "maskgit", "--sample-steps", "1", "2", "--samplers", "ddim", "heun",
                      "confidence", "--batch1", "1", "--no-speed", "--threads", str(args.threads), "--json", str(tmp / "q.json")])
        args.json, args.plot = [str(tmp / "q.json")], args.plot or str(tmp)
    if not args.json:
        p.error("give --json FILE ... (benchmarks.compare results), or --quick")
    missing = [path for path in args.json if not Path(path).is_file()]
    if missing:
        p.error(f"no results file {', '.join(missing)} (write one with benchmarks.compare --json)")
    records = [r for path in args.json for r in json.loads(Path(path).read_text()).get("records", [])
               if args.seeds is None or r["seed"] in args.seeds]
    print(compact(records) if args.compact else report(records, args.brief))
    if args.plot:
        for path in plot(records, Path(args.plot)):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
