"""Random-dropping strategies of CATDM (paper 000 Table 6 / 003 sec. 5.3), measured in this run.

    python -m benchmarks.dropping [--task digits] [--steps N] [--seeds 0 1] [--samples 300]
                                  [--ratios 0.1 0.2 0.3] [--quick]

Arms: none (w/o RD), linear (p = r t), rand_ratio (the paper's rand_drop: a per-sequence
ratio ~ U(0, r)), and rand(r) (each token dropped with probability r) for each ratio;
r = ``drop_ratio`` (0.2 unless --ratios says otherwise) for linear and rand_ratio. These arms
drop alike in both student passes (``drop_l0`` auto, as in the paper); the last arm,
"rand(r), z_0 0.5", is catdiff's digits default: rand(r) on z_t and 0.5 on L0's z_0 pass.
"""
from __future__ import annotations

import argparse

from benchmarks.harness import COLUMNS, Runner, common_arguments, floor_note, quick, table


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(p)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.2], help="ratios r of rand(r)")
    args = quick(p, p.parse_args(argv), steps=2, seeds=[0], samples=16)
    arms = {"none": {"drop": "none"}, "linear": {"drop": "linear"}, "rand_ratio": {"drop": "rand_ratio"}}
    arms.update({f"rand({r:g})": {"drop": "rand", "drop_ratio": r} for r in args.ratios})
    # drop_l0 None (auto; -1 before the typed settings): L0's z_0 pass drops like z_t (the paper);
    # "none" drops nothing anywhere, so it is left without, the same model as Table 1's "CATDM
    # w/o RD" (shared under --models)
    arms = {name: arm if arm["drop"] == "none" else {**arm, "drop_l0": None} for name, arm in arms.items()}
    arms.update({f"rand({r:g}), z_0 0.5": {"drop": "rand", "drop_ratio": r, "drop_l0": 0.5} for r in args.ratios})
    runner = Runner(args)
    keys = [(arm, seed) for seed in args.seeds for arm in arms]  # seed-major

    def report(i, ms):
        arm, seed = keys[i]
        print(f"done {arm} seed {seed}: FID {ms[0].get('fid_digits_classifier', float('nan')):.2f}", flush=True)

    results = runner.run_many([(arms[arm], [{}], seed) for arm, seed in keys], report)
    by_key = {key: ms[0] for key, ms in zip(keys, results)}
    rows = [(arm, seed, by_key[arm, seed]) for arm in arms for seed in args.seeds]
    print(f"\nCATDM dropping strategies; task {args.task}, training steps {args.steps or 'task default'}, "
          f"{args.samples} samples, seeds {args.seeds}, overrides {args.sets}\n")
    print(table(rows, [c for c in COLUMNS if c[0] != "sample_seconds"]))
    print("\n" + floor_note(rows))


if __name__ == "__main__":
    main()
