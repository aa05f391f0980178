"""Training progress: a one-line progress bar on stderr, a CSV log and TensorBoard (when installed)."""
from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import torch


class TrainLog:
    def __init__(self, out: Path | None, total: int, start: int = 0, every: int = 10, quiet: bool = False):
        self.total, self.every, self.quiet = total, every, quiet
        self.t0, self.step0 = time.perf_counter(), start
        self.sums: dict[str, float] = {}
        self.count = 0
        self.csv = self.writer = self.tb = None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            path = out / "train_log.csv"
            self.csv = path.open("a", newline="")
            self.new_file = path.stat().st_size == 0
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self.tb = None

    def update(self, step: int, logs: dict[str, torch.Tensor], **extra) -> None:
        for k, v in {**logs, **extra}.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.count += 1
        if step % self.every and step != self.total:
            return
        means = {k: v / self.count for k, v in self.sums.items()}
        self.sums, self.count = {}, 0
        rate = (step - self.step0) / max(1e-9, time.perf_counter() - self.t0)
        if self.csv is not None:
            row = {"step": step, "steps_per_s": rate, **means}
            if self.writer is None:
                self.writer = csv.DictWriter(self.csv, fieldnames=list(row))
                if self.new_file:
                    self.writer.writeheader()
            self.writer.writerow({k: row.get(k, "") for k in self.writer.fieldnames})
            self.csv.flush()
        if self.tb is not None:
            for k, v in means.items():
                self.tb.add_scalar(f"train/{k}", v, step)
        if not self.quiet:
            done = int(30 * step / max(1, self.total))
            eta = (self.total - step) / max(rate, 1e-9)
            sys.stderr.write(f"\r[{'#' * done}{'.' * (30 - done)}] {step}/{self.total} "
                             f"loss {means.get('loss', float('nan')):.4g}  {rate:.2f} it/s  eta {eta:.0f}s ")
            sys.stderr.flush()

    def close(self) -> None:
        if not self.quiet:
            sys.stderr.write("\n")
        if self.csv is not None:
            self.csv.close()
        if self.tb is not None:
            self.tb.close()
