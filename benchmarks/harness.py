"""The one benchmark harness: what every script of ``benchmarks/`` trains, evaluates and prints with.

  ARMS           named (training overrides, sampling overrides) of the paper tables
  train          an Engine trained to its ``steps`` or for an equal-time ``budget`` (train_time)
  evaluate       likelihood, then the task's sample metrics per sampling arm and step count
  Runner         trains each distinct (task, training overrides, seed) once, keeps and reuses
                 models by their resolved settings (``--models``, model_key), evaluates under
                 any sampling overrides (config_set); ``--jobs`` worker processes
  table          one line per (arm, seed) and a mean ± std line per arm; mean_std for markdown
  write_json, append_jsonl, read_jsonl    results files (rewritten / appended as runs finish)
  quick          ``--quick``: the smallest run through a script's whole path

Equal time (train_time): the cosine LR schedule needs its length in advance, so a run first
trains the steps of its own warmup (up to 40; the warmup's LR does not depend on the length) and
times the last of them: that step rate sets ``steps`` = the steps the budget will reach, and the
run then trains in chunks (``eng.fit(until=...)``, each chunk sized by the rate so far) until it
reaches them or the budget is spent, whichever is first. While it is in the first half of its
plan, ``steps`` is re-planned after every chunk (at most ~20 s) from the rate of all steps since
the probe: a probe slowed or sped up by a neighbour would otherwise leave budget unused or cut
the schedule short. ``steps_first_plan`` records the probe's plan. So a run ends at the end of
its own LR schedule and the probe is part of the budget, not extra.
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
from typing import Callable

from catdiff import Engine
from catdiff.api.hooks import registry
from catdiff.run.config import RUN_SETTINGS, component_settings, for_task, make, parse_sets

# name -> (training overrides, sampling overrides); arms with equal training overrides share one model
ARMS = {
    "CSDM": ({"objective": "csdm", "shift": 0.0, "drop": "none"}, {}),
    "CSDM+l2": ({"objective": "csdm_l2", "shift": 0.0, "drop": "none"}, {}),
    "CATDM w/o CM": ({"beta_cm": 0.0}, {}),
    "CATDM w/o NS": ({"shift": 0.0}, {}),
    "CATDM w/o RD": ({"drop": "none"}, {}),
    "CATDM": ({}, {}),
    "CATDM-CE": ({"objective": "ce"}, {}),  # L_CE in place of L_CM (paper 003 Table 10)
    "D3PM-uniform": ({"method": "d3pm"}, {}),
    "VQ-Diffusion": ({"method": "vqdiffusion"}, {"sampler": "ancestral"}),
    "VQ-Diffusion+purity": ({"method": "vqdiffusion"}, {"sampler": "purity"}),
    "MaskGIT": ({"method": "maskgit"}, {}),
    "MDLM": ({"method": "mdlm"}, {}),  # masked diffusion on its continuous-time ELBO (cached sampler)
    "UDLM": ({"method": "udlm"}, {}),  # uniform-state diffusion on its continuous-time ELBO (Schiff et al. 2024)
    "AR": ({"method": "ar"}, {}),  # the autoregressive anchor (raster order, exact NLL)
}
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
# image tasks: the task's FID key and its floor's key (the first present is used)
FID_KEYS = (("fid_digits_classifier", "fid_digits_classifier_real_test"),
            ("fid_fashion_classifier", "fid_fashion_classifier_real"))
SAMPLE_BATCH = 256  # Engine.sample's batch
PROBE_START, PROBE_MAX = 5, 40  # time-mode probe: steps [PROBE_START, min(warmup, PROBE_MAX)) are timed
# --quick: a model of a few thousand weights, 4 sampling steps, one test batch for the bound
QUICK_SETS = {"layers": 1, "width": 32, "heads": 2, "embed_dim": 8, "warmup": 10, "sample_steps": 4,
              "eval_batches": 1}


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


# ----------------------------------------------------------------------------- training
def train(eng: Engine, budget: float | None = None, clock: str = "cpu") -> dict:
    """Load ``eng``'s data (not training time), then train it to its ``steps`` (``budget`` None)
    or for ``budget`` seconds of ``clock`` (module docstring). Returns the times and plans."""
    eng.data("train"), eng.data("test")
    tick = CLOCKS[clock]
    return train_steps(eng, tick) if budget is None else train_time(eng, budget, tick)


def train_steps(eng: Engine, clock: Callable[[], float]) -> dict:
    """Equal steps: the configured ``steps`` in one ``fit``."""
    c0, w0 = clock(), time.perf_counter()
    eng.fit()
    return dict(train_s=clock() - c0, train_wall_s=time.perf_counter() - w0, steps_planned=eng.cfg.steps,
                probe_s_per_step=float("nan"))


def train_time(eng: Engine, budget: float, clock: Callable[[], float], max_chunk_s: float = 20.0) -> dict:
    """Equal time: probe the step rate inside the warmup, set ``steps`` to what ``budget`` seconds
    reach, then train in chunks to those steps or until the budget is spent (module docstring)."""
    cfg = eng.cfg
    probe_end = max(PROBE_START + 5, min(cfg.warmup, PROBE_MAX))
    cfg.steps = max(cfg.steps, probe_end)  # a placeholder length; the warmup's LR does not read it
    c0, w0 = clock(), time.perf_counter()
    eng.fit(until=PROBE_START)
    c1 = clock()
    eng.fit(until=probe_end)
    rate = probe_rate = (clock() - c1) / (probe_end - PROBE_START)
    used = clock() - c0
    planned = first_plan = max(probe_end, probe_end + int((budget - used) / rate))
    cfg.steps = planned
    c_probe, s_probe = clock(), eng.step
    while eng.step < planned:
        left = budget - (clock() - c0)
        if left <= 0:
            break
        n = min(planned - eng.step, max(1, int(min(left, max_chunk_s) / rate)))
        eng.fit(until=eng.step + n)
        rate = (clock() - c_probe) / (eng.step - s_probe)  # every step since the probe
        if eng.step < planned / 2:  # re-plan in the first half (the cosine is still near its top)
            planned = cfg.steps = max(eng.step + 1, eng.step + int((budget - (clock() - c0)) / rate))
    return dict(train_s=clock() - c0, train_wall_s=time.perf_counter() - w0, steps_planned=planned,
                steps_first_plan=first_plan, probe_s_per_step=probe_rate)


# ----------------------------------------------------------------------------- evaluation
class CallCounter:
    """Counts forward calls of a module and the positions (input length) they processed."""

    def __init__(self, module):
        self.calls = self.positions = 0
        self.handle = module.register_forward_hook(self)

    def __call__(self, module, args, output):
        self.calls += 1
        self.positions += args[0].shape[1] if args and hasattr(args[0], "shape") and args[0].dim() >= 2 else 0

    def close(self):
        self.handle.remove()


def fid_keys(metrics: dict) -> tuple[str, str] | None:
    return next(((k, f) for k, f in FID_KEYS if k in metrics), None)


def likelihood(eng: Engine, train: bool = False) -> dict:
    """The method's bound (or AR's exact NLL) in bits per token, or BPC on text tasks; {} if none.
    ``train``: also on as many rows of the training split (``train_bits_per_token`` /
    ``train_bpc``), the overfitting check."""
    if not eng.method.has_bound:
        return {}
    if hasattr(eng.task, "bits_per_character"):
        out = dict(eng.task.bits_per_character(eng))
        if train:  # as many training chunks as test chunks were scored
            with config_set(eng.cfg, {"bpc_chunks": int(out["bpc_chunks"])}):
                out["train_bpc"] = eng.task.bits_per_character(eng, "train")["bpc"]
        return out
    r = eng.likelihood()
    out = {"bits_per_token": r["nll_bound_bits_per_token"], "bits_per_token_se": r["nll_bound_bits_per_token_se"]}
    if train:
        rows = len(eng.data("test"))
        out["train_bits_per_token"] = eng.likelihood("train", batches=math.ceil(rows / 128),
                                                     batch_size=128)["nll_bound_bits_per_token"]
    return out


def diversity(tokens, labels=None) -> dict:
    """How different the samples are, beside a feature-space FID that may not see it: the share of
    distinct sequences, and the mean share of positions in which a sample differs from the next one
    of the same label (any sample when unlabelled)."""
    import torch

    flat = torch.as_tensor(tokens).reshape(len(tokens), -1)
    if labels is None:
        same, rows = torch.ones(len(flat), dtype=torch.bool), flat
    else:
        first = torch.as_tensor(labels).reshape(len(flat), -1)[:, 0]  # a class label, or a condition's first id
        order = torch.argsort(first, stable=True)
        rows, lab = flat[order], first[order]
        same = lab == lab.roll(1)
    diff = (rows != rows.roll(1, 0)).float().mean(1)[same]
    return {"distinct_share": len(torch.unique(flat, dim=0)) / max(1, len(flat)),
            "pair_difference": diff.mean().item() if len(diff) else float("nan")}


def evaluate(eng: Engine, arms: list, sample_steps, samples: int, clock, log, batch1: int = 0,
             train_bound: bool = False) -> tuple[dict, list[dict]]:
    """Likelihood of ``eng`` and, for each sampling arm (label, sampling overrides) and step count,
    the task's sample metrics with the cost of sampling (network calls, seconds per sample at
    batch SAMPLE_BATCH and, with ``batch1`` > 0, over that many samples drawn one at a time).
    ``train_bound``: the bound on the training split too (:func:`likelihood`)."""
    task = eng.task
    lik = likelihood(eng, train_bound)
    evals = []
    if samples <= 0 or hasattr(task, "bits_per_character"):
        return lik, evals  # text tasks: BPC only
    counts = [None] if eng.cfg.method == "ar" else list(sample_steps)
    for arm, over in arms:
        for n in counts:
            counter = CallCounter(eng.ema_eval.net)
            try:
                with config_set(eng.cfg, dict(over, **({} if n is None else {"sample_steps": n}))):
                    c0, w0 = clock(), time.perf_counter()
                    tokens, labels = task.generate(eng.context(), samples)
                    dt, dw = clock() - c0, time.perf_counter() - w0
            finally:
                counter.close()
            metrics = dict(task.evaluate(tokens, labels, None), **diversity(tokens, labels))
            batches = math.ceil(samples / SAMPLE_BATCH)
            row = dict(arm=arm, sampler=over.get("sampler", eng.cfg.sampler or eng.method.samplers[0]),
                       sample_steps=n, nfe_per_sample=counter.calls / batches,
                       passes_per_sample=counter.positions / batches / task.seq_len,
                       sample_s_per_sample=dt / samples, sample_wall_s_per_sample=dw / samples,
                       **{k: v for k, v in metrics.items() if isinstance(v, (int, float))})
            if batch1 > 0:  # latency: the same sampler, one sample per call (labels, guidance as above)
                with config_set(eng.cfg, over):
                    c0, w0 = clock(), time.perf_counter()
                    eng.sample(batch1, steps=n, batch_size=1)
                    row["sample_s_per_sample_b1"] = (clock() - c0) / batch1
                    row["sample_wall_s_per_sample_b1"] = (time.perf_counter() - w0) / batch1
            keys = fid_keys(metrics)
            if keys:
                row["fid"], row["fid_floor"] = metrics[keys[0]], metrics.get(keys[1], float("nan"))
            evals.append(row)
            log(f"  {arm} {'' if n is None else f'{n} steps '}FID {row.get('fid', float('nan')):.2f} "
                f"(NFE {row['nfe_per_sample']:.0f}, {1000 * row['sample_s_per_sample']:.1f} ms/sample)")
    return lik, evals


# ----------------------------------------------------------------------------- kept models
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
    sampling overrides (sampler, sample_steps, ...) with ``Engine.evaluate``. With ``--jobs N``
    the trainings run in N worker processes at once (each with ``--threads`` torch threads);
    with ``--models DIR`` each trained model is saved in DIR under model_key's name, and any
    later run that needs the same model loads it instead of training it again."""

    def __init__(self, args):
        self.task, self.steps, self.threads, self.samples = args.task, args.steps, args.threads, args.samples
        self.jobs = args.jobs
        self.sets = parse_sets(args.sets)
        self.models = Path(args.models) if getattr(args, "models", None) else None
        self.engines: dict = {}

    def engine(self, train_overrides: dict, seed: int) -> Engine:
        key = (tuple(sorted(train_overrides.items())), seed)
        if key not in self.engines:
            overrides = dict(self.sets, **train_overrides, seed=seed, threads=self.threads)
            if self.steps:
                overrides["steps"] = self.steps
            saved = self.models / f"{model_key(self.task, overrides)}.pt" if self.models else None
            if saved is not None and saved.exists():
                eng = Engine.from_checkpoint(saved, threads=self.threads)
                eng.train_seconds = json.loads(saved.with_suffix(".json").read_text())["train_seconds"]
                print(f"loaded {saved} (trained in {eng.train_seconds:.0f}s)", flush=True)
            else:
                t0 = time.perf_counter()  # wall time of building, loading and training
                eng = Engine(self.task, **overrides)
                train(eng)
                eng.train_seconds = time.perf_counter() - t0
                if saved is not None:  # the record first: a .pt without one is never left behind
                    saved.parent.mkdir(parents=True, exist_ok=True)
                    saved.with_suffix(".json").write_text(json.dumps(
                        {"task": self.task, "overrides": overrides, "train_seconds": eng.train_seconds}, default=str))
                    eng.save(saved)
            self.engines[key] = eng
        return self.engines[key]

    def run(self, train_overrides: dict, sample: dict, seed: int) -> dict:
        eng = self.engine(train_overrides, seed)
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
            for i, (train_overrides, samples, seed) in enumerate(specs):
                results.append([self.run(train_overrides, s, seed) for s in samples])
                self.engines.clear()  # one model at a time in memory
                report(i, results[-1])
            return results
        results: list = [None] * len(specs)
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(self.jobs, mp_context=ctx) as pool:
            futures = {pool.submit(_run_in_worker, self, train_overrides, samples, seed): i
                       for i, (train_overrides, samples, seed) in enumerate(specs)}
            for fut in concurrent.futures.as_completed(futures):
                i = futures[fut]
                results[i] = fut.result()
                report(i, results[i])
        return results


