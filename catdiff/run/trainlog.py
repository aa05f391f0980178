"""Training curves and progress: a CSV log always, TensorBoard or Weights & Biases on request.

Per-step values are summed on the device (no host synchronisation inside a step) and read
once every ``log_every`` steps. Progress goes to stderr: a tqdm bar on a terminal, one plain
line per log point otherwise (CI logs get lines, not a wall of carriage returns).
"""
from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import torch

from ..api.errors import UserError, naming
from .checkpoint import write_atomic

LOGGERS = ("auto", "csv", "tensorboard", "wandb")


def progress(total: int, desc: str, initial: int = 0, disable: bool = False):
    """A tqdm bar (with ETA) on a terminal; elsewhere :class:`PlainProgress` lines."""
    if not sys.stderr.isatty():
        return PlainProgress(total, desc, initial, disable)
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=disable, dynamic_ncols=True, file=sys.stderr)


class PlainProgress:
    """Progress for logs that are not a terminal: one plain line (``desc step/total rate eta``),
    at most every ``every`` seconds and at the end, never carriage returns; no line before a
    tenth of a second has passed (a rate over less would be noise). The subset of tqdm's
    interface that catdiff uses."""

    def __init__(self, total: int, desc: str, initial: int = 0, disable: bool = False, every: float = 10.0):
        self.total, self.desc, self.n, self.disable, self.every = total, desc, initial, disable, every
        self.start, self.t0, self.shown, self.postfix = initial, time.perf_counter(), -every, ""

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter() - self.t0
        if not self.disable and ((now - self.shown >= self.every and now >= 0.1) or self.n >= self.total):
            self.shown = now
            rate = (self.n - self.start) / max(now, 1e-9)
            eta = (self.total - self.n) / rate if rate > 0 else float("nan")
            print(f"{self.desc} {self.n}/{self.total}  {rate:.2f} it/s  eta {eta:.0f}s  {self.postfix}".rstrip(),
                  file=sys.stderr, flush=True)

    def set_postfix(self, refresh: bool = False, **values) -> None:
        self.postfix = "  ".join(f"{k} {v}" for k, v in values.items())

    def write(self, line: str, file=None) -> None:
        print(line, file=file or sys.stderr, flush=True)

    def close(self) -> None:
        pass


class CSVLog:
    """Rows appended to ``path`` (header once; a resumed run appends under the same columns).
    ``after``: the step a resumed run continues from; rows of later steps (logged by a run that
    stopped before it could save them, e.g. on a full disk) are dropped, since they are trained again."""

    def __init__(self, path: Path, after: int | None = None):
        self.path, self.file, self.writer, self.after = path, None, None, after

    def write(self, row: dict[str, float]) -> None:
        with naming(self.path):  # a full disk on a write names no file: name the log
            self._write(row)

    def _write(self, row: dict[str, float]) -> None:
        if self.file is None:
            new = not self.path.exists() or self.path.stat().st_size == 0
            self.file = self.path.open("a", newline="")
            fields = list(row)
            if not new:
                fields = self._header() or fields
                self._drop_after(fields)
            self.writer = csv.DictWriter(self.file, fieldnames=fields, extrasaction="ignore")
            if new:
                self.writer.writeheader()
        self.writer.writerow({k: row.get(k, "") for k in self.writer.fieldnames})
        self.file.flush()

    def _header(self) -> list[str]:
        """The columns of the log being resumed; a UserError for a log that is not a CSV text file."""
        with self.path.open("rb") as f:
            line = f.readline()
        try:
            fields = next(csv.reader([line.decode("utf-8")]), [])
        except (UnicodeDecodeError, csv.Error) as e:
            raise UserError(f"{self.path} is not a catdiff CSV log ({e}); move it aside (the run then starts a new "
                            "log and resumes from its checkpoint)") from None
        if b"\0" in line:
            raise UserError(f"{self.path} is not a catdiff CSV log (its header holds NUL bytes); move it aside (the "
                            "run then starts a new log and resumes from its checkpoint)")
        return fields

    def _drop_after(self, fields: list[str]) -> None:
        """Remove the rows of steps past ``after`` (rewritten in place, atomically)."""
        if self.after is None or "step" not in fields:
            return
        lines = self.path.read_bytes().decode("utf-8", "replace").splitlines(keepends=True)
        col = fields.index("step")
        keep = lines[:1] + [line for line in lines[1:] if not _past(line, col, self.after)]
        if len(keep) < len(lines):
            self.file.close()
            write_atomic("".join(keep).encode("utf-8"), self.path, "log")
            self.file = self.path.open("a", newline="")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _past(line: str, col: int, step: int) -> bool:
    cells = next(csv.reader([line]), [])
    try:
        return float(cells[col]) > step
    except (IndexError, ValueError):
        return False


