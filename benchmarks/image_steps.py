"""FID against sampling steps (paper 000 Table 4 analogue) and the FID / IS-like trade-off over
guidance weights (paper 003 Figure 6a analogue), on the embedded Fashion-MNIST tasks.

    python -m benchmarks.image_steps [--ckpt RUN/last.pt] [--cond-ckpt RUN/last.pt]
        [--train-steps 1500] [--n 500] [--threads 1] [--out runs/image_steps] [--quick]

Without checkpoints it trains ``fashion-mnist`` and ``fashion-mnist-cond`` with the task
defaults (``--train-steps`` overrides the budget) into ``--out``, after ``catdiff prepare``'s
work if the tokens are missing. FID and IS-like are computed in the Fashion-MNIST classifier's
feature space (``fid_fashion_classifier``, ``is_fashion_classifier``), NOT Inception metrics;
``fid_real`` / ``fid_vq`` are the floors of N real images and of their VQ reconstructions.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.harness import QUICK_SETS, quick, quick_argument, train

STEPS = (5, 10, 20, 50, 100, 200)
SAMPLERS = ("ancestral", "ddim")
GUIDANCE = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0)


def engine(task_name: str, ckpt: str | None, out: Path, train_steps: int | None, threads: int, sets: dict):
    from catdiff.run.engine import Engine

    if ckpt:
        return Engine.from_checkpoint(ckpt, threads=threads)
    overrides = sets | {"threads": threads} | ({"steps": train_steps} if train_steps else {})
    eng = Engine(task=task_name, out=out / task_name, **overrides)
    try:
        eng.task.load("train")
    except FileNotFoundError:
        eng.task.prepare()
    res = train(eng)
    print(f"trained {task_name} to step {eng.step} in {res['train_wall_s']:.0f}s")
    return eng


def steps_table(eng, n: int, counts=STEPS) -> list[dict]:
    rows = []
    floors = eng.task.floors(n)
    print(f"\nFID (fashion classifier) vs sampling steps, {n} samples; floors: real {floors['fid_fashion_classifier_real']:.2f}, "
          f"VQ reconstructions {floors['fid_fashion_classifier_vq']:.2f}")
    print(f"{'steps':>6} " + " ".join(f"{s:>10}" for s in SAMPLERS) + "   seconds (ancestral, ddim)")
    for steps in counts:
        row, secs = {"steps": steps}, []
        for sampler in SAMPLERS:
            t0 = time.perf_counter()
            tokens = eng.sample(n, steps=steps, sampler=sampler)
            secs.append(time.perf_counter() - t0)
            row[sampler] = eng.task.evaluate(tokens, None, None)["fid_fashion_classifier"]
        row["seconds"] = secs
        rows.append(row)
        print(f"{steps:>6} " + " ".join(f"{row[s]:>10.2f}" for s in SAMPLERS) + f"   {secs[0]:.1f}, {secs[1]:.1f}", flush=True)
    return rows


def guidance_table(eng, n: int, weights=GUIDANCE) -> list[dict]:
    rows = []
    labels = torch.arange(n) % 10
    print(f"\nguidance trade-off, {n} samples, {eng.cfg.sample_steps} ancestral steps (fashion classifier metrics)")
    print(f"{'w':>5} {'FID':>8} {'IS-like':>8} {'label acc':>10}")
    for w in weights:
        tokens = eng.sample(n, labels=labels, guidance=w)
        m = eng.task.evaluate(tokens, labels, None)
        rows.append({"guidance": w, "fid": m["fid_fashion_classifier"], "is": m["is_fashion_classifier"],
                     "label_accuracy": m["label_accuracy"]})
        print(f"{w:>5.1f} {rows[-1]['fid']:>8.2f} {rows[-1]['is']:>8.2f} {rows[-1]['label_accuracy']:>10.3f}", flush=True)
    real_x, real_y = eng.task.raw("test")
    from catdiff_vision import fashion_classifier

    ref = fashion_classifier.metrics(real_x[:n], real_x[n:], eng.task.classifier_path(), fid=False)
    print(f"  (IS-like of {n} real test images: {ref['is_fashion_classifier']:.2f}; 10 = perfectly confident and balanced)")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", help="a trained fashion-mnist checkpoint (else trained here)")
    p.add_argument("--cond-ckpt", help="a trained fashion-mnist-cond checkpoint (else trained here)")
    p.add_argument("--train-steps", type=int, help="training steps when training here (default: task default)")
    p.add_argument("--n", type=int, default=500, help="samples per FID")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/image_steps")
    p.add_argument("--skip", choices=("steps", "guidance"), help="skip one of the two tables")
    quick_argument(p)
    args = quick(p, p.parse_args(argv), train_steps=2, n=16, out=tempfile.mkdtemp)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    sets = QUICK_SETS if args.quick else {}
    counts, weights = ((2, 4), (0.0, 1.0)) if args.quick else (STEPS, GUIDANCE)
    results = {}
    t0 = time.perf_counter()
    if args.skip != "steps":
        eng = engine("fashion-mnist", args.ckpt, out, args.train_steps, args.threads, sets)
        results["steps"] = steps_table(eng, args.n, counts)
    if args.skip != "guidance":
        cond = engine("fashion-mnist-cond", args.cond_ckpt, out, args.train_steps, args.threads, sets)
        results["guidance"] = guidance_table(cond, args.n, weights)
        from catdiff_vision.fashion import guidance_sweep

        print(f"wrote {guidance_sweep(cond.task, cond.context(), out / 'guidance_sweep.png', per_class=2)}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "image_steps.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\ntotal {time.perf_counter() - t0:.0f}s; wrote {out / 'image_steps.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
