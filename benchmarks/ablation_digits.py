"""CATDM vs CSDM vs CATDM w/o CM on the embedded `digits` task, same budget and seeds.

Paper 000 Table 1 / 003 Figure 1 claim: CSDM (plain VLB) and CATDM without L_CM collapse
(embedding variance -> 0, poor FID); CATDM does not. Prints one row per arm and seed and
a mean row per arm, all measured in this run.

    python benchmarks/ablation_digits.py [--steps N] [--seeds 0 1] [--samples 500]
    python benchmarks/ablation_digits.py --shifts 0 -1 -2 -3 -4     # the sweep that chose s
"""
from __future__ import annotations

import argparse
import statistics
import time

from catdiff import Engine

ARMS = {
    "CATDM": {},
    "CATDM w/o CM": {"beta_cm": 0.0},
    "CSDM": {"objective": "csdm", "shift": 0.0, "drop": "none"},
}
COLUMNS = [("fid_digits_classifier", "FID(digits-clf)"), ("class_entropy", "class H"),
           ("embedding_total_variance", "emb var"), ("embedding_participation_ratio", "eff. dims"),
           ("nll_bound_bits_per_token", "bits/token")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default: the task's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--shifts", type=float, nargs="*", default=[],
                   help="instead of the arms: CATDM at each shift s of the noise schedule (the sweep that chose s)")
    args = p.parse_args()
    arms = {name: ARMS[name] for name in args.arms}
    if args.shifts:
        arms = {f"CATDM s={s:g}": {"shift": s} for s in args.shifts}

    rows = []
    for arm, arm_overrides in arms.items():
        for seed in args.seeds:
            overrides = dict(arm_overrides, seed=seed)
            if args.steps:
                overrides["steps"] = args.steps
            t0 = time.perf_counter()
            eng = Engine("digits", **overrides).fit()
            m = eng.evaluate(n_samples=args.samples)
            m["seconds"] = time.perf_counter() - t0
            rows.append((arm, seed, m))
            print(f"done {arm} seed {seed}: FID {m.get('fid_digits_classifier', float('nan')):.2f} "
                  f"({m['seconds']:.0f}s)", flush=True)

    floor = rows[0][2].get("fid_digits_classifier_real_test", float("nan"))
    head = f"{'arm':<14}{'seed':>5}" + "".join(f"{label:>17}" for _, label in COLUMNS) + f"{'sec':>7}"
    print("\n" + head + "\n" + "-" * len(head))
    for arm, seed, m in rows:
        print(f"{arm:<14}{seed:>5}" + "".join(f"{m.get(k, float('nan')):>17.4g}" for k, _ in COLUMNS) + f"{m['seconds']:>7.0f}")
    print("-" * len(head))
    for arm in arms:
        ms = [m for a, _, m in rows if a == arm]
        means = [statistics.fmean(m.get(k, float("nan")) for m in ms) for k, _ in COLUMNS]
        print(f"{arm + ' mean':<19}" + "".join(f"{v:>17.4g}" for v in means))
    print(f"\nFID floor (300 real test digits vs reference, same feature extractor): {floor:.3g}")
    print("emb var: total variance of EMB(x) over test sequences; eff. dims: participation ratio of the "
          "per-dimension variances (paper Figure 1). Collapse = both near zero.")


if __name__ == "__main__":
    main()
