"""Paper 000 Table 1 ablations and the discrete-state baselines (Table 2), one task, same
backbone, budget and seeds, all measured in this run.

Arms: CSDM (plain VLB, eq. 3, no NS/RD), CSDM + l2, CATDM w/o CM / NS / RD, CATDM, and the
methods D3PM-uniform, VQ-Diffusion (ancestral and Improved VQ-Diffusion purity sampling of
the same trained model) and MaskGIT. Columns: the task's FID (image tasks) or bits per
token (text tasks: BPC; continuous methods and D3PM/VQ-Diffusion have bounds), the
embedding-variance summary (continuous methods only; paper Figure 1), wall time.

    python -m benchmarks.ablation [--task digits] [--steps N] [--seeds 0 1] [--samples 300]
    python -m benchmarks.ablation --arms CATDM CSDM --jobs 2 --threads 1   # two runs at once on 2 cores
    python -m benchmarks.ablation --shifts 0 -1 -2 -3 -4     # CATDM over the shift s (chose s = -3)
    python -m benchmarks.ablation --seeds 0 1 2 --models runs/bench-models   # keep the trained models
    python -m benchmarks.ablation --quick --threads 1        # every arm, tiny: a check, not a measurement

With ``--models DIR`` each trained model is saved in DIR under a name made from its resolved
training config and seed, and any later run of these scripts (steps, dropping) that needs the
same model (Table 1's CATDM is Table 6's "rand(0.2), z_0 0.5" and Table 10's CATDM) loads it
instead of training it again (:class:`benchmarks.harness.Runner`).
"""
from __future__ import annotations

import argparse

from benchmarks.harness import ARMS, Runner, common_arguments, floor_note, quick, share_trainings, table
from catdiff import Engine

# the arms of paper 000 Table 1 and Table 2 (harness.ARMS also has steps.py's CATDM-CE)
TABLE1 = ("CSDM", "CSDM+l2", "CATDM w/o CM", "CATDM w/o NS", "CATDM w/o RD", "CATDM", "D3PM-uniform", "VQ-Diffusion",
          "VQ-Diffusion+purity", "MaskGIT", "MDLM", "AR")


def main(argv=None, default_arms=TABLE1, description: str = __doc__.splitlines()[0]) -> None:
    p = argparse.ArgumentParser(description=description)
    common_arguments(p)
    p.add_argument("--arms", nargs="+", default=list(default_arms), choices=list(ARMS))
    p.add_argument("--shifts", type=float, nargs="*", default=[],
                   help="instead of the arms: CATDM at each shift s of the noise schedule")
    args = quick(p, p.parse_args(argv), steps=2, seeds=[0], samples=16)
    arms = {name: ARMS[name] for name in args.arms}
    if args.shifts:
        arms = {f"CATDM s={s:g}": ({"shift": s}, {}) for s in args.shifts}
    runner = Runner(args)
    groups = share_trainings(arms, args.seeds)
    specs = [(dict(key), [s for _, s in group], seed) for (key, seed), group in groups]

    def report(i, ms):
        (_, seed), group = groups[i]
        for (arm, _), m in zip(group, ms):
            print(f"done {arm} seed {seed}: FID {m.get('fid_digits_classifier', float('nan')):.2f} "
                  f"(train {m['train_seconds']:.0f}s)", flush=True)

    results = runner.run_many(specs, report)
    by_arm = {(arm, seed): m for ((_, seed), group), ms in zip(groups, results) for (arm, _), m in zip(group, ms)}
    rows = [(arm, seed, by_arm[arm, seed]) for arm in arms for seed in args.seeds]
    steps = args.steps or Engine(args.task).cfg.steps
    print(f"\ntask {args.task}, {steps} training steps, {args.samples} samples, seeds {args.seeds}, "
          f"overrides {args.sets}\n")
    print(table(rows))
    print("\n" + floor_note(rows))
    print("emb var: total variance of EMB(x) over test sequences; eff.dims: participation ratio of the "
          "per-dimension variances (paper Figure 1); collapse = both near zero. bits/tok: the method's "
          "likelihood bound (CATDM eq. 3; D3PM/VQ-Diffusion discrete ELBO; MaskGIT has none).")


if __name__ == "__main__":
    main()
