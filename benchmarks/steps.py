"""FID against the number of sampling steps (paper 003 Table 10: CATDM vs CATDM-CE), with the
discrete-state methods alongside; each model is trained once and sampled at every step count.

    python -m benchmarks.steps [--task digits] [--steps N] [--seeds 0 1] [--samples 300]
                               [--sample-steps 5 10 20 50 100 200] [--arms ARM ...] [--quick]

``--arms`` takes the arms below or any registered method by name (a plugin's, with its own
defaults), labelled with that name.

Step counts a sampler cannot take are capped and marked: VQ-Diffusion's ancestral sampler
moves on its T = 100 training times; the purity sampler reveals at least one of the
64 digit tokens per step.
"""
from __future__ import annotations

import argparse

from benchmarks import harness
from catdiff.api.hooks import registry
from benchmarks.harness import Runner, common_arguments, floor_note, quick, share_trainings, table

ARMS = {name: harness.ARMS[name] for name in
        ("CATDM", "CATDM-CE", "D3PM-uniform", "VQ-Diffusion", "VQ-Diffusion+purity", "MaskGIT")}


def arm_name(name: str) -> str:
    """argparse type: one of ARMS, or a registered method's name."""
    if name in ARMS or name in registry().components["methods"]:
        return name
    raise argparse.ArgumentTypeError(f"unknown arm {name!r}: one of {', '.join(ARMS)}, or a registered method")


def arm_overrides(name: str) -> tuple[dict, dict]:
    return ARMS[name] if name in ARMS else ({"method": name}, {})


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(p)
    p.add_argument("--sample-steps", type=int, nargs="+", default=[5, 10, 20, 50, 100, 200])
    p.add_argument("--arms", nargs="+", default=list(ARMS), type=arm_name, metavar="ARM",
                   help=f"{', '.join(ARMS)}, or a registered method's name")
    p.add_argument("--metric", default="fid_digits_classifier")
    args = quick(p, p.parse_args(argv), steps=2, seeds=[0], samples=16, sample_steps=[2, 4])
    runner = Runner(args)
    groups = share_trainings({name: arm_overrides(name) for name in args.arms}, args.seeds)
    specs = [(dict(key), [dict(sample, sample_steps=n) for _, sample in group for n in args.sample_steps], seed)
             for (key, seed), group in groups]
    per_arm = lambda ms: zip(*[iter(ms)] * len(args.sample_steps))  # noqa: E731  split by arm

    def report(i, ms):
        (_, seed), group = groups[i]
        for (arm, _), arm_ms in zip(group, per_arm(ms)):
            print(f"done {arm} seed {seed}: {args.metric} " + ", ".join(
                f"{n} steps {m.get(args.metric, float('nan')):.2f}" for n, m in zip(args.sample_steps, arm_ms)),
                flush=True)

    by_arm = {}
    for ((_, seed), group), ms in zip(groups, runner.run_many(specs, report)):
        for (arm, _), arm_ms in zip(group, per_arm(ms)):
            m = {f"s{n}": r.get(args.metric, float("nan")) for n, r in zip(args.sample_steps, arm_ms)}
            m["fid_digits_classifier_real_test"] = arm_ms[0].get("fid_digits_classifier_real_test")
            by_arm[arm, seed] = m
    rows = [(arm, seed, by_arm[arm, seed]) for arm in args.arms for seed in args.seeds]
    print(f"\n{args.metric} by sampling steps; task {args.task}, training steps "
          f"{args.steps or 'task default'}, {args.samples} samples, seeds {args.seeds}, overrides {args.sets}\n")
    print(table(rows, [(f"s{n}", str(n)) for n in args.sample_steps]))
    print("\n" + floor_note(rows))
    print("VQ-Diffusion ancestral runs at most T = 100 steps; purity at most one step per token (64 on digits).")


if __name__ == "__main__":
    main()
