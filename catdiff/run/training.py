"""The training loop of ``Engine.fit``, top to bottom.

The loop receives what it uses (:class:`Parts`: the model, its EMA, the method, the optimizer,
the batches, the log, the checkpoint and evaluation calls) and moves a :class:`TrainState`
(the step and best.pt's record); it sees nothing else of the engine.

    fit          the run lock, deferred signals, the process group; then the loop:
      train_step   batch -> loss -> backward (accum micro-batches) -> optimizer -> EMAs
      every log_every / eval_every / ckpt_every step: a finite check, a log row, an
      evaluation (best.pt), a checkpoint (last.pt and keep_last step-numbered copies)

Each step's batch and noise come from named streams of (seed, step, rank, micro-batch)
(catdiff.api.streams), so a resumed run repeats an uninterrupted one exactly (same device and
thread count). Under ``torchrun`` each rank trains its share of the global batch in
DistributedDataParallel; rank 0 writes checkpoints and logs, and evaluates alone while its
peers wait.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist

from ..api import streams
from ..api.errors import TrainingInterrupted, UserError
from ..nn.model import ema_update
from .feed import BatchFeed
from .interrupts import DeferredSignals
from .trainlog import TrainLog

SLOW_RUN_S = 1800  # on the CPU, a run whose remaining steps would take longer than this says so
TIMED_STEPS = 5    # steps timed for that projection (after the first, which pays for setup)


def adamw(params, lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW (betas 0.9, 0.99), fused where torch has a fused kernel for the parameters' device.

    On CPU torch's default is a per-tensor loop; the fused kernel does the same update ~3x
    faster (benchmarks/speed.py times training steps with this optimizer)."""
    params = list(params)
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.99), fused=fused or None)


@dataclass
class TrainState:
    """What training moves, saved with every checkpoint."""

    step: int = 0
    best: dict[str, Any] | None = None  # {"metric", "mode", "value", "step"} of best.pt


@dataclass
class Parts:
    """What the loop uses, handed over by ``Engine.fit``."""

    cfg: Any                          # the run's Config
    model: torch.nn.Module            # trained in place (wrapped in DDP under torchrun)
    ema_eval: torch.nn.Module         # the sampling EMA, moved after every step
    method: Any                       # catdiff.Method: the loss, and the copies it keeps
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    autocast: Callable[[], Any]       # the precision's autocast context
    group: Any                        # catdiff.run.distributed.ProcessGroup: device, rank, world, marks
    null_class: int                   # > 0: labels are classes and this is the null one (guidance)
    feed: Callable[[int, int], BatchFeed]   # (first step, stop) -> this rank's batches (data checked)
    log: Callable[[int, int], TrainLog]     # (first step, stop) -> the log
    run: Any                          # catdiff.run.rundir.RunDir, or None (nothing written)
    save: Callable[[], Any]           # the checkpoint of the state now, to last.pt
    save_best: Callable[[], Any]      # ... to best.pt
    evaluate: Callable[[], dict]      # rank 0's metrics of the model now (eval_every)
    best_metric: tuple[str, str] | None   # (metric, "min" | "max") that best.pt keeps


def fit(parts: Parts, state: TrainState, until: int | None = None) -> TrainState:
    """Train to ``cfg.steps`` (or stop early at step ``until``); see ``Engine.fit``."""
    with DeferredSignals() as signals, parts.group.training():
        try:
            return _loop(parts, state, until, signals)
        except RuntimeError as e:
            peer_lost = isinstance(e, dist.DistError) or any(
                m in str(e) for m in ("Timed out", "timed out", "Connection closed by peer", "Connection reset"))
            if parts.group.world > 1 and peer_lost:
                raise UserError(_peers_lost(parts, state, str(e).splitlines()[0][:200])) from None
            raise


