"""Every method at equal training time and at equal steps, all measured in one run.

CATDM and its Table 1 arms against the discrete-state methods (paper 000 Table 2) and an
autoregressive anchor: same task, backbone size, data, seeds and metrics.

    python -m benchmarks.compare                                   # digits, every method, both modes, 3 seeds
    python -m benchmarks.compare --tasks digits --methods catdm ar --seeds 0 1 2 --budget 200
    python -m benchmarks.compare --tasks text-tdavid --methods catdm ar --modes time --budget 300
    python -m benchmarks.compare --speed-only                      # CATDM 10 / 50 steps vs AR (KV cache)
    python -m benchmarks.compare --table results.json              # reprint the tables of a finished run
    python -m benchmarks.compare --quick                           # CATDM, VQ-Diffusion, AR, tiny: a check

Methods (``--methods``; one training each, a sampler arm is an evaluation of it):
  catdm        CATDM (the task defaults)
  csdm         CSDM: objective=csdm, shift=0, drop=none (the ablation's "CSDM": the plain VLB, no NS/RD)
  catdm-wocm   CATDM w/o CM (beta_cm=0)
  d3pm         D3PM-uniform
  vqdiffusion  VQ-Diffusion, evaluated with its ancestral sampler and with the purity sampler
  maskgit      MaskGIT (no likelihood)
  mdlm         MDLM (masked diffusion on its continuous-time ELBO)
  udlm         UDLM (uniform-state diffusion on its continuous-time ELBO)
  ar           autoregressive (the backbone made causal, KV-cache decoding, exact NLL)
  any other method a plugin registers, by its name, with its defaults
  NAME[K=V,..] a variant of one of these with its own settings, e.g. ``catdm[embed_norm=5.66]``
               (a lever arm: one training each, its own rows, beside the others of the same run)

Modes (``--modes``):
  steps  every method trains the task's default steps (or ``--steps``) with its LR schedule;
  time   every method trains for the same ``--budget`` seconds on the same threads. The
         cosine LR schedule needs its length in advance, so each run first trains the steps
         of its own warmup (up to 40; the warmup's LR does not depend on the length) and
         times the last of them: that step rate sets ``steps`` = the steps the budget will
         reach, and the run then trains in chunks (``eng.fit(until=...)``, each chunk sized by
         the rate so far) until it reaches them or the budget is spent, whichever is first.
         While it is in the first half of its plan, ``steps`` is re-planned after every chunk
         (at most ~20 s) from the rate of all steps since the probe: a probe slowed or sped up
         by a neighbour would otherwise leave budget unused or cut the schedule short (the
         first version, without it, stopped VQ-Diffusion seed 2 at 86 of 100 s). The re-plans
         are small once the rate has settled (a few percent), and the LR shifts by about as
         much; ``steps_first_plan`` records the probe's plan.
         So a run ends at the end of its own LR schedule (not cut off mid-schedule, as a fixed
         long schedule would be, and not idle, as a short one would be) and the probe is
         part of the budget, not extra. The steps reached are reported next to the plan.

Clock (``--clock``): ``cpu`` (default) is the process's CPU time, ``wall`` the wall clock. With
``--threads 1`` and an idle machine they agree; on a shared machine the wall clock measures the
neighbours too (on the 2-core machine of these runs a digits step took 1.5x its CPU time in wall
time while another engineer's tests ran), so CPU time is the fair "equal compute" clock there.
Both are recorded.

Evaluation of each trained model: the method's likelihood (bits/token: CATDM's eq. 3 bound,
the discrete ELBO of D3PM / VQ-Diffusion, AR's exact NLL; BPC on text tasks), and on image tasks
the task's FID (``evaluate`` of the task: digits-classifier FID against the train digits, with
the task's floor beside it: 300 real test digits on digits, as many real train images on
fashion-mnist) at every count of ``--sample-steps`` (AR has none: one row). A method's reported
step count is the one with the best FID averaged over the seeds (one choice per method, not per
seed). Cost of sampling: network evaluations per sample (forward calls of the backbone counted
by a hook; AR's each process one position through the KV cache, so "passes" gives the
positions processed per sample over seq_len as well), and seconds per sample at batch 256.

Samplers (``--samplers``): by default each method is sampled as listed above; with
``--samplers S ...`` each trained model is sampled once per listed sampler it has, ``all`` for
every sampler it declares, and ``SAMPLER[KEY=VALUE,...]`` with sampling settings of its own (e.g.
``dpmpp_2m[sample_grid=logsnr]``; ``mdlm:cached`` for one method only). ``--batch1 K`` also times K samples drawn one at a time
(latency, beside the batch-256 throughput).

Sampling speed (``--speed``, default on; ``--speed-only``): untrained CATDM at 10 / 50 steps
against AR with its KV cache, same size (the task defaults), batch 1 and batch 256, on CPU with
``--threads``; the ratio CATDM / AR is printed whichever way it goes.

Raw results go to ``--json`` (rewritten after every model, so an interrupted run keeps what it
finished; rerunning with the same file skips (task, method, seed, mode, budget) already there
unless ``--fresh``). The tables are markdown.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import (ARMS as TABLE1_ARMS, CLOCKS, PROBE_START, CallCounter, evaluate, mean_std as _ms,
                                quick, quick_argument, train, write_json)
from catdiff import Engine
from catdiff.api.errors import UserError
from catdiff.api.hooks import registry
from catdiff.run.config import RUN_SETTINGS, make, parse_sets

# short name -> (label, training overrides, [(arm label, sampling overrides), ...])
METHODS = {
    "catdm": ("CATDM", TABLE1_ARMS["CATDM"][0], [("CATDM", {})]),
    "csdm": ("CSDM", TABLE1_ARMS["CSDM"][0], [("CSDM", {})]),
    "catdm-wocm": ("CATDM w/o CM", TABLE1_ARMS["CATDM w/o CM"][0], [("CATDM w/o CM", {})]),
    "d3pm": ("D3PM-uniform", TABLE1_ARMS["D3PM-uniform"][0], [("D3PM-uniform", {})]),
    "vqdiffusion": ("VQ-Diffusion", TABLE1_ARMS["VQ-Diffusion"][0],
                    [("VQ-Diffusion", {"sampler": "ancestral"}), ("VQ-Diffusion+purity", {"sampler": "purity"})]),
    "maskgit": ("MaskGIT", TABLE1_ARMS["MaskGIT"][0], [("MaskGIT", {})]),
    "mdlm": ("MDLM", TABLE1_ARMS["MDLM"][0], [("MDLM", {})]),
    "udlm": ("UDLM", TABLE1_ARMS["UDLM"][0], [("UDLM", {})]),
    "ar": ("AR", TABLE1_ARMS["AR"][0], [("AR", {})]),
}
MODES = ("time", "steps")


def method_spec(name: str) -> tuple[str, dict, list]:
    """(label, training overrides, sampling arms) of a method name or a variant ``base[K=V,...]``."""
    base, _, rest = name.partition("[")
    entry = METHODS.get(base)
    if entry is None and base in registry().components["methods"]:  # a plugin's method, with its defaults
        entry = (base, {"method": base}, [(base, {})])
    if entry is None or (rest and not rest.endswith("]")):
        raise ValueError(f"unknown method {name!r}: one of {', '.join(METHODS)}, a registered method, "
                         f"or NAME[KEY=VALUE,...]")
    label, overrides, arms = entry
    if not rest:
        return label, overrides, arms
    sets = parse_sets([kv for kv in rest[:-1].split(",") if kv])
    tag = " ".join(f"{k}={v}" for k, v in sets.items())
    return f"{label} {tag}", dict(overrides, **sets), [(f"{arm} {tag}", o) for arm, o in arms]


def sampler_arms(method: str, samplers: list[str] | None) -> list:
    """The sampling arms of ``method``'s model: its own (``samplers`` None), else one per entry of
    ``samplers`` (``all``: every sampler the method declares; ``SAMPLER[K=V,...]``: with those
    sampling settings; ``METHOD:SAMPLER``: for that method only) whose sampler the method has;
    its own arms when it has none of them."""
    label, overrides, arms = method_spec(method)
    if not samplers:
        return arms
    factory = registry().get("methods", overrides.get("method", "catdm")).factory
    own, known = factory.samplers, {**RUN_SETTINGS, **{s.name: s for s in factory.settings}}
    out = []
    for spec in samplers:
        base, _, rest = spec.partition("[")
        scope, _, base = base.rpartition(":")
        if scope and scope != method.partition("[")[0]:
            continue  # METHOD:SAMPLER is for that method alone
        sets = parse_sets([kv for kv in rest.rstrip("]").split(",") if kv])
        names = own if base == "all" else [base] if base in own else []
        if names and set(sets) - set(known):
            raise ValueError(f"sampler {spec!r}: {label} has no setting {', '.join(sorted(set(sets) - set(known)))}")
        tag = "".join(f" {k}={v}" for k, v in sets.items())
        typed = {k: known[k].coerce(v) for k, v in sets.items()} if names else {}  # "false" -> False, as --set
        for name in names:
            out.append((f"{label} {name}{tag}", dict(typed, sampler=name)))
    return list({a: (a, o) for a, o in out}.values()) or arms


def sampler_name(spec: str) -> str:
    """argparse type: ``all``, a sampler name or ``SAMPLER[KEY=VALUE,...]``."""
    base, _, rest = spec.partition("[")
    if not base or (rest and not rest.endswith("]")):
        raise argparse.ArgumentTypeError(f"bad sampler {spec!r}: write all, NAME or NAME[KEY=VALUE,...]")
    try:
        parse_sets([kv for kv in rest[:-1].split(",") if kv])
    except Exception as e:
        raise argparse.ArgumentTypeError(f"bad sampler {spec!r}: {e}") from None
    return spec


def method_name(name: str) -> str:
    """argparse type: a known method or variant whose settings the method accepts (checked here,
    before any training: an unknown key or a bad value is an argparse error)."""
    try:
        _, overrides, _ = method_spec(name)
        make(**overrides)
    except (ValueError, UserError) as e:
        raise argparse.ArgumentTypeError(f"{name}: {e}") from None
    return name


# ----------------------------------------------------------------------------- one model, many
def run_one(task: str, method: str, seed: int, mode: str, *, budget: float, steps: int | None, sample_steps,
            samples: int, threads: int, clock: str, sets: dict, log, samplers=None, batch1: int = 0,
            train_bound: bool = False) -> dict:
    label, train_overrides, _ = method_spec(method)
    arms = sampler_arms(method, samplers)
    overrides = dict(sets, **train_overrides, seed=seed, threads=threads)
    if steps:
        overrides["steps"] = steps
    eng = Engine(task, **overrides)
    tick = CLOCKS[clock]
    res = train(eng, budget if mode == "time" else None, clock)  # loading the data is not training time
    log(f"trained {label} seed {seed} ({mode}): {eng.step} steps (planned {res['steps_planned']}) in "
        f"{res['train_s']:.1f} s {clock} ({res['train_wall_s']:.1f} s wall)")
    c0 = tick()
    lik, evals = evaluate(eng, arms, sample_steps, samples, tick, log, batch1, train_bound)
    if lik:
        log("  " + ", ".join(f"{k} {v:.4g}" for k, v in lik.items()))
    rec = dict(task=task, method=method, label=label, seed=seed, mode=mode, clock=clock,
               budget_s=budget if mode == "time" else None, steps=eng.step, s_per_step=res["train_s"] / max(1, eng.step),
               threads=threads, samples=samples, eval_s=tick() - c0, **res, **lik, evals=evals)
    del eng
    gc.collect()
    return rec


def run_key(rec: dict) -> tuple:
    return (rec["task"], rec["method"], rec["seed"], rec["mode"], rec["budget_s"])


def compare(tasks=("digits",), methods=tuple(METHODS), seeds=(0, 1, 2), modes=MODES, budget: float | None = None,
            steps: int | None = None, sample_steps=(25, 50, 100), samples: int = 500, threads: int = 1,
            clock: str = "cpu", sets: dict | None = None, json_path: str | Path | None = None,
            previous: list | None = None, log=print, samplers=None, batch1: int = 0) -> list[dict]:
    """Train and evaluate every (task, method, mode, seed); returns the records (also written to
    ``json_path`` after each). Runs go seed-major (all methods of seed 0 first), so a partial run
    has every method. ``budget`` None: the time CATDM's default steps take (probed, 20 steps).
    ``previous`` records with the same key are reused, not rerun."""
    sets = dict(sets or {})
    records = list(previous or [])
    done = {run_key(r) for r in records}
    for task in tasks:
        task_budget = budget
        if "time" in modes and task_budget is None:
            task_budget = default_budget(task, threads, clock, sets)
            log(f"{task}: budget {task_budget:.0f} s {clock} (the time of CATDM's default steps)")
        bounded = [m for m in methods if has_likelihood(m)]
        task_methods = bounded if is_text(task) else list(methods)
        if is_text(task) and len(bounded) < len(methods):
            log(f"{task}: skipping {sorted(set(methods) - set(bounded))} (no likelihood)")
        for seed in seeds:
            for mode in modes:
                for method in task_methods:
                    key = (task, method, seed, mode, task_budget if mode == "time" else None)
                    if key in done:
                        continue
                    rec = run_one(task, method, seed, mode, budget=task_budget, steps=steps,
                                  sample_steps=sample_steps, samples=samples, threads=threads, clock=clock,
                                  sets=sets, log=log, samplers=samplers, batch1=batch1)
                    records.append(rec)
                    done.add(key)
                    if json_path:
                        write_json(json_path, records=records)
    return records


def has_likelihood(method: str) -> bool:
    return method.partition("[")[0] != "maskgit"


def is_text(task: str) -> bool:
    return task.startswith("text")


def default_budget(task: str, threads: int, clock: str, sets: dict, probe: int = 20) -> float:
    eng = Engine(task, **dict(sets, threads=threads))
    eng.data("train"), eng.data("test")
    tick = CLOCKS[clock]
    eng.fit(until=PROBE_START)
    c = tick()
    eng.fit(until=PROBE_START + probe)
    return (tick() - c) / probe * eng.cfg.steps


# ----------------------------------------------------------------------------- sampling speed
def sampling_speed(task: str = "digits", threads: int = 1, batches=(1, 256), catdm_steps=(10, 50), sets=None,
                   repeats: int = 3, clock: str = "cpu", log=print) -> list[dict]:
    """Seconds per batch of untrained CATDM (at each step count) and AR (KV cache), same size."""
    sets = dict(sets or {})
    tick = CLOCKS[clock]
    engines = {"catdm": Engine(task, **dict(sets, threads=threads)),
               "ar": Engine(task, **dict(sets, threads=threads, method="ar"))}
    rows = []
    for b in batches:
        for name, n in [("catdm", s) for s in catdm_steps] + [("ar", None)]:
            eng = engines[name]
            eng.sample(min(b, 4), steps=n or 2)  # warm up
            times, walls = [], []
            counter = CallCounter(eng.ema_eval.net)
            for _ in range(repeats if b < 64 else 1):
                c0, w0 = tick(), time.perf_counter()
                eng.sample(b, steps=n, batch_size=max(b, 1))
                times.append(tick() - c0)
                walls.append(time.perf_counter() - w0)
            counter.close()
            calls = counter.calls / len(times)
            rows.append(dict(task=task, method=name, sample_steps=n, batch=b, s_per_batch=statistics.median(times),
                             wall_s_per_batch=statistics.median(walls), nfe=calls, clock=clock, threads=threads))
            log(f"speed {name} {n or '-'} steps batch {b}: {rows[-1]['s_per_batch']:.3f} s ({calls:.0f} calls)")
    ar = {r["batch"]: r["s_per_batch"] for r in rows if r["method"] == "ar"}
    for r in rows:
        r["ratio_to_ar"] = r["s_per_batch"] / ar[r["batch"]]
    return rows


# ----------------------------------------------------------------------------- tables
def arm_summary(records: list[dict]) -> list[dict]:
    """Per (task, mode, budget, arm): steps, times, the best step count by mean FID over seeds."""
    groups: dict = {}
    for r in records:
        groups.setdefault((r["task"], r["mode"], r["budget_s"], r["method"]), []).append(r)
    out = []
    for (task, mode, budget, method), recs in groups.items():
        arms = list(dict.fromkeys(e["arm"] for r in recs for e in r["evals"])) or [method_spec(method)[0]]
        for arm in arms:
            by_n: dict = {}
            for r in recs:
                for e in r["evals"]:
                    if e["arm"] == arm:
                        by_n.setdefault(e["sample_steps"], []).append((r["seed"], e))
            fid_mean = {n: statistics.fmean(e["fid"] for _, e in es) for n, es in by_n.items()
                        if all("fid" in e for _, e in es)}
            best = min(fid_mean, key=lambda n: fid_mean[n]) if fid_mean else None
            best_evals = [e for _, e in by_n.get(best, [])]
            out.append(dict(
                task=task, mode=mode, budget_s=budget, method=method, arm=arm, seeds=[r["seed"] for r in recs],
                steps=[r["steps"] for r in recs], train_s=[r["train_s"] for r in recs],
                ms_per_step=[1000 * r["s_per_step"] for r in recs],
                bits=[r.get("bpc", r.get("bits_per_token")) for r in recs],
                bits_se=[r.get("bpc_se", r.get("bits_per_token_se")) for r in recs],
                best_steps=best, fid=[e["fid"] for e in best_evals],
                fid_floor=[e["fid_floor"] for e in best_evals],
                fid_by_steps={n: [e["fid"] for _, e in es] for n, es in by_n.items()},
                nfe=[e["nfe_per_sample"] for e in best_evals],
                ms_per_sample=[1000 * e["sample_s_per_sample"] for e in best_evals]))
    return out


def markdown(records: list[dict], speed: list[dict] | None = None) -> str:
    lines = []
    summary = arm_summary(records)
    for key in dict.fromkeys((s["task"], s["mode"], s["budget_s"]) for s in summary):
        task, mode, budget = key
        rows = [s for s in summary if (s["task"], s["mode"], s["budget_s"]) == key]
        seeds = sorted({sd for s in rows for sd in s["seeds"]})
        what = f"equal training time, {budget:.0f} s each" if mode == "time" else "equal training steps"
        clock = next(r["clock"] for r in records if r["task"] == task)
        lines += ["", f"**{task}, {what}** (seeds {seeds}; times in {clock} seconds; mean ± std over seeds)", ""]
        text = is_text(task)
        if text:
            lines += ["| method | steps | ms/step | train s | BPC | s.e. (test chunks) |", "|---|---|---|---|---|---|"]
            for s in rows:
                lines.append(f"| {s['arm']} | {_ms(s['steps'], 4)} | {_ms(s['ms_per_step'])} | {_ms(s['train_s'])} "
                             f"| {_ms(s['bits'])} | {_ms(s['bits_se'], 2)} |")
            continue
        counts = sorted({n for s in rows for n in s["fid_by_steps"] if n is not None})
        head = ("| method | steps | ms/step | train s | FID (best n) | per seed | floor | "
                + " | ".join(f"FID@{n}" for n in counts) + " | NFE/sample | ms/sample | bits/token |")
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for s in rows:
            best = "–" if s["best_steps"] is None else str(s["best_steps"])
            cells = [_ms(s["fid_by_steps"][n], 3) if n in s["fid_by_steps"] else "–" for n in counts]
            if s["best_steps"] is None and s["fid"]:
                best = "its own"  # AR: no sampling steps
            lines.append(
                f"| {s['arm']} | {_ms(s['steps'], 4)} | {_ms(s['ms_per_step'])} | {_ms(s['train_s'])} "
                f"| **{_ms(s['fid'])}** ({best}) | {' / '.join(f'{v:.1f}' for v in s['fid'])} | {_ms(s['fid_floor'])} | "
                + " | ".join(cells) + f" | {_ms(s['nfe'])} | {_ms(s['ms_per_sample'])} | {_ms(s['bits'])} |")
    if speed:
        lines += ["", f"**Sampling speed** ({speed[0]['task']}, untrained models of the task's size, CPU, "
                      f"{speed[0]['threads']} thread(s), {speed[0]['clock']} seconds; ratio = method / AR at the same batch)", "",
                  "| sampler | batch | s per batch | ms per sample | network calls | ratio to AR |", "|---|---|---|---|---|---|"]
        for r in speed:
            name = f"CATDM {r['sample_steps']} steps" if r["method"] == "catdm" else "AR (KV cache)"
            lines.append(f"| {name} | {r['batch']} | {r['s_per_batch']:.3g} | {1000 * r['s_per_batch'] / r['batch']:.3g} "
                         f"| {r['nfe']:.0f} | {r['ratio_to_ar']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=["digits", "fashion-mnist"])
    p.add_argument("--methods", nargs="+", default=list(METHODS), type=method_name,
                   help=f"{' '.join(METHODS)}, or a variant NAME[KEY=VALUE,...] (default: all)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of training per method in time mode (default: the time of CATDM's default steps)")
    p.add_argument("--steps", type=int, default=None, help="steps in steps mode (default: the task's)")
    p.add_argument("--sample-steps", type=int, nargs="+", default=[25, 50, 100])
    p.add_argument("--samples", type=int, default=500, help="samples per FID (0: likelihood only)")
    p.add_argument("--samplers", nargs="+", type=sampler_name, default=None, metavar="SAMPLER",
                   help="sample each model with these samplers (all, NAME, NAME[KEY=VALUE,...]; default: its own arms)")
    p.add_argument("--batch1", type=int, default=0, metavar="K",
                   help="also time K samples drawn one at a time (ms/sample at batch 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the same for every method)")
    p.add_argument("--clock", choices=list(CLOCKS), default="cpu")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every run (e.g. bpc_chunks=512)")
    p.add_argument("--json", default="compare_results.json", help="raw results (read back to skip finished runs)")
    p.add_argument("--fresh", action="store_true", help="ignore the records already in --json")
    p.add_argument("--no-speed", dest="speed", action="store_false", help="skip the sampling-speed comparison")
    p.add_argument("--speed-only", action="store_true")
    p.add_argument("--table", metavar="JSON", help="only print the tables of a results file")
    quick_argument(p)
    args = quick(p, p.parse_args(argv), tasks=["digits"], methods=["catdm", "vqdiffusion", "ar"], seeds=[0],
                 budget=1.0, steps=12, sample_steps=[2], samples=16, fresh=True,
                 json=lambda: str(Path(tempfile.mkdtemp()) / "compare_quick.json"))
    for method in args.methods:  # a sampler's setting the method lacks: an argparse error, before any training
        try:
            sampler_arms(method, args.samplers)
        except (ValueError, UserError) as e:
            p.error(str(e))
    for spec in args.samplers or []:  # a sampler no method of the run has is a typo, not a choice
        scope, _, base = spec.partition("[")[0].rpartition(":")
        bases = {m.partition("[")[0] for m in args.methods}
        if scope and scope not in bases:
            p.error(f"sampler {spec!r} is for method {scope!r}, which is not among --methods ({', '.join(sorted(bases))})")
        have = {b: registry().get("methods", method_spec(b)[1].get("method", "catdm")).factory.samplers for b in bases}
        if base != "all" and not any(base in have[b] for b in ([scope] if scope else bases)):
            p.error(f"sampler {spec!r}: no method among --methods has it ("
                    + "; ".join(f"{b}: {', '.join(s)}" for b, s in sorted(have.items())) + ")")
    if args.table:
        data = json.loads(Path(args.table).read_text())
        print(markdown(data.get("records", []), data.get("speed")))
        return 0
    log = lambda *a: print(*a, flush=True)  # noqa: E731
    sets = parse_sets(args.sets)
    previous = []
    if Path(args.json).exists() and not args.fresh:
        previous = json.loads(Path(args.json).read_text()).get("records", [])
    t0 = time.perf_counter()
    records = previous
    if not args.speed_only:
        records = compare(args.tasks, args.methods, args.seeds, args.modes, args.budget, args.steps,
                          args.sample_steps, args.samples, args.threads, args.clock, sets, args.json, previous, log,
                          args.samplers, args.batch1)
    speed = None
    if args.speed or args.speed_only:
        small = dict(batches=(1, 8), catdm_steps=(2, 4), repeats=1) if args.quick else {}
        speed = sampling_speed(args.tasks[0] if not is_text(args.tasks[0]) else "digits", args.threads, sets=sets,
                               clock=args.clock, log=log, **small)
        write_json(args.json, speed=speed)
    log(f"\ncommand: python -m benchmarks.compare {' '.join(argv if argv is not None else sys.argv[1:])}; "
        f"{time.perf_counter() - t0:.0f} s wall")
    print(markdown(records, speed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
