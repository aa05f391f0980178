"""Sampling-only settings of one trained CATDM model: is the sampler what loses at equal time?
Trains CATDM once, as ``compare`` does at equal time (``--budget`` CPU-seconds) or for ``--steps``, then samples the same model under each setting and prints
its FID. Nothing here costs training time, so any gain would carry over to equal time as is.

    python -m benchmarks.sampler_sweep --task digits --budget 100
    python -m benchmarks.sampler_sweep --task fashion-mnist --budget 100 --seed 1
    python -m benchmarks.sampler_sweep --task digits --steps 1300          # its default steps
    python -m benchmarks.sampler_sweep --quick                             # a tiny model: a check

Settings: sampling steps (25 / 50 / 100, ancestral), the DDIM sampler, ``final=sample``
(x drawn from P(x | z_0) instead of its argmax), and a posterior temperature tau: every
step's logits divided by tau before EMB_hat (eq. 2) is formed. tau < 1 sharpens P(x~ | z_t)
toward its argmax, the "clamping" of Diffusion-LM (Li et al. 2022); tau is a probe of this
script, not a catdiff setting.
"""
from __future__ import annotations

import argparse

from benchmarks.harness import config_set, fid_keys, quick, quick_argument, train
from catdiff import Engine
from catdiff.run.config import parse_sets

# (label, temperature, config overrides)
SETTINGS = [
    ("ancestral, 25 steps", 1.0, {"sample_steps": 25}),
    ("ancestral, 50 steps", 1.0, {"sample_steps": 50}),
    ("ancestral, 100 steps", 1.0, {"sample_steps": 100}),
    ("ddim, 50 steps", 1.0, {"sample_steps": 50, "sampler": "ddim"}),
    ("ancestral, 50 steps, final=sample", 1.0, {"sample_steps": 50, "final": "sample"}),
    *[(f"ancestral, 50 steps, tau {tau}", tau, {"sample_steps": 50}) for tau in (0.6, 0.8, 1.25, 1.5, 2.0)],
]


def fid(eng: Engine, samples: int, temperature: float, overrides: dict) -> tuple[float, float]:
    """(FID, floor) of ``samples`` draws from ``eng`` under the setting."""
    logits = eng.ema_eval.logits
    if temperature != 1.0:
        eng.ema_eval.logits = lambda *a, **k: logits(*a, **k) / temperature  # an instance attribute shadows the method
    try:
        with config_set(eng.cfg, overrides):
            tokens, labels = eng.task.generate(eng.context(), samples)
    finally:
        eng.ema_eval.__dict__.pop("logits", None)
    metrics = eng.task.evaluate(tokens, labels, None)
    key, floor = fid_keys(metrics)
    return metrics[key], metrics.get(floor, float("nan"))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="digits")
    p.add_argument("--seed", type=int, default=0)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--budget", type=float, default=100.0, help="CPU-seconds of training (compare's time mode)")
    group.add_argument("--steps", type=int, default=None, help="train this many steps instead of a budget")
    p.add_argument("--samples", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    quick_argument(p)
    a = quick(p, p.parse_args(argv), steps=2, samples=8)
    overrides = dict(parse_sets(a.sets), seed=a.seed, threads=a.threads) | ({"steps": a.steps} if a.steps else {})
    eng = Engine(a.task, **overrides)  # steps given here, so that a warmup derived from them follows
    res = train(eng, None if a.steps else a.budget, "cpu")
    print(f"{a.task}, seed {a.seed}: CATDM trained {eng.step} steps ({res['train_wall_s']:.0f} s wall); "
          f"FID over {a.samples} samples\n\n| sampling setting | FID |\n|---|---|", flush=True)
    for label, temperature, overrides in SETTINGS:
        value, floor = fid(eng, a.samples, temperature, overrides)
        print(f"| {label} | {value:.1f} |", flush=True)
    print(f"\nfloor (real samples): {floor:.2f}")


if __name__ == "__main__":
    main()