def _run_in_worker(runner: Runner, train_overrides: dict, samples: list[dict], seed: int) -> list[dict]:
    return [runner.run(train_overrides, s, seed) for s in samples]


def share_trainings(arms: dict, seeds) -> list:
    """[((training overrides, seed), [(arm, sampling overrides), ...]), ...] for ``arms`` (name ->
    (training, sampling) overrides): arms with equal training overrides (VQ-Diffusion and
    +purity) share one trained model."""
    models: dict = {}
    for seed in seeds:  # seed-major: an interrupted run has every arm of its first seeds
        for arm, (train_overrides, sample) in arms.items():
            models.setdefault((tuple(sorted(train_overrides.items())), seed), []).append((arm, sample))
    return list(models.items())


def common_arguments(p: argparse.ArgumentParser) -> None:
    """The options of the Runner's scripts (ablation, steps, dropping)."""
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
                   help="keep each trained model in DIR and reuse it in later runs (benchmarks.harness.Runner)")
    quick_argument(p)


# ----------------------------------------------------------------------------- tables
COLUMNS = [("fid_digits_classifier", "FID"), ("nll_bound_bits_per_token", "bits/tok"),
           ("class_entropy", "class H"), ("embedding_total_variance", "emb var"),
           ("embedding_participation_ratio", "eff.dims"), ("train_seconds", "train s"),
           ("sample_seconds", "sample s")]


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