def _loop(parts: Parts, state: TrainState, until: int | None, signals: DeferredSignals) -> TrainState:
    cfg, group, rank0 = parts.cfg, parts.group, parts.group.rank == 0
    stop = min(cfg.steps, until) if until is not None else cfg.steps
    feed = parts.feed(state.step, stop)  # loads and checks the data first
    try:
        log = parts.log(state.step, stop)
    except BaseException:
        feed.close()
        raise
    # broadcast_buffers=False: the backbones' buffers are constants (positions, masks) and rank 0's
    # are the ones saved, so forward needs no collective; the gradient exchange in backward is a
    # step's first, and a peer hung before it is named by where it hangs (catdiff.run.heartbeat)
    ddp = (torch.nn.parallel.DistributedDataParallel(parts.model, broadcast_buffers=False)
           if group.active else None)
    finite = torch.ones((), dtype=torch.bool, device=group.device)  # every step since `checked` was finite
    checked = first = state.step
    parts.model.train()
    try:
        while state.step < stop:
            finite = finite & train_step(parts, state, ddp, feed, log)
            state.step += 1
            if state.step == first + 1:
                timed_from = time.perf_counter()
            elif state.step == first + 1 + TIMED_STEPS and rank0 and group.device.type == "cpu":
                say_if_slow(state.step, time.perf_counter() - timed_from, stop, log)
            at_log = state.step % cfg.log_every == 0 or state.step == stop
            # one process reads its signal flag every step; DDP ranks agree on it at log points
            if group.world == 1:
                signum = signals.received or 0
            else:
                signum = group.agree(signals.received or 0) if at_log else 0
            save = parts.run is not None and rank0 and (state.step % cfg.ckpt_every == 0 or signum)
            evaluate = cfg.eval_every and state.step % cfg.eval_every == 0
            if not (at_log or save or evaluate or signum):
                continue  # no host synchronisation between these points
            checked = check_finite(parts, state, finite, checked)
            if at_log:
                log.write(state.step)
            if evaluate:
                group.mark(state.step, "evaluation")
                evaluate_during_training(parts, state, log)
            if save:
                group.mark(state.step, "checkpoint")
                parts.save()
                if not signum:
                    parts.run.keep_step(state.step, cfg.keep_last)
            if signum:
                raise TrainingInterrupted(signum, state.step, parts.run.last if save else None)
    finally:
        feed.close()
        log.close()
    if parts.run is not None and rank0:
        parts.save()
    return state


