"""Engine: build a model for a task, train it, sample from it, evaluate it.

    from catdiff import Engine
    eng = Engine(task="digits", out="runs/digits", steps=2000)
    eng.fit()
    tokens = eng.sample(16, steps=50)
    print(eng.evaluate())

The engine builds the task, config, method, the method's network and its sampling EMA, and
holds the state a checkpoint saves. The training loop is catdiff.run.training, the run directory
catdiff.run.rundir, the process group of a ``torchrun`` job catdiff.run.distributed, what tasks may
call catdiff.api.context.RunContext and the random streams catdiff.api.streams.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import sys
import uuid
from pathlib import Path
from typing import Any, Mapping

import torch

from ..api import streams
from ..api.context import RunContext
from ..api.errors import UserError
from ..api.hooks import registry
from ..api.method import Method, SampleRequest
from ..api.task import DataSpec, LazyTokenData, Task, TokenData
from ..nn.model import ema_copy
from . import checkpoint, config as config_mod, evaluation, export as export_mod, rundir, training
from .checks import check_installed, plugin_sources
from .config import Config
from .distributed import ProcessGroup, free_cores, pick_device
from .feed import BatchFeed
from .splits import Splits
from .training import adamw
from .trainlog import TrainLog, progress


class Engine:
    def __init__(self, task: str | Task = "digits", out: str | Path | None = None,
                 config_file: str | Path | Mapping[str, Any] | None = None, **overrides: Any):
        reg = registry()
        self.task = task if isinstance(task, Task) else reg.get("tasks", task).factory()
        self.cfg: Config = config_mod.for_task(self.task, config_file, overrides)
        config_mod.validate(self.cfg)
        self.settings = config_mod.component_settings(self.task, self.cfg.method, self.cfg.backbone)
        self.task.setup(self.cfg)
        cfg = self.cfg
        self.out = Path(out) if out is not None else None
        self.device = pick_device(cfg.device)
        self.group = ProcessGroup(self.device, cfg.dist_timeout)  # joined while fit() trains
        self.run = rundir.RunDir(self.out, self.rank) if self.out is not None else None
        if cfg.batch_size % self.world:
            raise UserError(f"batch_size={cfg.batch_size} must be divisible by the number of processes ({self.world})")
        if cfg.guidance > 0 and not self.task.num_classes:
            raise UserError(f"guidance={cfg.guidance} needs a class-conditional task; task {self.task.name!r} "
                            f"has no classes (set guidance=0)")
        torch.set_num_threads(cfg.threads or free_cores())
        torch.manual_seed(cfg.seed)
        self.spec: DataSpec = self.task.data_spec()
        self.method: Method = reg.get("methods", cfg.method).factory(cfg)
        self.sampler_name(cfg.sampler)  # fail at construction, not after training
        self.check_samples(cfg.n_samples, "n_samples")
        self.backbone_factory = reg.get("backbones", cfg.backbone).factory
        backbone = self.backbone_factory(cfg, vocab_size=self.spec.vocab_size, seq_len=self.spec.seq_len,
                                         num_classes=self.spec.num_classes, **self._backbone_kwargs())
        self.model = self.method.build(backbone, self.spec)
        self.task.init_codebook(self.model.codebook)
        self.model.to(self.device)
        self.method.start(self.model)          # e.g. CATDM's CM teacher, a copy the method keeps
        self.ema_eval = ema_copy(self.model)   # slow EMA for sampling and evaluation
        if cfg.compile:  # in place (state_dict keys unchanged): training and sampling
            for m in (self.model, self.ema_eval):
                m.net.compile()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = adamw(params, cfg.lr, cfg.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.progress = training.TrainState()  # the step and best.pt's record: what training moves
        self.changed_at_load: list[tuple] = []  # training settings a sample/eval call overrode (key, old, new)
        self.run_id = uuid.uuid4().hex[:12]      # the logger's run (a resumed run continues it)
        self.splits = Splits(self.task, self.device, self.conditional)  # loaded and checked once each
        if self.run is not None and self.run.last.exists():
            if cfg.resume:
                payload = checkpoint.load(self.run.last)
                self._check_record(payload["config"])
                _, payload["task"] = self._facts_moved(payload["config"], payload["task"], self.task)
                self._check_resume(payload["config"])
                self.load_state(payload, self.run.last)
            else:
                self.run.start_over = True  # fit() moves the old run's files aside

    # ----------------------------------------------------------------- setup
    def _check_record(self, saved: dict[str, Any]) -> None:
        """The run directory's config.json is a record (written with every checkpoint), not an
        input: a hand edit of a fixed setting or an added / removed key is refused before the
        record would be replaced; a changed setting that may change on resume is named in a warning."""
        path = self.run.path / "config.json"
        if not path.is_file():
            return
        try:
            record = rundir.read_record(path)
        except ValueError as e:
            raise UserError(f"{path} {e}; it is the record of the run, rewritten at every checkpoint: delete it "
                            f"(last.pt holds the config) or restore it") from None
        changed = [k for k in sorted(set(record) & set(saved)) if record[k] != saved[k]]
        edits = [f"{k} (added)" if k in record else f"{k} (removed)" for k in sorted(set(record) ^ set(saved))]
        edits += [f"{k}: {saved[k]!r} -> {record[k]!r}" for k in changed if not config_mod.may_change(k, self.settings)]
        if edits:
            raise UserError(f"{path} was edited ({'; '.join(edits)}); it is the record of the run, not an input, and "
                            f"would be replaced. Give changes with --set or --config FILE, and restore the file (or "
                            f"delete it: last.pt holds the config)")
        if changed and self.rank == 0:
            print(f"catdiff: warning: {path} differs from {self.run.last} in {', '.join(changed)}; the record is "
                  f"rewritten from this run's settings at its next checkpoint", file=sys.stderr)

    def _check_resume(self, saved: dict[str, Any]) -> None:
        """Stop unless the checkpoint in ``out`` trains the same model (config.resume_differences);
        print the keys that may change and did (they are stored with the next checkpoint)."""
        fixed, changed = config_mod.resume_differences(saved, self.cfg, self.settings)
        fmt = lambda diffs: "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in diffs)  # noqa: E731
        if fixed:
            raise UserError(f"{self.run.last} trained another model than the one requested ({fmt(fixed)}). "
                            f"Pass a new --out to train this one, or --set resume=false to start over in "
                            f"{self.out} (the old run's files are moved aside, not deleted)")
        if changed and self.rank == 0:
            print(f"catdiff: resuming {self.run.last} with changed settings: {fmt(changed)}", file=sys.stderr)

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

    def check_samples(self, n: int, what: str) -> None:
        """Refuse a sample count the task's metrics cannot score (before any training)."""
        least = max(1, int(getattr(self.task, "min_samples", 1)))
        if n < least:
            raise UserError(f"{what} must be >= {least} for task {self.task.name!r} (its metrics need {least}), "
                            f"got {n}")

    def sampler_name(self, name: str | None) -> str:
        """``name`` (or the config's, or the method's default) checked against the method's samplers."""
        name = name or self.cfg.sampler or self.method.samplers[0]
        if name not in self.method.samplers:
            raise UserError(f"method {self.cfg.method!r} has samplers {self.method.samplers}, not {name!r}")
        return name

    @property
    def world(self) -> int:
        """Processes of the ``torchrun`` job (1 without torchrun)."""
        return self.group.world

    @property
    def rank(self) -> int:
        return self.group.rank

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
        return self.splits.get(split)

    def rows(self, data: TokenData | LazyTokenData, idx, split: str):
        """Tokens and conditions (None unless the network reads them) of rows ``idx`` on the device."""
        return self.splits.rows(data, idx, split)

    # ----------------------------------------------------------------- training
    def fit(self, until: int | None = None) -> "Engine":
        """Train to ``cfg.steps`` (or stop early at step ``until``), checkpointing to ``out``
        (catdiff.run.training). Under ``torchrun`` the ranks join a process group for the training
        and leave it when it ends.

        SIGINT / SIGTERM end the current step, write a checkpoint and raise
        :class:`catdiff.api.errors.TrainingInterrupted`; a second one aborts at once."""
        cfg, rank0 = self.cfg, self.rank == 0
        if until is None and 0 < cfg.steps <= self.step and rank0:
            past = "past" if self.step > cfg.steps else "at"
            print(f"catdiff: the run is already {past} steps={cfg.steps} (step {self.step}): nothing to train",
                  file=sys.stderr)
        with self.writing():
            parts = training.Parts(
                cfg=cfg, model=self.model, ema_eval=self.ema_eval, method=self.method, optimizer=self.optimizer,
                scaler=self.scaler, autocast=lambda: self.autocast, group=self.group,
                null_class=self.task.num_classes, feed=self._feed,
                log=lambda start, stop: TrainLog(self.out if rank0 else None, total=stop, start=start,
                                                 quiet=not rank0, logger=cfg.logger, run_id=self.run_id,
                                                 config=cfg.to_dict()),
                run=self.run, save=self.save, save_best=lambda: self.run.save_best(self.state()),
                evaluate=self._evaluate_now,
                best_metric=self.task.best_metric or (("nll_bound_bits_per_token", "min") if self.method.has_bound
                                                      else None))
            training.fit(parts, self.progress, until)
        return self

    def _feed(self, start: int, stop: int) -> BatchFeed:
        """The training batches of steps ``start`` to ``stop``; both splits are loaded and checked
        first (the test split before training, not after it)."""
        train = self.data("train")
        self.data("test")
        return BatchFeed(self.splits, train, self.cfg.seed, self.cfg.batch_size, self.rank, self.world, start, stop)

    def _evaluate_now(self) -> dict[str, float]:
        """Training's ``eval_every`` metrics: the bound on the first ``eval_batches`` x 128 test rows
        (fixed draws), the task's model metrics and those of ``eval_samples`` samples (no files)."""
        metrics: dict[str, float] = {}
        if self.method.has_bound:
            metrics.update(self.likelihood(batches=self.cfg.eval_batches))
        ctx = RunContext(self)
        metrics.update(self.task.model_metrics(ctx))
        tokens, labels = self.task.generate(ctx, self.cfg.eval_samples)
        metrics.update(self.task.evaluate(tokens, labels, None))
        return metrics

    @property
    def step(self) -> int:
        """Optimizer steps trained so far."""
        return self.progress.step

    @step.setter
    def step(self, value: int) -> None:
        self.progress.step = int(value)

    @property
    def best(self) -> dict[str, Any] | None:
        """best.pt's record: {"metric", "mode", "value", "step"}, or None."""
        return self.progress.best

    @best.setter
    def best(self, value: dict[str, Any] | None) -> None:
        self.progress.best = value

    def writing(self):
        """Hold the run directory's lock (rank 0; re-entrant) while the caller writes into it."""
        return self.run.writing() if self.run is not None else contextlib.nullcontext()

    # ----------------------------------------------------------------- state
    @property
    def task_meta(self) -> dict[str, Any]:
        """What a checkpoint or an export records of its task, checked when it is loaded."""
        return {"name": self.task.name, **self.spec.to_dict()}

    @property
    def plugins(self) -> dict[str, str]:
        """The distributions that provide the run's task, method and backbone (catdiff.run.checks)."""
        return plugin_sources(self.task.name, self.cfg.method, self.cfg.backbone)

    def state(self) -> dict[str, Any]:
        """Everything a checkpoint holds (catdiff.run.checkpoint)."""
        return {"config": self.cfg.to_dict(), "task": self.task_meta, "plugins": self.plugins, "step": self.step,
                "model": self.model.state_dict(), "ema_eval": self.ema_eval.state_dict(),
                "nets": {k: m.state_dict() for k, m in self.method.networks().items()},
                "method": self.method.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "rng": checkpoint.rng_state(), "best": self.best, "run_id": self.run_id}

    def _load_weights(self, meta: dict[str, Any], weights: dict[str, dict], path, nets: dict[str, dict]) -> None:
        """``weights``: state dicts of model / ema_eval, ``nets`` of the method's networks (by
        name; a method that keeps none ignores them), checked against the task ``meta``."""
        for key in ("vocab_size", "seq_len", "num_classes"):
            mine = getattr(self.spec, key)
            if meta[key] != mine:
                raise checkpoint.CheckpointError(
                    f"{path} was trained on task {meta['name']!r} with {key}={meta[key]}, but task "
                    f"{self.task.name!r} has {key}={mine}; use a checkpoint of this task or a new --out directory")
        if "extras" in meta:  # the facts of the data, as the checkpoint's data had them (those both record)
            stored, mine = _plain(meta["extras"]), _plain(self.spec.extras)
            diffs = [f"{k}: {stored[k]!r} -> {v!r}" for k, v in sorted(mine.items()) if k in stored and stored[k] != v]
            if diffs:
                raise checkpoint.CheckpointError(
                    f"{path} was trained on other data than task {self.task.name!r} reads now ({'; '.join(diffs)}); "
                    f"give the data it was trained on, or a new --out directory")
        kept = self.method.networks()
        try:
            for name, state in weights.items():
                getattr(self, name).load_state_dict(state)
            for name, state in nets.items():
                if name in kept:
                    kept[name].load_state_dict(state)
        except RuntimeError as e:
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            first = lines[1] if len(lines) > 1 else lines[0] if lines else "the weights do not fit"
            more = f" and {len(lines) - 2} more" if len(lines) > 2 else ""
            changed = [f"{k}={new}" for k, _, new in self.changed_at_load]
            fix = (f"drop --set {', '.join(changed)}: the model's shape is the checkpoint's" if changed else
                   "resume with the checkpoint's own config (catdiff sample/eval read it) or start a new --out directory")
            raise checkpoint.CheckpointError(f"{path} does not match the configured model ({first}{more}); {fix}") from None

    def load_state(self, payload: dict[str, Any], path: str | Path = "checkpoint") -> None:
        self._load_weights(payload["task"], {k: payload[k] for k in ("model", "ema_eval")}, path, payload["nets"])
        self.method.load_state_dict(payload.get("method") or {})
        self.optimizer.load_state_dict(payload["optimizer"])
        if payload.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(payload["scaler"])
        self.step = payload["step"]
        self.best = payload.get("best")
        self.run_id = payload.get("run_id") or self.run_id
        checkpoint.set_rng_state(payload["rng"])

    def save(self, path: str | Path | None = None) -> Path:
        """The checkpoint to ``path``; by default the run directory's last.pt (and config.json)."""
        if path is not None:
            return checkpoint.save(self.state(), path)
        if self.run is None:
            raise UserError("Engine has no `out` directory; pass a path to save()")
        return self.run.save(self.state())

    @classmethod
    def from_checkpoint(cls, path: str | Path, /, out: str | Path | None = None, task: Task | None = None,
                        **overrides: Any) -> "Engine":
        """Rebuild an Engine from a checkpoint: its own config (``overrides`` for sampling/eval keys),
        its task by registry name unless a ``task`` instance is given."""
        payload = checkpoint.load(path)
        check_installed(f"checkpoint {path}", payload["config"], payload.get("plugins"), task is not None)
        _say_if_record_differs(Path(path), payload["config"])
        config, payload["task"], task = cls._restored(payload["config"], payload["task"], task, f"checkpoint {path}")
        eng = cls._from_config(config, overrides, task, out)
        eng.load_state(payload, path)
        eng._warn_changed_at_load()
        return eng

    @classmethod
    def _restored(cls, config: dict[str, Any], meta: dict[str, Any], task: Task | None, where) -> tuple:
        """(config, task record, task) of a checkpoint or export: the task (by its stored name unless
        given) restored from the record, the config checked alone (``where`` names its source)."""
        task = task or registry().get("tasks", config_mod.migrate(config)["task"]).factory()
        config, meta = cls._facts_moved(config, meta, task)
        task.restore(DataSpec.from_dict(meta))
        cls._check_stored(config, task, where)
        return config, meta, task

    @staticmethod
    def _facts_moved(config: dict[str, Any], meta: dict[str, Any], task: Task) -> tuple[dict, dict]:
        """A saved config and task record with the task's ``config_facts`` (facts an older version
        of the task kept in the config) moved from the first into the second's ``extras``."""
        config = config_mod.migrate(config)
        facts = {k: config.pop(k) for k in task.config_facts if k in config}
        if not facts:
            return config, meta
        return config, {**meta, "extras": {**facts, **dict(meta.get("extras") or {})}}

    @staticmethod
    def _check_stored(config: dict[str, Any], task: Task | None, where) -> None:
        """The config stored in a checkpoint or export, alone (before the caller's overrides): a
        key or value this catdiff does not accept is named as coming from ``where``."""
        stored = config_mod.migrate(config)
        name = stored.pop("task")  # the task instance given (if any) is the task; its name may differ
        try:
            config_mod.for_task(task or registry().get("tasks", name).factory(), config=stored)
        except UserError as e:
            raise UserError(f"{where} stores a config this catdiff does not accept: {e}") from None

    @classmethod
    def _from_config(cls, config: dict[str, Any], overrides: dict[str, Any], task: Task | None,
                     out: str | Path | None = None) -> "Engine":
        """An Engine of a saved config (its task by registry name unless ``task`` is given), with
        ``overrides`` on top and no resuming."""
        saved = config_mod.migrate(config)
        name = saved.pop("task")  # the task instance given (if any) is the task; its name may differ
        eng = cls(task=task or name, out=out, config_file=saved, **{**overrides, "resume": False})
        fixed, _ = config_mod.resume_differences(saved, eng.cfg, eng.settings)
        eng.changed_at_load = [(k, old, new) for k, old, new in fixed if k in overrides]
        return eng

    def _warn_changed_at_load(self) -> None:
        """Allowed (the user asked for it), never silent: the weights were not trained so. Said once
        the weights loaded (if they do not fit, the error says to drop the keys instead)."""
        if self.changed_at_load:
            print(f"catdiff: warning: training settings changed at sample time: "
                  f"{', '.join(f'{k}={new!r} (trained with {old!r})' for k, old, new in self.changed_at_load)}; "
                  f"the model never trained with them", file=sys.stderr)

    @classmethod
    def from_pretrained(cls, directory: str | Path, /, task: Task | None = None, **overrides: Any) -> "Engine":
        """An Engine for sampling and evaluation from ``catdiff export`` output (catdiff.run.export):
        its config, its EMA weights in the network and every copy of it, no optimizer state."""
        meta, weights = export_mod.read(directory)
        check_installed(f"export {directory}", meta["config"], meta.get("plugins"), task is not None)
        config, record, task = cls._restored(meta["config"], meta["task"], task, Path(directory) / export_mod.CONFIG)
        eng = cls._from_config(config, overrides, task)
        eng._load_weights(record, {"model": weights, "ema_eval": weights}, directory,
                          {name: weights for name in eng.method.networks()})
        eng.method.load_state_dict(meta.get("method") or {})
        eng.step = int(meta.get("step", 0))
        eng._warn_changed_at_load()
        return eng

    @classmethod
    def load(cls, path: str | Path, /, **overrides: Any) -> "Engine":
        """:meth:`from_pretrained` for an export directory, else :meth:`from_checkpoint` (a
        checkpoint file, or a run directory holding last.pt)."""
        if export_mod.is_export(path):
            return cls.from_pretrained(path, **overrides)
        return cls.from_checkpoint(path, **overrides)

    def export(self, directory: str | Path, force: bool = False) -> list[Path]:
        """``directory``/model.safetensors (the sampling EMA weights) + config.json (catdiff.run.export)."""
        return export_mod.export(self, directory, force=force)

    # ----------------------------------------------------------------- sampling and evaluation
    def context(self, out: str | Path | None = None) -> RunContext:
        """What ``Task.generate`` receives (this process alone; ``out``: the task's files go there)."""
        return RunContext(self, out)

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
        gen = streams.generator(cfg.seed, "sample") if seed is None else torch.Generator().manual_seed(seed)
        out = []
        bar = progress(n, "sample", disable=self.rank != 0)
        for lo in range(0, n, batch_size):
            hi = min(n, lo + batch_size)
            with self.autocast:
                out.append(self.method.sample(self.ema_eval, SampleRequest(
                    hi - lo, self.task.seq_len, steps=steps or cfg.sample_steps, sampler=sampler,
                    final=final or cfg.final, cond=None if labels is None else labels[lo:hi].to(self.device),
                    guidance=cfg.guidance if guidance is None else guidance,
                    null_id=self.task.num_classes if self.task.num_classes else None,
                    known=None if known is None else known[lo:hi],
                    known_mask=None if known_mask is None else known_mask[lo:hi], generator=gen, device=self.device)))
            bar.update(hi - lo)
        bar.close()
        tokens = torch.cat(out).cpu()
        return self.task.decode(tokens) if decode else tokens

    def likelihood(self, split: str = "test", batches: int | None = None, batch_size: int = 128,
                   draws: int = 1, seed: int | None = None) -> dict[str, float]:
        """Mean of the eq. 3 bound per token (nats and bits) on ``split``, with its standard error
        (the first ``batches`` x ``batch_size`` rows; ``draws`` stratified draws per row; see
        catdiff.run.evaluation.likelihood)."""
        return evaluation.likelihood(self, split, batches, batch_size, draws, seed)

    def evaluate(self, n_samples: int | None = None, out: str | Path | None = None,
                 on_metrics=None) -> dict[str, float]:
        """Likelihood bound, collapse diagnostics and the task's sample metrics (EMA model).

        With an output directory (``out`` or the engine's), rank 0 also writes metrics.json and
        then the task's own files (``save_samples``, ``diagnostics`` and whatever its ``generate``
        writes into ``ctx.out``), recorded in the directory's file list (catdiff.run.rundir);
        ``on_metrics(metrics)`` is called in between, so a failing image write loses no metrics."""
        out = Path(out) if out is not None else self.out
        n = self.cfg.n_samples if n_samples is None else n_samples
        self.check_samples(n, "the number of samples")
        if out is None or self.rank != 0:
            return evaluation.evaluate(self, n, None, on_metrics)
        with rundir.recording(out):
            return evaluation.evaluate(self, n, out, on_metrics)


def _plain(value: Any) -> Any:
    """``value`` as JSON reads it back (tuples as lists), so a checkpoint's and an export's records compare."""
    return json.loads(json.dumps(dict(value), sort_keys=True, default=str))


def _say_if_record_differs(path: Path, saved: dict[str, Any]) -> None:
    """A run directory's config.json edited by hand (or stale) is not what sample / eval read:
    say which keys differ from the checkpoint's, whose config is used."""
    last = path / "last.pt" if path.is_dir() else path
    record_path = last.parent / "config.json"
    if last.name != "last.pt" or not record_path.is_file():
        return
    try:
        record = rundir.read_record(record_path)
    except (ValueError, UserError, OSError):
        print(f"catdiff: warning: {record_path} is not a config record; {last}'s config is used", file=sys.stderr)
        return
    keys = sorted(k for k in set(record) | set(saved) if record.get(k) != saved.get(k))
    if keys:
        print(f"catdiff: warning: {record_path} differs from {last} in {', '.join(keys)}; {last}'s config is used "
              f"(give changes with --set)", file=sys.stderr)
