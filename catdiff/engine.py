"""Engine: build a CATDM model for a task, train it, sample from it, evaluate it.

    from catdiff import Engine
    eng = Engine(task="digits", out="runs/digits", steps=2000)
    eng.fit()
    tokens = eng.sample(16, steps=50)
    print(eng.evaluate())

Training draws each step's batch and noise from seeds derived from (seed, step, rank),
so a resumed run repeats an uninterrupted one exactly (same device and thread count).
Under ``torchrun`` the model is wrapped in DistributedDataParallel; each rank takes its
share of the global batch; rank 0 writes checkpoints and logs.
"""
from __future__ import annotations

import contextlib
import datetime
import inspect
import json
import math
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from . import checkpoint, config as config_mod, export as export_mod
from .config import Config
from .diagnostics import collapse_report
from .errors import TrainingInterrupted, UserError, naming
from .feed import BatchFeed
from .heartbeat import Heartbeat
from .hooks import registry
from .interrupts import DeferredSignals
from .method import Method
from .model import Codebook, Denoiser, ema_copy, ema_update
from .runlock import RunLock
from .trainlog import TrainLog, progress
from .task import DataSpec, LazyTokenData, Task, TokenData

CKPT_NAME = "last.pt"
# What a run writes into --out; `resume=false` moves these aside (into DIR/previous-<time>/).
RUN_FILES = (CKPT_NAME, "best.pt", "step-*.pt", "config.json", "train_log.csv", "eval_log.csv", "metrics.json",
             "tensorboard", "wandb", "samples.*", "collapse.*")


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else CPU. ``auto`` and a bare ``cuda`` take the GPU of
    ``LOCAL_RANK`` (torchrun's one GPU per process)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name!r} requested but CUDA is not available; use device=cpu or auto")
    if name == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if name.startswith("cuda"):
        if torch.device(name).index >= torch.cuda.device_count():
            raise UserError(f"device={name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("device=mps requested but MPS is not available; use device=cpu or auto")
    return torch.device(name)


SLOW_RUN_S = 1800  # on the CPU, a run whose remaining steps would take longer than this says so
TIMED_STEPS = 5    # steps timed for that projection (after the first, which pays for setup)
SPOT_CHECK_ROWS = 64  # rows of a lazy split read by check_tokens (each gathered batch is checked too)


def adamw(params, lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW (betas 0.9, 0.99), fused where torch has a fused kernel for the parameters' device.

    On CPU torch's default is a per-tensor loop; the fused kernel does the same update ~3x
    faster (benchmarks/speed.py times training steps with this optimizer)."""
    params = list(params)
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.99), fused=fused or None)


def check_token_range(tokens: torch.Tensor, task: Task, split: str, seq_len: int | None = None) -> None:
    """Sequence length and id range of ``tokens`` (or of the declared ``seq_len``) against the task."""
    length = tokens.shape[-1] if seq_len is None else seq_len
    if length != task.seq_len:
        raise UserError(f"task {task.name!r} split {split!r}: sequences have length {length}, "
                         f"the task declares seq_len={task.seq_len}")
    if tokens.dim() != 2 or tokens.shape[1] != length:
        raise UserError(f"task {task.name!r} split {split!r}: rows have shape {tuple(tokens.shape[1:])}, "
                         f"expected [{length}] (seq_len)")
    if tokens.numel() == 0:
        return
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= task.vocab_size:
        raise UserError(f"task {task.name!r} split {split!r}: token ids span [{lo}, {hi}] but the task declares "
                         f"vocab_size={task.vocab_size} (ids must be in [0, {task.vocab_size - 1}])")


def check_tokens(data: TokenData | LazyTokenData, task: Task, split: str) -> None:
    """In memory: every token. Lazy: the declared seq_len / vocab_size and ``SPOT_CHECK_ROWS`` rows
    spread over the split (each training batch is range-checked when gathered)."""
    if isinstance(data, LazyTokenData):
        if data.vocab_size > task.vocab_size:
            raise UserError(f"task {task.name!r} split {split!r}: the data declares vocab_size={data.vocab_size} but "
                             f"the task declares vocab_size={task.vocab_size}")
        n = len(data)
        if n == 0:
            raise UserError(f"task {task.name!r} split {split!r} is empty")
        tokens, labels = data.rows(torch.linspace(0, n - 1, min(n, SPOT_CHECK_ROWS)).round().long())
        check_token_range(tokens, task, split, seq_len=data.seq_len)
    else:
        tokens, labels = data.tokens, data.labels
        if len(tokens) == 0:
            raise UserError(f"task {task.name!r} split {split!r} is empty")
        check_token_range(tokens, task, split)
    if (task.num_classes or task.conditional) and labels is None:
        raise UserError(f"task {task.name!r} is conditional but split {split!r} has no labels (conditions)")


def _check_installed(what: str, config: dict[str, Any], plugins: dict[str, str] | None, task_given: bool) -> None:
    """The task, method and backbone a checkpoint or export (``what``) was written with are provided
    here; else a UserError names the missing one and the plugin that gave it (``plugins``: its
    distribution and version; absent in checkpoints written before catdiff recorded them)."""
    reg = registry()
    config = config_mod.migrate(config)
    for kind, key in (("tasks", "task"), ("methods", "method"), ("backbones", "backbone")):
        name = config.get(key)
        if (kind == "tasks" and task_given) or not isinstance(name, str) or name in reg.components[kind]:
            continue
        source = (plugins or {}).get(kind)
        dist = source.split(" ")[0] if source else None
        if dist is None:
            why = (f"which no installed plugin provides (installed {kind}: {', '.join(reg.names(kind)) or '(none)'}); "
                   f"install the plugin that provides it")
        elif dist == "catdiff":
            why = "which this version of catdiff does not provide; use the catdiff version that wrote it"
        elif any(f"(from {dist} " in err for err in reg.failed.values()):
            why = "which failed to load (see its warning; --debug shows the traceback)"
        else:
            why = f"which is not installed: pip install {dist}"
        plugin = f" (plugin {source})" if dist not in (None, "catdiff") else ""
        raise UserError(f"{what} was written with {kind[:-1]} {name!r}{plugin}, {why}")


class Engine:
    def __init__(self, task: str | Task = "digits", out: str | Path | None = None,
                 config_file: str | Path | Mapping[str, Any] | None = None, **overrides: Any):
        reg = registry()
        if isinstance(task, Task):
            self.task = task
        else:
            self.task = reg.get("tasks", task).factory()
        self.cfg: Config = config_mod.for_task(self.task, config_file, overrides)
        config_mod.validate(self.cfg)
        self.settings = config_mod.component_settings(self.task, self.cfg.method, self.cfg.backbone)
        self.task.setup(self.cfg)
        self.out = Path(out) if out is not None else None
        self._setup_distributed()
        cfg = self.cfg
        if cfg.guidance > 0 and not self.task.num_classes:
            raise UserError(f"guidance={cfg.guidance} needs a class-conditional task; task {self.task.name!r} "
                            f"has no classes (set guidance=0)")
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.spec: DataSpec = self.task.data_spec()
        self.method: Method = reg.get("methods", cfg.method).factory(cfg)
        self.sampler_name(cfg.sampler)  # fail at construction, not after training
        self.backbone_factory = reg.get("backbones", cfg.backbone).factory
        backbone = self.backbone_factory(cfg, vocab_size=self.spec.vocab_size, seq_len=self.spec.seq_len,
                                         num_classes=self.spec.num_classes, **self._backbone_kwargs())
        codebook = Codebook(self.task.vocab_size, cfg.embed_dim, cfg.embed_init_std, fixed=cfg.fixed_codebook,
                            norm=cfg.options.get("embed_norm", 0.0))  # a catdm setting
        self.task.init_codebook(codebook)
        # the Denoiser's options for continuous methods, settings of such a method (catdm)
        schedule = self.method.schedule if cfg.options.get("evidence") else None
        self.model = Denoiser(codebook, backbone, self_cond=bool(cfg.options.get("self_cond")),
                              schedule=schedule).to(self.device)
        self.ema_cm = ema_copy(self.model)     # the method's target EMA, e.g. CATDM's theta_bar, phi_bar
        self.ema_eval = ema_copy(self.model)   # slow EMA for sampling and evaluation
        if cfg.compile:  # in place (state_dict keys unchanged): training, the CM target and sampling
            for m in (self.model, self.ema_cm, self.ema_eval):
                m.net.compile()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = adamw(params, cfg.lr, cfg.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.step = 0
        self.best: dict[str, Any] | None = None  # {"metric", "mode", "value", "step"} of best.pt
        self.run_id = uuid.uuid4().hex[:12]      # the logger's run (a resumed run continues it)
        self._train_net = None                   # the (DDP-wrapped) training network, built once
        self._beat: Heartbeat | None = None      # the peers' heartbeats while a DDP run trains
        self._splits: dict[str, TokenData | LazyTokenData] = {}  # loaded, checked (on device unless lazy), once per split
        self._lock = RunLock(self.out) if self.out is not None else None
        self._start_over = False  # resume=false on a run directory: move its files aside in fit()
        if self.out is not None and (self.out / CKPT_NAME).exists():
            if cfg.resume:
                payload = checkpoint.load(self.out / CKPT_NAME)
                self._check_resume(payload["config"])
                self.load_state(payload, self.out / CKPT_NAME)
            else:
                self._start_over = True

    # ----------------------------------------------------------------- setup
    def _check_resume(self, saved: dict[str, Any]) -> None:
        """Stop unless the checkpoint in ``out`` trains the same model (config.resume_differences);
        print the keys that may change and did (they are stored with the next checkpoint)."""
        fixed, changed = config_mod.resume_differences(saved, self.cfg, self.settings)
        fmt = lambda diffs: "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in diffs)  # noqa: E731
        if fixed:
            raise UserError(f"{self.out / CKPT_NAME} trained another model than the one requested ({fmt(fixed)}). "
                            f"Pass a new --out to train this one, or --set resume=false to start over in "
                            f"{self.out} (the old run's files are moved aside, not deleted)")
        if changed and self.rank == 0:
            print(f"catdiff: resuming {self.out / CKPT_NAME} with changed settings: {fmt(changed)}", file=sys.stderr)

    def _setup_distributed(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.rank = int(os.environ.get("RANK", 0))
        self.device = pick_device(self.cfg.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo",
                                    timeout=datetime.timedelta(seconds=self.cfg.dist_timeout))
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
        if self.cfg.batch_size % self.world:
            raise UserError(f"batch_size={self.cfg.batch_size} must be divisible by the number of processes ({self.world})")

    def _backbone_kwargs(self) -> dict[str, Any]:
        """The method's ``backbone_options`` and, for a factory that accepts it, the data spec."""
        kwargs = dict(self.method.backbone_options)
        try:
            params = inspect.signature(self.backbone_factory).parameters
        except (TypeError, ValueError):  # a builtin or C callable: no spec
            return kwargs
        if "spec" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
            kwargs["spec"] = self.spec
        return kwargs

    def sampler_name(self, name: str | None) -> str:
        """``name`` (or the config's, or the method's default) checked against the method's samplers."""
        name = name or self.cfg.sampler or self.method.samplers[0]
        if name not in self.method.samplers:
            raise UserError(f"method {self.cfg.method!r} has samplers {self.method.samplers}, not {name!r}")
        return name

    @property
    def conditional(self) -> bool:
        """Whether the network reads a condition (class labels or a task-defined tensor)."""
        return bool(self.task.num_classes or self.task.conditional)

    @property
    def precision(self) -> str:
        """The resolved ``precision``: auto is bf16 on a CUDA device that supports it, fp16 (with
        loss scaling) on one that does not, fp32 elsewhere."""
        if self.cfg.precision != "auto":
            return self.cfg.precision
        if self.device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"

    @property
    def autocast(self):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        return torch.autocast(self.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)

    def data(self, split: str) -> TokenData | LazyTokenData:
        """The task's ``split``, checked; in memory on the device, or a LazyTokenData left on the host."""
        if split not in self._splits:
            data = self.task.load(split)
            check_tokens(data, self.task, split)
            if not isinstance(data, LazyTokenData):
                data = TokenData(data.tokens.to(self.device), None if data.labels is None else data.labels.to(self.device))
            self._splits[split] = data
        return self._splits[split]

    def rows(self, data: TokenData | LazyTokenData, idx, split: str):
        """Tokens and conditions (None unless the network reads them) of rows ``idx`` on the device;
        a lazy split's rows are gathered on the host, range-checked and moved."""
        if not isinstance(data, LazyTokenData):
            if isinstance(idx, torch.Tensor):
                idx = idx.to(data.tokens.device)
            x, labels = data.tokens[idx], None if data.labels is None else data.labels[idx]
        else:
            x, labels = (None if t is None else t.to(self.device) for t in self.host_rows(data, idx, split))
        return x, labels if self.conditional else None

    def host_rows(self, data: LazyTokenData, idx, split: str):
        """Rows ``idx`` of a lazy split on the host, range-checked (labels None unless read)."""
        x, labels = data.rows(idx)
        check_token_range(x, self.task, split)
        return x, labels if self.conditional else None

    def lr_at(self, step: int) -> float:
        """Linear warmup, then cosine decay to 10% of ``lr`` at ``steps``."""
        cfg = self.cfg
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        frac = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    def _drop_conditions(self, cond):
        """Classifier-free guidance training: each class label becomes the learnable null one
        with probability ``cond_drop``."""
        if not self.task.num_classes:
            return cond
        drop = torch.rand(cond.shape, device=self.device) < self.cfg.cond_drop
        return torch.where(drop, self.task.num_classes, cond)

    # ----------------------------------------------------------------- training
    @contextlib.contextmanager
    def writing(self):
        """Hold ``out``'s run lock (rank 0; re-entrant) and tidy the directory: remove temp files of
        killed writes and, after ``resume=false``, move the old run's files aside."""
        if self._lock is None or self.rank != 0:
            yield
            return
        with self._lock:
            checkpoint.remove_stale_temps(self.out)
            if self._start_over:
                self._move_aside()
            yield

    def _move_aside(self) -> None:
        old = [p for pattern in RUN_FILES for p in sorted(self.out.glob(pattern))]
        dest = self.out / time.strftime("previous-%Y%m%d-%H%M%S")
        while dest.exists():
            dest = dest.with_name(dest.name + "x")
        dest.mkdir()
        for p in old:
            shutil.move(str(p), str(dest / p.name))
        self._start_over = False
        print(f"catdiff: resume=false: moved the previous run's files to {dest}", file=sys.stderr)

    def fit(self, until: int | None = None) -> "Engine":
        """Train to ``cfg.steps`` (or stop early at step ``until``), checkpointing to ``out``.

        SIGINT / SIGTERM end the current step, write a checkpoint and raise
        :class:`catdiff.errors.TrainingInterrupted`; a second one aborts at once."""
        with self.writing(), DeferredSignals() as signals, self._heartbeat():
            try:
                return self._fit(until, signals)
            except RuntimeError as e:
                peer_lost = isinstance(e, dist.DistError) or any(
                    m in str(e) for m in ("Timed out", "timed out", "Connection closed by peer", "Connection reset"))
                if self.world > 1 and peer_lost:
                    raise UserError(self._peers_lost(str(e).splitlines()[0][:200])) from None
                raise

    @contextlib.contextmanager
    def _heartbeat(self):
        """Under DDP, the peers' heartbeats (catdiff.heartbeat) while training: a beat every
        dist_timeout / 10 seconds (at most 5), so a silent peer is told from a busy one."""
        if self.world == 1:
            yield
            return
        store = dist.distributed_c10d._get_default_store()
        with Heartbeat(store, self.rank, self.world, min(5.0, self.cfg.dist_timeout / 10)) as self._beat:
            try:
                yield
            finally:
                self._beat = None

    def _peers_lost(self, error: str) -> str:
        """The message of a DDP rank whose peers did not answer: which went silent, what was kept."""
        silent = self._beat.silent() if self._beat is not None else {}
        if silent:
            who = ", ".join(f"rank {r} (silent for {s:.0f}s)" for r, s in silent.items())
            what = (f"{who} stopped answering (stopped, killed or cut off) at step {self.step}; "
                    f"check that process")
        else:
            what = f"the other processes did not answer within dist_timeout={self.cfg.dist_timeout:g}s at step " \
                   f"{self.step} (busy or hung: {error})"
        ckpt = self.out / CKPT_NAME if self.out is not None else None
        kept = f"The last checkpoint, {ckpt}, is intact" if ckpt is not None and ckpt.exists() else \
            "No checkpoint was written yet"
        return f"rank {self.rank}: {what}. {kept}; rerun the same command to resume"

    def _fit(self, until: int | None, signals: DeferredSignals) -> "Engine":
        cfg = self.cfg
        data = self.data("train")
        self.data("test")  # checked before training, not after it
        stop = min(cfg.steps, until) if until is not None else cfg.steps
        rank0 = self.rank == 0
        log = TrainLog(self.out if rank0 else None, total=stop, start=self.step, quiet=not rank0,
                       logger=cfg.logger, run_id=self.run_id, config=cfg.to_dict())
        feed = BatchFeed(self, data, self.step, stop)
        finite = torch.ones((), dtype=torch.bool, device=self.device)  # every step since `checked` was finite
        checked = first = self.step
        self.model.train()
        try:
            while self.step < stop:
                finite = finite & self._train_step(feed, log)
                self.step += 1
                if self.step == first + 1:
                    timed_from = time.perf_counter()
                elif self.step == first + 1 + TIMED_STEPS and rank0 and self.device.type == "cpu":
                    self._say_if_slow(time.perf_counter() - timed_from, stop, log)
                at_log = self.step % cfg.log_every == 0 or self.step == stop
                # one process reads its signal flag every step; DDP ranks agree on it at log points
                if self.world == 1:
                    signum = signals.received or 0
                else:
                    signum = self._stop_signal(signals) if at_log else 0
                save = self.out is not None and rank0 and (self.step % cfg.ckpt_every == 0 or signum)
                evaluate = cfg.eval_every and self.step % cfg.eval_every == 0
                if not (at_log or save or evaluate or signum):
                    continue  # no host synchronisation between these points
                checked = self._check_finite(finite, checked)
                if at_log:
                    log.write(self.step)
                if evaluate:
                    self._evaluate_during_training(log)
                if save:
                    path = self.save()
                    if not signum:
                        self._keep_step_checkpoint(path)
                if signum:
                    raise TrainingInterrupted(signum, self.step, self.out / CKPT_NAME if save else None)
        finally:
            feed.close()
            log.close()
        if self.out is not None and rank0:
            self.save()
        return self

    def _say_if_slow(self, seconds: float, stop: int, log: TrainLog) -> None:
        """One line when ``TIMED_STEPS`` steps took ``seconds`` and the rest of the run would take
        longer than ``SLOW_RUN_S`` (the paper's model sizes take hours on a CPU)."""
        per_step = seconds / TIMED_STEPS
        left = per_step * (stop - self.step)
        if left > SLOW_RUN_S:
            log.bar.write(f"catdiff: {per_step:.2f}s per step on the CPU: the remaining {stop - self.step} steps "
                          f"take about {left / 3600:.1f} h; a GPU (device=cuda), a smaller model (layers, width) "
                          f"or fewer steps would be faster", file=sys.stderr)

    def _train_step(self, feed: BatchFeed, log: TrainLog) -> torch.Tensor:
        """One optimizer step on the global batch of ``self.step``, in ``accum`` micro-batches
        (DDP syncs gradients on the last one only). Each micro-batch's loss is weighted by its
        share of the rows, so a batch-mean loss gives the gradient of the whole batch however it
        is split. The noise of micro-batch j is seeded by (seed, step, rank, j): splitting a batch
        another way draws other (equally distributed) noise. Returns a device flag "loss and
        gradient finite" (no host read)."""
        cfg, step = self.cfg, self.step
        model, ddp = self._training_network()
        torch.manual_seed(cfg.seed * 7_919 + step * 104_729 + self.rank)
        x, cond = feed.get(step)
        cond = self._drop_conditions(cond)
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        xs = x.tensor_split(cfg.accum)
        conds = cond.tensor_split(cfg.accum) if cond is not None else [None] * cfg.accum
        total, logs = 0.0, {}
        for j, (xj, cj) in enumerate(zip(xs, conds)):
            if j:
                torch.manual_seed(cfg.seed * 7_919 + step * 104_729 + self.rank + j * 1_000_033)
            weight = len(xj) / len(x)
            sync = ddp.no_sync() if ddp is not None and j < cfg.accum - 1 else contextlib.nullcontext()
            with sync:
                with self.autocast:
                    loss, parts = self.method.loss(model, self.ema_cm, xj, cj)
                self.scaler.scale(loss * weight).backward()
            total = total + loss.detach() * weight
            for k, v in parts.items():
                logs[k] = logs[k] + v * weight if k in logs else v * weight
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.method.uses_target_ema:
            ema_update(self.ema_cm, self.model, cfg.ema_cm)
        ema_update(self.ema_eval, self.model, min(cfg.ema_eval, (1 + step) / (10 + step)))
        log.add({**logs, "lr": lr, "grad_norm": grad_norm, "batch": cfg.batch_size})
        # with loss scaling a non-finite gradient only skips the step (GradScaler); that is no divergence
        return torch.isfinite(total) & (torch.isfinite(grad_norm) | self.scaler.is_enabled())

    def _training_network(self):
        """(the network the loss runs through, its DDP wrapper or None), built once."""
        if self._train_net is None:
            ddp = torch.nn.parallel.DistributedDataParallel(self.model) if self.world > 1 else None
            self._train_net = (ddp or self.model, ddp)
        return self._train_net

    def _check_finite(self, finite: torch.Tensor, checked: int) -> int:
        """Stop on a non-finite loss or gradient since step ``checked`` (one host read); non-finite
        weights are never saved. Returns the step now known to be finite."""
        if not bool(finite):
            last = self.out / CKPT_NAME if self.out is not None else None
            if last is None:
                kept = "nothing was saved"
            elif last.exists():
                kept = f"the last checkpoint, {last}, is kept"
            else:  # diverged before the first checkpoint: there is nothing to resume from
                kept = f"no checkpoint was written yet (the first is due at step {self.cfg.ckpt_every})"
            raise UserError(f"training diverged: a non-finite loss or gradient between steps {checked + 1} and "
                            f"{self.step}; {kept}. Lower lr, raise warmup, or check the data")
        return self.step

    def _evaluate_during_training(self, log: TrainLog) -> None:
        """``eval_every``: the bound on the first ``eval_batches`` x 128 test rows (fixed draws) and the
        task's sample metrics on ``eval_samples`` samples, logged; keeps best.pt by the task's
        ``best_metric`` (else the bound). Rank 0 evaluates; its DDP peers wait while it beats."""
        done = f"catdiff/evaluated/{self.step}"
        if self.rank != 0:  # wait for rank 0 as long as it is alive, however long it evaluates
            store = dist.distributed_c10d._get_default_store()
            while not store.check([done]):
                if 0 in self._beat.silent():
                    raise UserError(self._peers_lost("evaluating"))
                time.sleep(0.2)
            return
        metrics: dict[str, float] = {}
        world, self.world = self.world, 1  # rank 0 alone: a task that shards its sampling must not wait for peers
        try:
            if self.method.has_bound:
                metrics.update(self.likelihood(batches=self.cfg.eval_batches))
            tokens, labels = self.task.generate(self, self.cfg.eval_samples)
            metrics.update(self.task.evaluate(tokens, labels, None))
        finally:
            self.world = world
            if world > 1:
                dist.distributed_c10d._get_default_store().set(done, "1")
        log.scalars(self.step, metrics)
        name, mode = self.task.best_metric or (("nll_bound_bits_per_token", "min") if self.method.has_bound else (None, None))
        value = metrics.get(name) if name else None
        if value is None or not math.isfinite(value):
            return
        if self.best is None or (value < self.best["value"] if mode == "min" else value > self.best["value"]):
            self.best = {"metric": name, "mode": mode, "value": value, "step": self.step}
            if self.out is not None:
                checkpoint.save(self.state(), self.out / "best.pt")

    def _keep_step_checkpoint(self, path: Path) -> None:
        """``keep_last`` N: a step-numbered copy (a hard link) of ``path``; older ones are removed."""
        if not self.cfg.keep_last:
            return
        numbered = path.with_name(f"step-{self.step:08d}.pt")
        numbered.unlink(missing_ok=True)
        try:
            os.link(path, numbered)
        except OSError:  # a file system without hard links
            shutil.copyfile(path, numbered)
        for old in sorted(path.parent.glob("step-*.pt"))[: -self.cfg.keep_last]:
            old.unlink()

    def leave_group(self) -> None:
        """End this process's part in a DDP run (all ranks call it after ``fit``): a barrier, then
        the process group is destroyed, so no rank tears down gloo while a peer still talks to it
        (which aborts with "terminate called without an active exception")."""
        if self.world > 1 and dist.is_initialized():
            store = dist.distributed_c10d._get_default_store()
            dist.barrier()
            dist.destroy_process_group()
            # and no rank exits before every rank has torn its group down: a peer that exits
            # first closes its sockets under one still tearing down, which gloo also aborts on
            store.add("catdiff/left", 1)
            deadline = time.monotonic() + self.cfg.dist_timeout
            while store.add("catdiff/left", 0) < self.world and time.monotonic() < deadline:
                time.sleep(0.01)
        self.world = 1  # from here on a single process: rank 0 evaluates alone, unsharded

    def _stop_signal(self, signals: DeferredSignals) -> int:
        """The signal that asks to stop after this step (0: none); under DDP every rank stops
        at the same step when any rank was signalled."""
        signum = signals.received or 0
        if self.world > 1:
            flag = torch.tensor([signum], device=self.device if dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            signum = int(flag.item())
        return signum

    # ----------------------------------------------------------------- state
    @property
    def task_meta(self) -> dict[str, Any]:
        """What a checkpoint or an export records of its task, checked when it is loaded."""
        return {"name": self.task.name, **self.spec.to_dict()}

    @property
    def plugins(self) -> dict[str, str]:
        """The distributions (with version) that provide the run's task, method and backbone, kept in
        checkpoints and exports, so that loading one where a plugin is missing names it."""
        reg = registry()
        names = {"tasks": self.task.name, "methods": self.cfg.method, "backbones": self.cfg.backbone}
        return {kind: reg.components[kind][name].source for kind, name in names.items() if name in reg.components[kind]}

    def state(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(),
            "task": self.task_meta,
            "plugins": self.plugins,
            "step": self.step,
            "model": self.model.state_dict(),
            "ema_cm": self.ema_cm.state_dict(),
            "ema_eval": self.ema_eval.state_dict(),
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": checkpoint.rng_state(),
            "best": self.best,
            "run_id": self.run_id,
        }

    def _load_weights(self, meta: dict[str, Any], weights: dict[str, dict], path) -> None:
        """``weights``: state dicts of model / ema_cm / ema_eval, checked against the task ``meta``."""
        for key in ("vocab_size", "seq_len", "num_classes"):
            mine = getattr(self.spec, key)
            if meta[key] != mine:
                raise checkpoint.CheckpointError(
                    f"{path} was trained on task {meta['name']!r} with {key}={meta[key]}, but task "
                    f"{self.task.name!r} has {key}={mine}; use a checkpoint of this task or a new --out directory")
        try:
            for name, state in weights.items():
                getattr(self, name).load_state_dict(state)
        except RuntimeError as e:
            raise checkpoint.CheckpointError(
                f"{path} does not match the configured model ({e}); resume with the checkpoint's own "
                f"config (catdiff sample/eval read it) or start a new --out directory") from None

    def load_state(self, payload: dict[str, Any], path: str | Path = "checkpoint") -> None:
        self._load_weights(payload["task"], {k: payload[k] for k in ("model", "ema_cm", "ema_eval")}, path)
        self.method.load_state_dict(payload.get("method") or {})
        self.optimizer.load_state_dict(payload["optimizer"])
        if payload.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(payload["scaler"])
        self.step = payload["step"]
        self.best = payload.get("best")
        self.run_id = payload.get("run_id") or self.run_id
        checkpoint.set_rng_state(payload["rng"])

    def save(self, path: str | Path | None = None) -> Path:
        if path is None:
            if self.out is None:
                raise UserError("Engine has no `out` directory; pass a path to save()")
            checkpoint.write_atomic((json.dumps(self.cfg.to_dict(), indent=2) + "\n").encode(),
                                    self.out / "config.json", "config")
            path = self.out / CKPT_NAME
        return checkpoint.save(self.state(), path)

    @classmethod
    def from_checkpoint(cls, path: str | Path, /, out: str | Path | None = None, task: Task | None = None,
                        **overrides: Any) -> "Engine":
        """Rebuild an Engine from a checkpoint: its own config (``overrides`` for sampling/eval keys),
        its task by registry name unless a ``task`` instance is given."""
        payload = checkpoint.load(path)
        _check_installed(f"checkpoint {path}", payload["config"], payload.get("plugins"), task is not None)
        eng = cls._from_config(payload["config"], overrides, task, out)
        eng.load_state(payload, path)
        return eng

    @classmethod
    def _from_config(cls, config: dict[str, Any], overrides: dict[str, Any], task: Task | None,
                     out: str | Path | None = None) -> "Engine":
        """An Engine of a saved config (its task by registry name unless ``task`` is given), with
        ``overrides`` on top and no resuming."""
        saved = config_mod.migrate(config)
        return cls(task=task or saved["task"], out=out, config_file=saved, **{**overrides, "resume": False})

    @classmethod
    def from_pretrained(cls, directory: str | Path, /, task: Task | None = None, **overrides: Any) -> "Engine":
        """An Engine for sampling and evaluation from ``catdiff export`` output (catdiff.export):
        its config, its EMA weights in every copy of the network, no optimizer state."""
        meta, weights = export_mod.read(directory)
        _check_installed(f"export {directory}", meta["config"], meta.get("plugins"), task is not None)
        eng = cls._from_config(meta["config"], overrides, task)
        eng._load_weights(meta["task"], {"model": weights, "ema_cm": weights, "ema_eval": weights}, directory)
        eng.method.load_state_dict(meta.get("method") or {})
        eng.step = int(meta.get("step", 0))
        return eng

    @classmethod
    def load(cls, path: str | Path, /, **overrides: Any) -> "Engine":
        """:meth:`from_pretrained` for an export directory, else :meth:`from_checkpoint` (a
        checkpoint file, or a run directory holding last.pt)."""
        if export_mod.is_export(path):
            return cls.from_pretrained(path, **overrides)
        return cls.from_checkpoint(path, **overrides)

    def export(self, directory: str | Path, force: bool = False) -> list[Path]:
        """``directory``/model.safetensors (the sampling EMA weights) + config.json (catdiff.export)."""
        return export_mod.export(self, directory, force=force)

    # ----------------------------------------------------------------- sampling and evaluation
    def default_labels(self, n: int) -> torch.Tensor | None:
        """Conditions for ``n`` samples: balanced classes, or the test split's conditions (cycled)."""
        if self.task.num_classes:
            return torch.arange(n) % self.task.num_classes
        if self.task.conditional:
            test = self.data("test")
            return self.rows(test, torch.arange(n) % len(test), "test")[1].cpu()
        return None

    @torch.no_grad()
    def sample(self, n: int, steps: int | None = None, guidance: float | None = None, labels=None,
               sampler: str | None = None, final: str | None = None, known=None, known_mask=None,
               seed: int | None = None, batch_size: int = 256, decode: bool = False):
        """Generate ``n`` token sequences [n, M] with the slow EMA model; infill when ``known`` /
        ``known_mask`` are given. ``decode=True``: the task's view of them (``Task.decode``:
        images as a tensor, text as strings)."""
        cfg = self.cfg
        if labels is None:
            labels = self.default_labels(n)
        elif not self.conditional:
            raise UserError(f"task {self.task.name!r} is unconditional; labels are not accepted")
        sampler = self.sampler_name(sampler)
        gen = torch.Generator().manual_seed(cfg.seed + 12_345 if seed is None else seed)
        out = []
        bar = progress(n, "sample", disable=self.rank != 0)
        for lo in range(0, n, batch_size):
            hi = min(n, lo + batch_size)
            with self.autocast:
                out.append(self.method.sample(
                    self.ema_eval, hi - lo, self.task.seq_len, steps=steps or cfg.sample_steps,
                    sampler=sampler, final=final or cfg.final,
                    cond=None if labels is None else labels[lo:hi].to(self.device),
                    guidance=cfg.guidance if guidance is None else guidance,
                    null_id=self.task.num_classes if self.task.num_classes else None,
                    known=None if known is None else known[lo:hi], known_mask=None if known_mask is None else known_mask[lo:hi],
                    generator=gen, device=self.device))
            bar.update(hi - lo)
        bar.close()
        tokens = torch.cat(out).cpu()
        return self.task.decode(tokens) if decode else tokens

    @torch.no_grad()
    def likelihood(self, split: str = "test", batches: int | None = None, batch_size: int = 128,
                   draws: int = 1, seed: int | None = None) -> dict[str, float]:
        """Mean of the eq. 3 bound per token (nats and bits) on ``split``, with its standard error.

        Each sequence's bound is the mean of ``draws`` Monte-Carlo draws of (t, eps); draw j of
        every row falls in the time stratum [j/draws, (j+1)/draws), and within a stratum the
        rows of a batch take one sub-stratum each in random order (draws=1: stratified across
        rows). The standard error is that of the mean of the per-sequence estimates."""
        if draws < 1:
            raise UserError(f"likelihood draws must be >= 1, got {draws}")
        data = self.data(split)
        seed = self.cfg.seed if seed is None else seed
        gen = torch.Generator().manual_seed(seed + 99)
        n = min(len(data), (batches or self.cfg.eval_batches) * batch_size)
        totals, parts = [], {}
        torch.manual_seed(seed + 98)
        bar = progress(n, "likelihood", disable=self.rank != 0)
        for lo in range(0, n, batch_size):
            x, cond = self.rows(data, slice(lo, min(n, lo + batch_size)), split)
            bar.update(len(x))
            total = torch.zeros(len(x), dtype=torch.float64)
            for j in range(draws):
                u = ((torch.arange(len(x)) + torch.rand(len(x), generator=gen)) / len(x))[torch.randperm(len(x), generator=gen)]
                with self.autocast:
                    b = self.method.nll_bound(self.ema_eval, x, cond, ((j + u) / draws).to(self.device))
                total += b["total"].double().cpu() / draws
                for k, v in b.items():
                    if k != "total":
                        parts[k] = parts.get(k, 0.0) + v.double().sum().item() / draws
            totals.append(total)
        bar.close()
        tot = torch.cat(totals) / self.task.seq_len
        nats = tot.mean().item()
        se = (tot.std() / math.sqrt(len(tot))).item() if len(tot) > 1 else float("nan")
        res = {"nll_bound_nats_per_token": nats, "nll_bound_nats_per_token_se": se,
               "nll_bound_bits_per_token": nats / math.log(2), "nll_bound_bits_per_token_se": se / math.log(2)}
        res.update({f"nll_bound_{k}_per_token": v / (len(tot) * self.task.seq_len) for k, v in parts.items()})
        return res

    def evaluate(self, n_samples: int | None = None, out: str | Path | None = None,
                 on_metrics=None) -> dict[str, float]:
        """Likelihood bound, collapse diagnostics and the task's sample metrics (EMA model).

        With an output directory (``out`` or the engine's), also writes metrics.json and then the
        task's sample rendering and its diagnostics plot; ``on_metrics(metrics)`` is called in
        between, so a failing image write loses no metrics. Run it on one process (rank 0)."""
        out = Path(out) if out is not None else self.out
        n = self.cfg.n_samples if n_samples is None else n_samples
        if n < 1:
            raise UserError(f"the number of samples must be >= 1, got {n}")
        metrics: dict[str, float] = {"step": float(self.step)}
        if self.method.has_bound:
            metrics.update(self.likelihood())
        report = None
        if self.method.continuous:
            test = self.data("test")
            k = min(len(test), 1024)
            x, cond = self.rows(test, slice(0, k), "test")
            report = collapse_report(self.ema_eval, self.method.schedule, x, cond)
            metrics.update({key: v for key, v in report.items() if isinstance(v, float)})
        t0 = time.perf_counter()
        tokens, labels = self.task.generate(self, n)
        metrics["sample_seconds"] = time.perf_counter() - t0
        metrics.update(self.task.evaluate(tokens, labels, out))
        if out is not None and self.rank == 0:
            checkpoint.write_atomic((json.dumps(metrics, indent=2) + "\n").encode(), out / "metrics.json", "metrics")
        if on_metrics is not None:
            on_metrics(metrics)
        if out is not None and self.rank == 0:
            with naming(out):  # a task's write that names no file: name the directory
                self.task.save_samples(tokens, labels, out)
                if report is not None:
                    self.task.diagnostics(report, out)
        return metrics
