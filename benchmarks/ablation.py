"""Paper 000 Table 1 ablations and the discrete-state baselines (Table 2), one task, same
backbone, budget and seeds, all measured in this run.

Arms: CSDM (plain VLB, eq. 3, no NS/RD), CSDM + l2, CATDM w/o CM / NS / RD, CATDM, and the
methods D3PM-uniform, VQ-Diffusion (ancestral and Improved VQ-Diffusion purity sampling of
the same trained model) and MaskGIT. Columns: the task's FID (image tasks) or bits per
token (text tasks: BPC; continuous methods and D3PM/VQ-Diffusion have bounds), the
embedding-variance summary (continuous methods only; paper Figure 1), wall time.

    python benchmarks/ablation.py [--task digits] [--steps N] [--seeds 0 1] [--samples 300]
    python benchmarks/ablation.py --arms CATDM CSDM --jobs 2 --threads 1   # two runs at once on 2 cores
    python benchmarks/ablation.py --shifts 0 -1 -2 -3 -4     # CATDM over the shift s (chose s = -3)
    python benchmarks/ablation.py --seeds 0 1 2 --models runs/bench-models   # keep the trained models

steps.py and dropping.py reuse :class:`Runner` and :func:`table` from here. With ``--models DIR``
each trained model is saved in DIR under a name made from its resolved training config and
seed, and any later run of these scripts that needs the same model (Table 1's CATDM is Table
6's "rand(0.2), z_0 0.5" and Table 10's CATDM) loads it instead of training it again.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import hashlib
import json
import math
import multiprocessing
import statistics
import time
from pathlib import Path

from catdiff import Engine
from catdiff.config import RUN_SETTINGS, component_settings, for_task, make, parse_sets
from catdiff.hooks import registry

# name -> (training overrides, sampling overrides); arms with equal training overrides share one model
ARMS = {
    "CSDM": ({"objective": "csdm", "shift": 0.0, "drop": "none"}, {}),
    "CSDM+l2": ({"objective": "csdm_l2", "shift": 0.0, "drop": "none"}, {}),
    "CATDM w/o CM": ({"beta_cm": 0.0}, {}),
    "CATDM w/o NS": ({"shift": 0.0}, {}),
    "CATDM w/o RD": ({"drop": "none"}, {}),
    "CATDM": ({}, {}),
    "D3PM-uniform": ({"method": "d3pm"}, {}),
    "VQ-Diffusion": ({"method": "vqdiffusion"}, {"sampler": "ancestral"}),
    "VQ-Diffusion+purity": ({"method": "vqdiffusion"}, {"sampler": "purity"}),
    "MaskGIT": ({"method": "maskgit"}, {}),
    "MDLM": ({"method": "mdlm"}, {}),  # masked diffusion on its continuous-time ELBO (cached sampler)
    "AR": ({"method": "ar"}, {}),  # the autoregressive anchor (raster order, exact NLL)
}
COLUMNS = [("fid_digits_classifier", "FID"), ("nll_bound_bits_per_token", "bits/tok"),
           ("class_entropy", "class H"), ("embedding_total_variance", "emb var"),
           ("embedding_participation_ratio", "eff.dims"), ("train_seconds", "train s"),
           ("sample_seconds", "sample s")]


@contextlib.contextmanager
def config_set(cfg, values: dict):
    """Set ``values`` on ``cfg`` (e.g. sampling settings of one evaluation) and restore them after."""
    saved = {k: getattr(cfg, k) for k in values}
    try:
        for k, v in values.items():
            setattr(cfg, k, v)
        yield cfg
    finally:
        for k, v in saved.items():
            setattr(cfg, k, v)


# keys a resume may change that still change the trained model (the others, sampling,
# bookkeeping and the machine, are not part of a saved model's name)
TRAINING = frozenset({"seed", "steps", "batch_size", "lr", "weight_decay", "warmup", "grad_clip", "ema_eval", "accum",
                      "precision"})


def model_key(task: str, overrides: dict) -> str:
    """A name for the model these overrides train: a hash of the resolved config (task defaults,
    derived values and all) where it differs from the core defaults, without the keys that do
    not change the model. Equal configs reached by different overrides (``{}`` and the
    defaults written out) share a name, and a key added to Config later (at its default)
    leaves the names of kept models as they were."""
    instance = registry().get("tasks", task).factory()
    resolved = for_task(instance, overrides=overrides).to_dict()
    settings = {**RUN_SETTINGS, **component_settings(instance, resolved["method"], resolved["backbone"])}
    core = make(method=resolved["method"], backbone=resolved["backbone"]).to_dict()
    not_training = {k for k, s in settings.items() if s.mutable} - TRAINING
    cfg = {k: v for k, v in resolved.items() if k not in not_training and (k not in core or v != core[k])}
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Runner:
    """Trains each distinct (task, training overrides, seed) once and evaluates it under any
    sampling overrides (sampler, sample_steps, ...). With ``--jobs N`` the trainings run in N
    worker processes at once (each with ``--threads`` torch threads); with ``--models DIR``
    trained models are kept in DIR and reused (module docstring)."""

    def __init__(self, args):
        self.task, self.steps, self.threads, self.samples = args.task, args.steps, args.threads, args.samples
        self.jobs = args.jobs
        self.sets = parse_sets(args.sets)
        self.models = Path(args.models) if getattr(args, "models", None) else None
        self.engines: dict = {}

    def engine(self, train: dict, seed: int) -> Engine:
        key = (tuple(sorted(train.items())), seed)
        if key not in self.engines:
            overrides = dict(self.sets, **train, seed=seed, threads=self.threads)
            if self.steps:
                overrides["steps"] = self.steps
            saved = self.models / f"{model_key(self.task, overrides)}.pt" if self.models else None
            if saved is not None and saved.exists():
                eng = Engine.from_checkpoint(saved, threads=self.threads)
                eng.train_seconds = json.loads(saved.with_suffix(".json").read_text())["train_seconds"]
                print(f"loaded {saved} (trained in {eng.train_seconds:.0f}s)", flush=True)
            else:
                t0 = time.perf_counter()
                eng = Engine(self.task, **overrides).fit()
                eng.train_seconds = time.perf_counter() - t0
                if saved is not None:  # the record first: a .pt without one is never left behind
                    saved.parent.mkdir(parents=True, exist_ok=True)
                    saved.with_suffix(".json").write_text(json.dumps(
                        {"task": self.task, "overrides": overrides, "train_seconds": eng.train_seconds}, default=str))
                    eng.save(saved)
            self.engines[key] = eng
        return self.engines[key]

    def run(self, train: dict, sample: dict, seed: int) -> dict:
        eng = self.engine(train, seed)
        with config_set(eng.cfg, sample):
            m = eng.evaluate(n_samples=self.samples)
        m["train_seconds"] = eng.train_seconds
        return m

    def run_many(self, specs: list[tuple[dict, list[dict], int]], report=None) -> list[list[dict]]:
        """``specs``: (training overrides, [sampling overrides, ...], seed) per model; returns the
        metrics of each sampling setting, in order. ``report(i, metrics_list)`` is called as
        each model finishes."""
        report = report or (lambda i, ms: None)
        if self.jobs <= 1:
            results = []
            for i, (train, samples, seed) in enumerate(specs):
                results.append([self.run(train, s, seed) for s in samples])
                self.engines.clear()  # one model at a time in memory
                report(i, results[-1])
            return results
        results: list = [None] * len(specs)
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(self.jobs, mp_context=ctx) as pool:
            futures = {pool.submit(_run_in_worker, self, train, samples, seed): i
                       for i, (train, samples, seed) in enumerate(specs)}
            for fut in concurrent.futures.as_completed(futures):
                i = futures[fut]
                results[i] = fut.result()
                report(i, results[i])
        return results


def _run_in_worker(runner: Runner, train: dict, samples: list[dict], seed: int) -> list[dict]:
    return [runner.run(train, s, seed) for s in samples]


def share_trainings(arms: dict, seeds) -> list:
    """[((training overrides, seed), [(arm, sampling overrides), ...]), ...] for ``arms`` (name ->
    (training, sampling) overrides): arms with equal training overrides (VQ-Diffusion and
    +purity) share one trained model."""
    models: dict = {}
    for seed in seeds:  # seed-major: an interrupted run has every arm of its first seeds
        for arm, (train, sample) in arms.items():
            models.setdefault((tuple(sorted(train.items())), seed), []).append((arm, sample))
    return list(models.items())


def table(rows: list[tuple[str, int, dict]], columns=COLUMNS) -> str:
    """One line per (arm, seed) and a mean line per arm (with the std over seeds when > 1)."""
    present = [(k, label) for k, label in columns if any(k in m for _, _, m in rows)]
    head = f"{'arm':<22}{'seed':>5}" + "".join(f"{label:>11}" for _, label in present)
    lines = [head, "-" * len(head)]
    fmt = lambda v: f"{v + 0.0:>11.4g}" if isinstance(v, float) and not math.isnan(v) else f"{'-':>11}"  # noqa: E731
    for arm, seed, m in rows:
        lines.append(f"{arm:<22}{seed:>5}" + "".join(fmt(m.get(k, float('nan'))) for k, _ in present))
    arms = list(dict.fromkeys(a for a, _, _ in rows))
    if len(rows) > len(arms):
        lines.append("-" * len(head))
        for arm in arms:
            ms = [m for a, _, m in rows if a == arm]
            cells = []
            for k, _ in present:
                vals = [m[k] for m in ms if k in m]
                if not vals:
                    cells.append(f"{'-':>11}")
                elif len(vals) > 1:
                    cells.append(" " + f"{statistics.fmean(vals):.4g}±{statistics.stdev(vals):.2g}".rjust(10))
                else:
                    cells.append(fmt(vals[0]))
            lines.append(f"{arm + ' mean':<27}" + "".join(cells))
    return "\n".join(lines)


def common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default="digits")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default: the task's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--samples", type=int, default=300, help="samples per FID (the digits floor uses 300)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (0 = torch default)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs trained at once in worker processes (e.g. --jobs 2 --threads 1 on 2 cores)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every run (e.g. batch_size=16)")
    p.add_argument("--models", default=None, metavar="DIR",
                   help="keep each trained model in DIR and reuse it in later runs (module docstring)")


def floor_note(rows) -> str:
    floor = next((m["fid_digits_classifier_real_test"] for _, _, m in rows if "fid_digits_classifier_real_test" in m), None)
    return "" if floor is None else f"FID floor (300 real test digits vs the reference set, same features): {floor:.3g}"


def main(default_arms=tuple(ARMS), description: str = __doc__.splitlines()[0]) -> None:
    p = argparse.ArgumentParser(description=description)
    common_arguments(p)
    p.add_argument("--arms", nargs="+", default=list(default_arms), choices=list(ARMS))
    p.add_argument("--shifts", type=float, nargs="*", default=[],
                   help="instead of the arms: CATDM at each shift s of the noise schedule")
    args = p.parse_args()
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