def mean_std(vals, digits=3) -> str:
    """A markdown cell: the value, or mean ± std over seeds; "–" when there is none."""
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}g}"
    return f"{statistics.fmean(vals):.{digits}g} ± {statistics.stdev(vals):.2g}"


def floor_note(rows) -> str:
    floor = next((m["fid_digits_classifier_real_test"] for _, _, m in rows if "fid_digits_classifier_real_test" in m), None)
    return "" if floor is None else f"FID floor (300 real test digits vs the reference set, same features): {floor:.3g}"


# ----------------------------------------------------------------------------- results files
def write_json(path, **parts) -> None:
    """Update the top-level ``parts`` of the JSON file at ``path`` (atomically: a crash keeps the old one)."""
    path = Path(path)
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(parts)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    tmp.replace(path)


def append_jsonl(path, row: dict) -> None:
    """One row appended to a JSON-lines file (parallel jobs may share it)."""
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- --quick
def quick_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="the smallest run through the whole benchmark (a tiny model, a few steps and samples; "
                        "seconds): a check that it works, not a measurement")


def quick(p: argparse.ArgumentParser, args, **values):
    """Under ``--quick``, ``values`` replace the arguments left at their defaults (a callable value
    is called then, e.g. ``tempfile.mkdtemp``), and a ``sets`` argument gets QUICK_SETS before
    the user's (which win). Returns ``args``."""
    if args.quick:
        for k, v in values.items():
            if getattr(args, k) == p.get_default(k):
                setattr(args, k, v() if callable(v) else v)
        if hasattr(args, "sets"):
            args.sets = [f"{k}={v}" for k, v in QUICK_SETS.items()] + list(args.sets)
    return args
