"""CPU threads on a shared machine: threads=0 (the cores free at start) against every core and one.

    python -m benchmarks.threads [--busy 1] [--steps 150] [--rounds 2] [--threads N] [--quick]

``threads=0`` is catdiff's default; every core is torch's own default.

Starts ``--busy`` processes that spin on a core each, then trains ``digits`` for ``--steps``
steps once per arm and round, each in a fresh process (so every arm sets its threads from
scratch), in interleaved order, and prints the median wall and CPU seconds of each arm and their
ratios to ``threads=0``. The machine's other load counts too: say what else ran beside it.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys

from benchmarks.harness import quick, quick_argument

CHILD = """
import json, sys, time
import torch
from catdiff import Engine
steps, threads = int(sys.argv[1]), int(sys.argv[2])
eng = Engine("digits", threads=threads, steps=10**6, log_every=10**6, ckpt_every=10**6, eval_every=0)
eng.fit(until=2)  # data loaded, first steps taken: not timed
w0, c0 = time.perf_counter(), time.process_time()
eng.fit(until=2 + steps)
print(json.dumps({"wall": time.perf_counter() - w0, "cpu": time.process_time() - c0,
                  "threads": torch.get_num_threads()}))
"""


def spin() -> None:
    while True:
        pass


def run_arm(steps: int, threads: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(steps), str(threads)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--busy", type=int, default=1, help="processes spinning on a core each while the arms run")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="one more arm with this many threads (0: none)")
    quick_argument(p)
    args = quick(p, p.parse_args(argv), busy=0, steps=3, rounds=1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    arms = {"threads=0 (free cores)": 0, f"every core ({cores}, torch's default)": cores, "threads=1": 1}
    if args.threads and args.threads not in arms.values():
        arms[f"threads={args.threads}"] = args.threads
    busy = [multiprocessing.Process(target=spin, daemon=True) for _ in range(args.busy)]
    for proc in busy:
        proc.start()
    try:
        runs = {name: [] for name in arms}
        for _ in range(args.rounds):
            for name, threads in arms.items():
                runs[name].append(run_arm(args.steps, threads))
    finally:
        for proc in busy:
            proc.terminate()
    print(f"\n{args.steps} digits steps beside {args.busy} busy core(s) of {cores}; load average at the end "
          f"{os.getloadavg()[0]:.1f}; median of {args.rounds} round(s)\n")
    print("| arm | threads | wall s | CPU s | wall / threads=0 | CPU / threads=0 |")
    print("|---|---|---|---|---|---|")
    base = {k: statistics.median(r[k] for r in runs[next(iter(arms))]) for k in ("wall", "cpu")}
    for name, rs in runs.items():
        wall, cpu = (statistics.median(r[k] for r in rs) for k in ("wall", "cpu"))
        print(f"| {name} | {'/'.join(str(r['threads']) for r in rs)} | {wall:.1f} | {cpu:.1f} | "
              f"{wall / base['wall']:.2f} | {cpu / base['cpu']:.2f} |")


if __name__ == "__main__":
    main()