def train_step(parts: Parts, state: TrainState, ddp, feed: BatchFeed, log: TrainLog) -> torch.Tensor:
    """One optimizer step on the global batch of ``state.step``, in ``accum`` micro-batches (DDP
    syncs gradients on the last one only). Each micro-batch's loss is weighted by its share of
    the rows, so a batch-mean loss gives the gradient of the whole batch however it is split.
    Micro-batch j draws its noise from stream ``train`` of (seed, step, rank, j): splitting a
    batch another way draws other (equally distributed) noise. Returns a device flag "loss and
    gradient finite" (no host read)."""
    cfg, step, model, group = parts.cfg, state.step, ddp or parts.model, parts.group
    # the batch
    group.mark(step, "batch")
    streams.seed_global(cfg.seed, "train", step, group.rank)
    x, cond = feed.get(step)
    cond = drop_conditions(cond, parts.null_class, cfg.cond_drop)
    lr = lr_at(cfg, step)
    for param_group in parts.optimizer.param_groups:
        param_group["lr"] = lr
    parts.optimizer.zero_grad(set_to_none=True)
    # loss and backward, micro-batch by micro-batch
    xs = x.tensor_split(cfg.accum)
    conds = cond.tensor_split(cfg.accum) if cond is not None else [None] * cfg.accum
    total, logs = 0.0, {}
    for j, (xj, cj) in enumerate(zip(xs, conds)):
        if j:
            streams.seed_global(cfg.seed, "train", step, group.rank, micro=j)
        weight = len(xj) / len(x)
        sync = ddp.no_sync() if ddp is not None and j < cfg.accum - 1 else contextlib.nullcontext()
        with sync:
            group.mark(step, "forward")
            with parts.autocast():
                loss, terms = parts.method.loss(model, xj, cj)
            group.mark(step, "backward")
            parts.scaler.scale(loss * weight).backward()
        total = total + loss.detach() * weight
        for k, v in terms.items():
            logs[k] = logs[k] + v * weight if k in logs else v * weight
    # the optimizer step, then the method's copies (a teacher EMA) and the sampling EMA
    group.mark(step, "optimizer step")
    parts.scaler.unscale_(parts.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(parts.model.parameters(), cfg.grad_clip)
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    parts.method.after_step(parts.model)
    ema_update(parts.ema_eval, parts.model, min(cfg.ema_eval, (1 + step) / (10 + step)))
    log.add({**logs, "lr": lr, "grad_norm": grad_norm, "batch": cfg.batch_size})
    # with loss scaling a non-finite gradient only skips the step (GradScaler); that is no divergence
    return torch.isfinite(total) & (torch.isfinite(grad_norm) | parts.scaler.is_enabled())


def lr_at(cfg, step: int) -> float:
    """Linear warmup, then cosine decay to 10% of ``lr`` at ``steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def drop_conditions(cond, null_class: int, rate: float):
    """Classifier-free guidance training: each class label becomes the learnable null one
    (``null_class``; 0: the labels are no classes) with probability ``rate`` (``cond_drop``)."""
    if not null_class:
        return cond
    drop = torch.rand(cond.shape, device=cond.device) < rate
    return torch.where(drop, null_class, cond)


def check_finite(parts: Parts, state: TrainState, finite: torch.Tensor, checked: int) -> int:
    """Stop on a non-finite loss or gradient since step ``checked`` (one host read); non-finite
    weights are never saved. Returns the step now known to be finite."""
    if not bool(finite):
        last = parts.run.last if parts.run is not None else None
        if last is None:
            kept = "nothing was saved"
        elif last.exists():
            kept = f"the last checkpoint, {last}, is kept"
        else:  # diverged before the first checkpoint: there is nothing to resume from
            kept = f"no checkpoint was written yet (the first is due at step {parts.cfg.ckpt_every})"
        raise UserError(f"training diverged: a non-finite loss or gradient between steps {checked + 1} and "
                        f"{state.step}; {kept}. Lower lr, raise warmup, or check the data")
    return state.step


def evaluate_during_training(parts: Parts, state: TrainState, log: TrainLog) -> None:
    """``eval_every``: ``parts.evaluate()`` (the engine's: the bound on the first ``eval_batches`` x
    128 test rows and the task's metrics of ``eval_samples`` samples), logged; keeps best.pt by
    ``best_metric``. Rank 0 evaluates alone; its DDP peers wait while it beats."""
    done = f"catdiff/evaluated/{state.step}"
    if parts.group.rank != 0:  # wait for rank 0 as long as it is alive, however long it evaluates
        parts.group.wait_for(done, lambda why: _peers_lost(parts, state, why))
        return
    try:
        metrics = parts.evaluate()
    finally:
        parts.group.announce(done)
    log.scalars(state.step, metrics)
    name, mode = parts.best_metric or (None, None)
    value = metrics.get(name) if name else None
    if value is None or not math.isfinite(value):
        return
    if state.best is None or (value < state.best["value"] if mode == "min" else value > state.best["value"]):
        state.best = {"metric": name, "mode": mode, "value": value, "step": state.step}
        if parts.run is not None:
            parts.save_best()


def say_if_slow(step: int, seconds: float, stop: int, log: TrainLog) -> None:
    """One line when ``TIMED_STEPS`` steps took ``seconds`` and the rest of the run would take
    longer than ``SLOW_RUN_S`` (the paper's model sizes take hours on a CPU)."""
    per_step = seconds / TIMED_STEPS
    left = per_step * (stop - step)
    if left > SLOW_RUN_S:
        log.bar.write(f"catdiff: {per_step:.2f}s per step on the CPU: the remaining {stop - step} steps "
                      f"take about {left / 3600:.1f} h; a GPU (device=cuda), a smaller model (layers, width) "
                      f"or fewer steps would be faster", file=sys.stderr)


def _peers_lost(parts: Parts, state: TrainState, error: str) -> str:
    return parts.group.lost_message(error, state.step, parts.run.last if parts.run is not None else None)
