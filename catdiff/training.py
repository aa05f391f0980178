"""The training loop of ``Engine.fit``, top to bottom.

    fit          the run lock, deferred signals, the process group; then the loop:
      train_step   batch -> loss -> backward (accum micro-batches) -> optimizer -> EMAs
      every log_every / eval_every / ckpt_every step: a finite check, a log row, an
      evaluation (best.pt), a checkpoint (last.pt and keep_last step-numbered copies)

Each step's batch and noise come from named streams of (seed, step, rank, micro-batch)
(catdiff.streams), so a resumed run repeats an uninterrupted one exactly (same device and
thread count). Under ``torchrun`` each rank trains its share of the global batch in
DistributedDataParallel; rank 0 writes checkpoints and logs, and evaluates alone while its
peers wait.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time

import torch
import torch.distributed as dist

from . import streams
from .context import RunContext
from .errors import TrainingInterrupted, UserError
from .feed import BatchFeed
from .interrupts import DeferredSignals
from .model import ema_update
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


def fit(eng, until: int | None = None):
    """Train ``eng`` to ``cfg.steps`` (or stop early at step ``until``); see ``Engine.fit``."""
    with eng.writing(), DeferredSignals() as signals, eng.group.training():
        try:
            return _loop(eng, until, signals)
        except RuntimeError as e:
            peer_lost = isinstance(e, dist.DistError) or any(
                m in str(e) for m in ("Timed out", "timed out", "Connection closed by peer", "Connection reset"))
            if eng.world > 1 and peer_lost:
                raise UserError(_peers_lost(eng, str(e).splitlines()[0][:200])) from None
            raise


def _loop(eng, until: int | None, signals: DeferredSignals):
    cfg, rank0 = eng.cfg, eng.rank == 0
    data = eng.data("train")
    eng.data("test")  # checked before training, not after it
    stop = min(cfg.steps, until) if until is not None else cfg.steps
    log = TrainLog(eng.out if rank0 else None, total=stop, start=eng.step, quiet=not rank0,
                   logger=cfg.logger, run_id=eng.run_id, config=cfg.to_dict())
    feed = BatchFeed(eng, data, eng.step, stop)
    # broadcast_buffers=False: the backbones' buffers are constants (positions, masks) and rank 0's
    # are the ones saved, so forward needs no collective; the gradient exchange in backward is a
    # step's first, and a peer hung before it is named by where it hangs (catdiff.heartbeat)
    ddp = (torch.nn.parallel.DistributedDataParallel(eng.model, broadcast_buffers=False)
           if eng.group.active else None)
    finite = torch.ones((), dtype=torch.bool, device=eng.device)  # every step since `checked` was finite
    checked = first = eng.step
    eng.model.train()
    try:
        while eng.step < stop:
            finite = finite & train_step(eng, ddp, feed, log)
            eng.step += 1
            if eng.step == first + 1:
                timed_from = time.perf_counter()
            elif eng.step == first + 1 + TIMED_STEPS and rank0 and eng.device.type == "cpu":
                say_if_slow(eng, time.perf_counter() - timed_from, stop, log)
            at_log = eng.step % cfg.log_every == 0 or eng.step == stop
            # one process reads its signal flag every step; DDP ranks agree on it at log points
            if eng.world == 1:
                signum = signals.received or 0
            else:
                signum = eng.group.agree(signals.received or 0) if at_log else 0
            save = eng.run is not None and rank0 and (eng.step % cfg.ckpt_every == 0 or signum)
            evaluate = cfg.eval_every and eng.step % cfg.eval_every == 0
            if not (at_log or save or evaluate or signum):
                continue  # no host synchronisation between these points
            checked = check_finite(eng, finite, checked)
            if at_log:
                log.write(eng.step)
            if evaluate:
                eng.group.mark(eng.step, "evaluation")
                evaluate_during_training(eng, log)
            if save:
                eng.group.mark(eng.step, "checkpoint")
                eng.save()
                if not signum:
                    eng.run.keep_step(eng.step, cfg.keep_last)
            if signum:
                raise TrainingInterrupted(signum, eng.step, eng.run.last if save else None)
    finally:
        feed.close()
        log.close()
    if eng.run is not None and rank0:
        eng.save()
    return eng


def train_step(eng, ddp, feed: BatchFeed, log: TrainLog) -> torch.Tensor:
    """One optimizer step on the global batch of ``eng.step``, in ``accum`` micro-batches (DDP
    syncs gradients on the last one only). Each micro-batch's loss is weighted by its share of
    the rows, so a batch-mean loss gives the gradient of the whole batch however it is split.
    Micro-batch j draws its noise from stream ``train`` of (seed, step, rank, j): splitting a
    batch another way draws other (equally distributed) noise. Returns a device flag "loss and
    gradient finite" (no host read)."""
    cfg, step, model = eng.cfg, eng.step, ddp or eng.model
    # the batch
    eng.group.mark(step, "batch")
    streams.seed_global(cfg.seed, "train", step, eng.rank)
    x, cond = feed.get(step)
    cond = drop_conditions(eng, cond)
    lr = lr_at(cfg, step)
    for group in eng.optimizer.param_groups:
        group["lr"] = lr
    eng.optimizer.zero_grad(set_to_none=True)
    # loss and backward, micro-batch by micro-batch
    xs = x.tensor_split(cfg.accum)
    conds = cond.tensor_split(cfg.accum) if cond is not None else [None] * cfg.accum
    total, logs = 0.0, {}
    for j, (xj, cj) in enumerate(zip(xs, conds)):
        if j:
            streams.seed_global(cfg.seed, "train", step, eng.rank, micro=j)
        weight = len(xj) / len(x)
        sync = ddp.no_sync() if ddp is not None and j < cfg.accum - 1 else contextlib.nullcontext()
        with sync:
            eng.group.mark(step, "forward")
            with eng.autocast:
                loss, parts = eng.method.loss(model, xj, cj)
            eng.group.mark(step, "backward")
            eng.scaler.scale(loss * weight).backward()
        total = total + loss.detach() * weight
        for k, v in parts.items():
            logs[k] = logs[k] + v * weight if k in logs else v * weight
    # the optimizer step, then the method's copies (a teacher EMA) and the sampling EMA
    eng.group.mark(step, "optimizer step")
    eng.scaler.unscale_(eng.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(eng.model.parameters(), cfg.grad_clip)
    eng.scaler.step(eng.optimizer)
    eng.scaler.update()
    eng.method.after_step(eng.model)
    ema_update(eng.ema_eval, eng.model, min(cfg.ema_eval, (1 + step) / (10 + step)))
    log.add({**logs, "lr": lr, "grad_norm": grad_norm, "batch": cfg.batch_size})
    # with loss scaling a non-finite gradient only skips the step (GradScaler); that is no divergence
    return torch.isfinite(total) & (torch.isfinite(grad_norm) | eng.scaler.is_enabled())


def lr_at(cfg, step: int) -> float:
    """Linear warmup, then cosine decay to 10% of ``lr`` at ``steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def drop_conditions(eng, cond):
    """Classifier-free guidance training: each class label becomes the learnable null one
    with probability ``cond_drop``."""
    if not eng.task.num_classes:
        return cond
    drop = torch.rand(cond.shape, device=eng.device) < eng.cfg.cond_drop
    return torch.where(drop, eng.task.num_classes, cond)


def check_finite(eng, finite: torch.Tensor, checked: int) -> int:
    """Stop on a non-finite loss or gradient since step ``checked`` (one host read); non-finite
    weights are never saved. Returns the step now known to be finite."""
    if not bool(finite):
        last = eng.run.last if eng.run is not None else None
        if last is None:
            kept = "nothing was saved"
        elif last.exists():
            kept = f"the last checkpoint, {last}, is kept"
        else:  # diverged before the first checkpoint: there is nothing to resume from
            kept = f"no checkpoint was written yet (the first is due at step {eng.cfg.ckpt_every})"
        raise UserError(f"training diverged: a non-finite loss or gradient between steps {checked + 1} and "
                        f"{eng.step}; {kept}. Lower lr, raise warmup, or check the data")
    return eng.step


def evaluate_during_training(eng, log: TrainLog) -> None:
    """``eval_every``: the bound on the first ``eval_batches`` x 128 test rows (fixed draws) and the
    task's sample metrics on ``eval_samples`` samples, logged; keeps best.pt by the task's
    ``best_metric`` (else the bound). Rank 0 evaluates alone; its DDP peers wait while it beats."""
    done = f"catdiff/evaluated/{eng.step}"
    if eng.rank != 0:  # wait for rank 0 as long as it is alive, however long it evaluates
        eng.group.wait_for(done, lambda why: _peers_lost(eng, why))
        return
    metrics: dict[str, float] = {}
    try:
        if eng.method.has_bound:
            metrics.update(eng.likelihood(batches=eng.cfg.eval_batches))
        ctx = RunContext(eng)  # rank 0 alone, no files
        metrics.update(eng.task.model_metrics(ctx))
        tokens, labels = eng.task.generate(ctx, eng.cfg.eval_samples)
        metrics.update(eng.task.evaluate(tokens, labels, None))
    finally:
        eng.group.announce(done)
    log.scalars(eng.step, metrics)
    name, mode = eng.task.best_metric or (("nll_bound_bits_per_token", "min") if eng.method.has_bound else (None, None))
    value = metrics.get(name) if name else None
    if value is None or not math.isfinite(value):
        return
    if eng.best is None or (value < eng.best["value"] if mode == "min" else value > eng.best["value"]):
        eng.best = {"metric": name, "mode": mode, "value": value, "step": eng.step}
        if eng.run is not None:
            eng.run.save_best(eng.state())


def say_if_slow(eng, seconds: float, stop: int, log: TrainLog) -> None:
    """One line when ``TIMED_STEPS`` steps took ``seconds`` and the rest of the run would take
    longer than ``SLOW_RUN_S`` (the paper's model sizes take hours on a CPU)."""
    per_step = seconds / TIMED_STEPS
    left = per_step * (stop - eng.step)
    if left > SLOW_RUN_S:
        log.bar.write(f"catdiff: {per_step:.2f}s per step on the CPU: the remaining {stop - eng.step} steps "
                      f"take about {left / 3600:.1f} h; a GPU (device=cuda), a smaller model (layers, width) "
                      f"or fewer steps would be faster", file=sys.stderr)


def _peers_lost(eng, error: str) -> str:
    return eng.group.lost_message(error, eng.step, eng.run.last if eng.run is not None else None)
