"""BPC of CATDM against its ablation arms at the same budget on ``text-tdavid``.

    python -m benchmarks.text_bpc [--steps 300] [--threads 1] [--draws 1] [--chunks 0] [--out DIR] [--quick]

Arms (paper 003 sec. 6 / app. F.4), all with the task's default model and budget:
  CATDM     the default objective (L0 + beta_DM L_DM + beta_CM L_CM, shifted schedule, rand(0.2))
  CSDM      objective=csdm, shift=0, drop=none: joint training on the plain bound (eq. 3)
  CATDM-CE  objective=ce: L_CE in place of L_CM
Each arm trains with the same seed, steps and batch; BPC is the eq. 3 bound over the test
split (``TextTask.bits_per_character``; the whole split unless ``--chunks``), +- its standard
error. Wall times are measured in this run on whatever the machine gives (shared CPUs: compare
them only within one run).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import QUICK_SETS, quick, quick_argument, train
from catdiff import Engine

# the training overrides of the same-named arms of the ablation and steps benchmarks
ARMS = {name: harness.ARMS[name][0] for name in ("CATDM", "CSDM", "CATDM-CE")}


def run_arm(name: str, overrides: dict, args, out: Path) -> dict:
    eng = Engine(task="text-tdavid", out=out / name, resume=False, threads=args.threads, seed=args.seed,
                 bpc_draws=args.draws, bpc_chunks=args.chunks, **({"steps": args.steps} if args.steps else {}),
                 **(QUICK_SETS if args.quick else {}), **overrides)
    train_s = train(eng)["train_wall_s"]  # the corpus load (cached) is not training time
    t0 = time.perf_counter()
    bpc = eng.task.bits_per_character(eng)
    eval_s = time.perf_counter() - t0
    sample = eng.task.tokenizer.decode(eng.sample(1, seed=args.seed)[0])
    return dict(arm=name, steps=eng.step, train_s=train_s, eval_s=eval_s, sample=sample, **bpc)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=0, help="training steps per arm (0: the task's default)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--draws", type=int, default=1, help="Monte-Carlo draws of t per test chunk")
    p.add_argument("--chunks", type=int, default=0, help="test chunks for BPC (0: the whole split)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {','.join(ARMS)}")
    p.add_argument("--out", help="directory for the arms' runs (default: a temporary one)")
    quick_argument(p)
    args = quick(p, p.parse_args(argv), steps=2, chunks=2)
    arms = args.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        p.error(f"unknown arm(s) {unknown}; choose from {list(ARMS)}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        rows = []
        for name in arms:
            rows.append(run_arm(name, ARMS[name], args, out))
            r = rows[-1]
            print(f"{name}: BPC {r['bpc']:.4f} +- {r['bpc_se']:.4f}, train {r['train_s']:.0f} s", flush=True)
    print(f"\ntext-tdavid, {rows[0]['steps']} steps per arm, BPC over {int(rows[0]['bpc_chunks'])} test chunks "
          f"x 256 chars, {int(rows[0]['bpc_draws'])} draw(s) of t per chunk")
    print(f"{'arm':<10} {'BPC':>10} {'+- se':>9} {'train s':>8} {'BPC eval s':>10}")
    for r in rows:
        print(f"{r['arm']:<10} {r['bpc']:>10.4f} {r['bpc_se']:>9.4f} {r['train_s']:>8.0f} {r['eval_s']:>10.0f}")
    print("\nsamples (one per arm, 100 ancestral steps):")
    for r in rows:
        print(f"{r['arm']:<10} {r['sample'][:120]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