class TrainLog:
    """``add`` each step's tensors, ``write`` at log points (one host read), ``scalars`` for
    evaluation results, ``close`` at the end. ``out=None`` (other ranks, no run directory):
    progress only, or nothing when ``quiet``."""

    def __init__(self, out: Path | None, total: int, start: int = 0, quiet: bool = False, logger: str = "auto",
                 run_id: str | None = None, config: dict | None = None):
        self.total, self.step0, self.t0 = total, start, time.perf_counter()
        self.sums: dict[str, torch.Tensor | float] = {}
        self.count = 0
        self.bar = progress(total, "train", initial=start, disable=quiet)
        self.csv = self.eval_csv = self.tb = self.wandb = None
        if out is None:
            return
        out.mkdir(parents=True, exist_ok=True)
        self.csv, self.eval_csv = CSVLog(out / "train_log.csv", start), CSVLog(out / "eval_log.csv", start)
        if logger in ("auto", "tensorboard"):
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except ImportError:
                if logger == "tensorboard":
                    raise UserError("logger=tensorboard needs the tensorboard package: "
                                    "pip install 'catdiff[tensorboard]'") from None
        elif logger == "wandb":
            try:
                import wandb
            except ImportError:
                raise UserError("logger=wandb needs the wandb package: pip install 'catdiff[wandb]', "
                                "or use logger=csv / tensorboard") from None
            self.wandb = wandb.init(project="catdiff", id=run_id, resume="allow", config=config, dir=str(out))

    def add(self, logs: dict[str, torch.Tensor | float]) -> None:
        for k, v in logs.items():
            v = v.detach().float() if isinstance(v, torch.Tensor) else float(v)
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.count += 1
        self.bar.update(1)

    def write(self, step: int) -> dict[str, float]:
        """Means since the last write (one host read of all of them), to every backend."""
        if not self.count:
            return {}
        keys = list(self.sums)
        tensors = [k for k in keys if isinstance(self.sums[k], torch.Tensor)]
        values = dict(zip(tensors, torch.stack([self.sums[k] for k in tensors]).tolist())) if tensors else {}
        means = {k: values.get(k, self.sums[k]) / self.count for k in keys}
        self.sums, self.count = {}, 0
        rate = (step - self.step0) / max(1e-9, time.perf_counter() - self.t0)
        row = {"step": step, "steps_per_s": rate, **means}
        if self.csv is not None:
            self.csv.write(row)
        self._backends(row, step, "train")
        self.bar.set_postfix(loss=f"{means.get('loss', float('nan')):.4g}", refresh=False)
        return means

    def scalars(self, step: int, metrics: dict[str, float]) -> None:
        """Evaluation results during training: eval_log.csv and the backends (``eval/`` prefix)."""
        row = {"step": step, **metrics}
        if self.eval_csv is not None:
            self.eval_csv.write(row)
        self._backends(row, step, "eval")
        if not self.bar.disable:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "step")
            self.bar.write(f"eval at step {step}: {shown}", file=sys.stderr)

    def _backends(self, row: dict[str, float], step: int, prefix: str) -> None:
        scalars = {f"{prefix}/{k}": v for k, v in row.items() if k != "step"}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def close(self) -> None:
        self.bar.close()
        for backend in (self.csv, self.eval_csv, self.tb):
            if backend is not None:
                backend.close()
        if self.wandb is not None:
            self.wandb.finish()
