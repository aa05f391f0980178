"""The GPU check's measurements (benchmarks/gpu_check.sh runs it with the tests and speed.py).

    python -m benchmarks.gpu_check [--device cuda] [--seconds 60] [--quick]

1. Mixed precision: ``catdiff run digits`` for ``--seconds`` of training each with
   ``precision=auto`` (bf16 on recent GPUs) and ``precision=fp32``, same seed and steps;
   FID over ``--samples`` samples and the bits/token bound of each (the same within seed noise
   is the check; the step-time ratio is the gain). Skipped, with the reason, where the digits
   task (scikit-learn) is missing.
2. Sampling throughput of CATDM (50 steps), MDLM (50 steps, cached) and AR (KV cache) at batch 1
   and 256 on an untrained digits-size model (64 tokens of 17 values; the network's cost does
   not depend on its weights): ms per sample and the ratio to AR's at the same batch.

3. The sampling-cost frontier's timing (benchmarks.frontier): ms per sample at batch 256 of
   every first-party method under every sampler it declares (AR: ``sample``, its KV cache) at
   ``--frontier-steps`` (default 2, 4, 8 and 50), on the same untrained model.

Every figure is a ratio or a per-sample time measured in this one run; the summary table is
the last thing printed.
"""
from __future__ import annotations

import argparse
import time

import torch

from catdiff import Engine
from catdiff.api.task import Task, TokenData

from benchmarks.harness import quick, quick_argument


class Grid64(Task):
    """64 tokens of 17 values, unconditional: the digits shape, without its data."""

    name, vocab_size, seq_len = "grid64", 17, 64
    defaults = dict(layers=4, heads=4, width=96, embed_dim=32, positions="sinusoidal", conv_kernel=3,
                    token_grid="8x8")

    def load(self, split):
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        return TokenData(torch.randint(0, 17, (256, 64), generator=g))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def precision_rows(device: str, seconds: float, samples: int, steps: int | None) -> list[tuple]:
    """(precision, steps, ms/step, FID, bits/token) for auto and fp32 on digits."""
    try:
        from catdiff.api.hooks import registry

        registry().get("tasks", "digits").factory().load("train")
    except Exception as e:  # noqa: BLE001 - reported in the table, the rest of the check goes on
        return [("digits", "skipped", f"{type(e).__name__}: {str(e).splitlines()[0][:80]}", "", "")]
    rows, planned = [], steps
    for precision in ("auto", "fp32"):
        eng = Engine("digits", device=device, precision=precision, seed=0, threads=0,
                     **({"steps": planned} if planned else {}))
        if planned is None:  # probe auto's step rate, then give both precisions the same steps
            eng.cfg.steps = 10
            eng.fit()
            sync(device)
            t0 = time.perf_counter()
            eng.cfg.steps = 30
            eng.fit()
            sync(device)
            rate = 20 / (time.perf_counter() - t0)
            planned = max(30, int(seconds * rate))
            eng = Engine("digits", device=device, precision=precision, seed=0, steps=planned)
        sync(device)
        t0 = time.perf_counter()
        eng.fit()
        sync(device)
        ms = 1000 * (time.perf_counter() - t0) / max(1, eng.step)
        metrics = eng.evaluate(n_samples=samples)
        rows.append((eng.precision, eng.step, f"{ms:.1f}", f"{metrics.get('fid_digits_classifier', float('nan')):.2f}",
                     f"{metrics.get('nll_bound_bits_per_token', float('nan')):.3f}"))
    return rows


def sampling_rows(device: str, batches: list[int], steps: int) -> list[tuple]:
    """(method, batch, ms/sample, network calls, ratio to AR) for catdm, mdlm and ar."""
    times = {}
    for method in ("catdm", "mdlm", "ar"):
        eng = Engine(Grid64(), method=method, device=device, steps=0, seed=0)
        for n in batches:
            eng.sample(min(n, 4), steps=steps, seed=0)  # warm-up (kernels, caches)
            sync(device)
            t0 = time.perf_counter()
            eng.sample(n, steps=steps, seed=1)
            sync(device)
            times[method, n] = 1000 * (time.perf_counter() - t0) / n
    calls = {"catdm": steps + 1, "mdlm": f"<= {steps}", "ar": Grid64.seq_len}
    return [(m, n, f"{times[m, n]:.3f}", calls[m], f"{times[m, n] / times['ar', n]:.2f}")
            for n in batches for m in ("catdm", "mdlm", "ar")]


def frontier_rows(device: str, batch: int, counts: list[int]) -> list[tuple]:
    """(method, sampler, steps, ms/sample, network calls) at ``batch`` for every first-party method
    and sampler: the time axis of benchmarks.frontier on this device."""
    from benchmarks.harness import CallCounter
    from catdiff.methods import builtin_methods

    rows = []
    for method, cls in builtin_methods().items():
        eng = Engine(Grid64(), method=method, device=device, steps=0, seed=0)
        for sampler in ("sample",) if method == "ar" else cls.samplers:
            for n in (None,) if method == "ar" else counts:
                eng.sample(min(batch, 4), steps=n or 2, sampler=sampler, seed=0)  # warm-up
                counter = CallCounter(eng.ema_eval.net)
                sync(device)
                t0 = time.perf_counter()
                eng.sample(batch, steps=n, sampler=sampler, seed=1, batch_size=batch)
                sync(device)
                counter.close()
                rows.append((method, sampler, n or "-", f"{1000 * (time.perf_counter() - t0) / batch:.4f}", counter.calls))
    return rows


def render(title: str, header: tuple, rows: list[tuple]) -> str:
    lines = [title, "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seconds", type=float, default=60.0, help="training time of each precision's digits run")
    p.add_argument("--samples", type=int, default=1000, help="samples for FID")
    p.add_argument("--train-steps", type=int, default=None, help="fix the digits steps instead of --seconds")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--frontier-steps", type=int, nargs="+", default=[2, 4, 8, 50])
    p.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0 = default)")
    quick_argument(p)
    args = quick(p, p.parse_args(argv), train_steps=2, samples=16, batches=[1, 4], sample_steps=4, frontier_steps=[2])
    if args.threads:
        torch.set_num_threads(args.threads)
    precision = precision_rows(args.device, args.seconds, args.samples, args.train_steps)
    sampling = sampling_rows(args.device, args.batches, args.sample_steps)
    front = frontier_rows(args.device, max(args.batches), args.frontier_steps)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"\n[gpu check] device {args.device} ({name}), torch {torch.__version__}\n")
    print(render("digits, precision=auto against fp32 (same steps):",
                 ("precision", "steps", "ms/step", "FID", "bits/token"), precision))
    print()
    print(render(f"sampling, untrained digits-size model, {args.sample_steps} steps (AR: one call per token):",
                 ("method", "batch", "ms/sample", "network calls", "/ AR"), sampling))
    print()
    print(render(f"frontier timing, batch {max(args.batches)}, every method and sampler:",
                 ("method", "sampler", "steps", "ms/sample", "network calls"), front))


if __name__ == "__main__":
    main()
