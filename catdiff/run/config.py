"""Run configuration: the run-level keys, plus the settings of the run's components.

The core declares the run-level keys below (task, method, backbone, seed, the model around any
backbone, optimisation, the machine, bookkeeping, sampling and evaluation); the run's method,
backbone and task declare theirs (:mod:`catdiff.api.settings`). All keys are flat and unique, so
``--set key=value``, ``--config FILE`` and ``Engine(key=value)`` reach every one, and
``config.json`` is one flat table of them. A run's config resolves as
**defaults < the task's defaults < a config file < overrides** (:func:`for_task`).

"Choose for me" is ``None`` (``--set lr=auto``; ``none`` and ``null`` are read the same), never a
sentinel number: the engine or the component fills it in, and the saved config holds the value.
This module imports no torch (``catdiff --help`` stays fast).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from ..api.errors import UserError, read_text
from ..api.settings import Setting, merge


def _section(title: str):
    """A field maker for one group of run-level keys: ``key(default, doc, **Setting fields)``."""
    def key(default: Any, doc: str, **kw: Any):
        return field(default=default, metadata={"group": title, "doc": doc, **kw})
    return key


run = _section("Run: what is trained")
model = _section("Model: the codebook and conditioning around any backbone")
optim = _section("Optimisation")
machine = _section("Machine")
books = _section("Bookkeeping")
sampling = _section("Sampling and evaluation")

DEVICE = r"auto|cpu|mps|cuda(:\d+)?"


@dataclass
class Config:
    task: str = run("digits", "the registered task to train (`catdiff list`); `catdiff run TASK` sets it")
    method: str = run("catdm", "a registered method (`catdiff list`); its settings become keys of the run")
    backbone: str = run("encoder", "a registered backbone: `encoder` (core), `encdec` (catdiff-translate)")
    seed: int = run(0, "seed of initialisation, data order, dropping/noise and sampling", mutable=True)

    embed_dim: int = model(256, "D, the codebook / diffusion space dimension", low=1)
    embed_init_std: float | None = model(None, "std of the codebook's initial rows; auto = D ** -0.25, i.e. "
                                         "variance D^-1/2 (the paper's N(0, D^-1/2))", low=0, auto=True)
    fixed_codebook: bool = model(False, "true: the codebook is not trained (a fixed random embedding)")
    cond_drop: float = model(0.1, "classifier-free guidance: the share of conditions dropped to null in training",
                             low=0, high=1)

    steps: int = optim(2000, "optimizer steps; 0 = no training: checkpoint and evaluate the initial (or resumed) "
                       "model", low=0, mutable=True)
    batch_size: int = optim(32, "the global batch of one optimizer step (all processes, all micro-batches)",
                            low=1, mutable=True)
    accum: int = optim(1, "micro-batches per optimizer step (gradient accumulation)", low=1, mutable=True)
    lr: float | None = optim(None, "peak AdamW rate (warm-up, then cosine to 0.1 lr); auto = the backbone's rule (transformers: min(2e-3, 0.2 / width))",
                             low=0, auto=True, mutable=True)
    weight_decay: float = optim(0.0, "AdamW weight decay", low=0, mutable=True)
    warmup: int | None = optim(None, "steps of linear LR warm-up; auto = steps // 40, at most 2000",
                               low=0, auto=True, mutable=True)
    grad_clip: float = optim(1.0, "maximum gradient norm", low=0, low_open=True, mutable=True)
    ema_eval: float = optim(0.9999, "rate of the slow EMA used for sampling and evaluation", low=0, high=1,
                            mutable=True)

    device: str = machine("auto", "auto | cpu | cuda | cuda:N | mps (under torchrun, cuda = cuda:LOCAL_RANK)",
                          pattern=DEVICE, rule="auto, cpu, cuda, cuda:N or mps", mutable=True)
    precision: str = machine("auto", "auto (CUDA: bf16 where supported, else fp16; CPU: fp32) | fp32 | bf16 | fp16",
                             choices=("auto", "fp32", "bf16", "fp16"), mutable=True)
    compile: bool = machine(False, "torch.compile the training network and the one used for sampling", mutable=True)
    threads: int = machine(0, "torch threads on CPU; 0 = the cores free at start (cores - load average, per "
                                  "local rank; catdiff.run.distributed.free_cores)", low=0, mutable=True)
    dist_timeout: float = machine(120.0, "seconds a DDP rank waits for a peer that does not answer (stopped, dead, "
                                  "hung) before ending the run with an error naming it", low=0, low_open=True,
                                  mutable=True)

    log_every: int = books(50, "steps between reads of the training curves (and the finite-loss check)",
                           low=1, mutable=True)
    ckpt_every: int = books(500, "steps between checkpoints (last.pt); one is always written at the end",
                            low=1, mutable=True)
    keep_last: int = books(0, "step-numbered checkpoints kept beside last.pt (step-00001000.pt, ...)",
                           low=0, mutable=True)
    eval_every: int = books(0, "steps between evaluations during training (bound + sample metrics); 0 = off",
                            low=0, mutable=True)
    eval_samples: int = books(64, "samples for the sample metrics of those evaluations", low=1, mutable=True)
    logger: str = books("auto", "csv (always written) plus: auto (TensorBoard when installed) | tensorboard | wandb",
                        choices=("auto", "csv", "tensorboard", "wandb"), mutable=True)
    resume: bool = books(True, "false: start over in --out, moving the old run's files aside", mutable=True)

    sampler: str = sampling("", "a sampler of the method; \"\" = the method's default (`catdiff list METHOD`)",
                            mutable=True)
    sample_steps: int = sampling(100, "sampling steps of `sample` and evaluation (`catdiff sample --steps` "
                                 "overrides)", low=1, mutable=True)
    final: str = sampling("argmax", "how x is read from the last step's distribution: argmax | sample",
                          choices=("argmax", "sample"), mutable=True)  # = catdiff.methods.shared.FINALS
    guidance: float = sampling(0.0, "classifier-free guidance weight w; 0 = off (conditional tasks only)",
                               low=0, mutable=True)
    n_samples: int = sampling(500, "samples drawn by evaluation (`catdiff run`, `catdiff eval --n`)", low=1,
                              mutable=True)
    eval_batches: int = sampling(8, "test batches for the likelihood bound", low=1, mutable=True)

    # the values of the run's components' settings (method, backbone, task), by name; read them
    # as attributes (``cfg.shift``) like the run-level keys
    options: dict = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:  # only reached when no field or attribute matches
        options = self.__dict__.get("options")
        if options is not None and name in options:
            return options[name]
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(f"config key {name!r} is not a setting of this run (method "
                             f"{self.__dict__.get('method')!r}, backbone {self.__dict__.get('backbone')!r}, "
                             f"task {self.__dict__.get('task')!r})")

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in RUN_NAMES and name in self.__dict__.get("options", ()):
            self.options[name] = value
        else:
            object.__setattr__(self, name, value)

    @property
    def task_options(self) -> dict:
        """The components' settings (catdiff 0.1's name for :attr:`options`)."""
        return self.options

    def to_dict(self) -> dict[str, Any]:
        """Every key's value, one flat table (what ``config.json`` and checkpoints hold)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "options"}
        return {**out, **self.options}

    def replace(self, **changes: Any) -> "Config":
        """A copy with ``changes`` (run-level keys or component settings)."""
        run_changes = {k: v for k, v in changes.items() if k in RUN_NAMES}
        options = {**self.options, **{k: v for k, v in changes.items() if k not in RUN_NAMES}}
        return dataclasses.replace(self, **run_changes, options=options)


def _run_setting(f: dataclasses.Field) -> Setting:
    meta = dict(f.metadata)
    group = meta.pop("group")
    kind = {"int": int, "float": float, "str": str, "bool": bool}[str(f.type).split("|")[0].strip()]
    return Setting(f.name, f.default, meta.pop("doc"), type=kind, **meta), group


RUN_SETTINGS: dict[str, Setting] = {}
RUN_GROUPS: dict[str, str] = {}  # run-level key -> its section title (docs)
for _f in fields(Config):
    if _f.name != "options":
        RUN_SETTINGS[_f.name], RUN_GROUPS[_f.name] = _run_setting(_f)
RUN_NAMES = frozenset(RUN_SETTINGS) | {"options"}

# format 1 (catdiff 0.1) saved one flat config for every run, whatever its method or backbone:
# migrate drops a key of it that another method or backbone declares. It spelled
# "choose for me" with sentinel numbers, which load as None: the run-level keys' are here, a
# component's are its ``v1_auto`` (setting name -> predicate, catdiff.api.method.Method).
V1_RUN_SENTINELS = {"embed_init_std": lambda v: v < 0, "warmup": lambda v: v < 0, "lr": lambda v: v == 0}
# entries of a format-1 ``task_options`` that were messages between components (``ar`` set
# ``causal`` for the backbone); dropped on load
V1_MESSAGES = ("causal",)


def is_v1(saved: Mapping[str, Any]) -> bool:
    """Whether a saved config is format 1's (the only one with ``task_options``)."""
    return "task_options" in saved


def migrate(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A saved config (config.json, a checkpoint's or an export's) in today's flat form. Of format
    1: the nested ``task_options`` lifted to the top, the keys of methods and backbones the run did
    not use gone, the sentinels None, the messages gone. Idempotent."""
    out = {k: v for k, v in saved.items() if k not in ("task_options", "options")}
    for nested in ("task_options", "options"):
        out.update({k: v for k, v in dict(saved.get(nested) or {}).items() if k not in V1_MESSAGES})
    if not is_v1(saved):
        return out
    others, sentinels = _v1_components(pick("method", out), pick("backbone", out))
    out = {k: v for k, v in out.items() if k not in others}
    for key, is_sentinel in sentinels.items():
        if isinstance(out.get(key), (int, float)) and not isinstance(out[key], bool) and is_sentinel(out[key]):
            out[key] = None
    return out


def _v1_components(method: str, backbone: str) -> tuple[set[str], dict[str, Any]]:
    """(the settings of every registered method and backbone but ``method`` and ``backbone``,
    setting name -> the predicate of format 1's "choose for me" number: the run-level keys' and
    the ``v1_auto`` of the run's method and backbone)."""
    from ..api.settings import declared

    reg = settings_registry()
    others, mine, sentinels = set(), set(), dict(V1_RUN_SENTINELS)
    for kind, used in (("methods", method), ("backbones", backbone)):
        for name, comp in reg.components[kind].items():
            try:
                names = {s.name for s in declared(comp.factory)}
                if name == used:
                    mine |= names
                    sentinels.update(getattr(comp.factory, "v1_auto", None) or {})
                else:
                    others |= names
            except UserError:  # a component that fails to import declares nothing we can see
                continue
    return others - mine, sentinels


# ----------------------------------------------------------------------------- the run's settings
def settings_registry():
    """The plugin registry, once its components' settings were checked against each other.

    Config keys are flat: a run's method, backbone and task may not declare one key two ways,
    nor a run-level key (components of one kind never meet in a run, so they may reuse a name).
    A component that clashes with one of higher precedence (built-ins, then first-party plugins,
    then the rest) is refused: recorded in ``registry.failed`` naming both, and left out. The
    check runs once, when settings are first read (a run's config, ``catdiff list NAME``, the
    docs): it imports every method, backbone and task, which a plain ``catdiff list`` does not."""
    from ..api.hooks import _rank, registry
    from ..api.settings import declared

    reg = registry()
    if reg.settings_checked:
        return reg
    reg.settings_checked = True
    seen: dict[str, tuple[str, str, Setting | None]] = {k: ("", "the core (a run-level key)", None) for k in RUN_NAMES}
    comps = [c for kind in ("methods", "backbones", "tasks") for c in reg.components[kind].values()]
    for comp in sorted(comps, key=lambda c: _rank(c.source)):  # stable: registration order within a rank
        owner = f"{comp.kind[:-1]} {comp.name!r} ({comp.source})"
        try:
            settings = declared(comp.factory)
        except UserError:  # a component that fails to import says so when it is used
            continue
        clash = next(((s, seen[s.name][1]) for s in settings
                      if s.name in seen and seen[s.name][0] != comp.kind and seen[s.name][2] != s), None)
        if clash:
            reg.failed[owner] = (f"config key {clash[0].name!r} is declared by {clash[1]} and by {owner}; "
                                 f"one of them must rename it")
            del reg.components[comp.kind][comp.name]
            continue
        for s in settings:
            seen.setdefault(s.name, (comp.kind, owner, s))
    return reg


def component_settings(task, method: str, backbone: str) -> dict[str, Setting]:
    """name -> Setting of every key the run's method, backbone and task (None: no task) declare;
    a key declared by two of them differently, or shadowing a run-level key, raises ValueError
    naming both (a plugin's bug). Unknown method or backbone names raise the registry's UnknownName."""
    from ..api.settings import declared

    reg = settings_registry()
    owners = [(f"method {method!r}", declared(reg.get("methods", method).factory)),
              (f"backbone {backbone!r}", declared(reg.get("backbones", backbone).factory))]
    if task is not None:
        owners.append((f"task {task.name!r}", declared(task)))
    return merge(owners, reserved={k: "the core (a run-level key)" for k in RUN_NAMES})


def owner_of(key: str) -> str | None:
    """``"method 'catdm'"``: a registered component that declares ``key`` (for error messages)."""
    from ..api.settings import declared

    reg = settings_registry()
    for kind in ("methods", "backbones", "tasks"):
        for name, comp in reg.components[kind].items():
            try:
                if any(s.name == key for s in declared(comp.factory)):
                    return f"{kind[:-1]} {name!r}"
            except UserError:  # a component that fails to import owns nothing we can see
                continue
    return None


def resolve(*layers: Mapping[str, Any], settings: Mapping[str, Setting] | None = None) -> Config:
    """Merge override mappings (later wins) onto the defaults: each key is a run-level key or one
    of ``settings`` (the run's components'), coerced to its type; the merged values are checked."""
    settings = dict(settings or {})
    values: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            spec = RUN_SETTINGS.get(key) or settings.get(key)
            if spec is None:
                raise UserError(_unknown(key, f"method {pick('method', *layers)!r}, backbone "
                                             f"{pick('backbone', *layers)!r}", settings))
            values[key] = spec.coerce(value)
    options = {name: values.pop(name, s.default) for name, s in settings.items()}
    for name, value in {**values, **options}.items():
        (RUN_SETTINGS.get(name) or settings[name]).check(value)
    return Config(**values, options=options)


def _unknown(key: str, run: str, settings: Mapping[str, Setting]) -> str:
    owner = owner_of(key)
    if owner:
        return f"config key {key!r} is a setting of {owner}, which this run ({run}) does not use"
    for name, comp in settings_registry().components["tasks"].items():
        try:
            derived = key in getattr(comp.factory, "config_facts", ())
        except UserError:  # a task that fails to import derives nothing we can see
            continue
        if derived:
            return (f"config key {key!r} is no setting: task {name!r} derives it from its data and stores it with "
                    f"the checkpoint; remove it")
    known = sorted(RUN_SETTINGS) + sorted(settings)
    return f"unknown config key {key!r}. Known keys: {', '.join(known)}"


def pick(key: str, *layers: Mapping[str, Any]) -> str:
    """The value of run-level ``key`` (method, backbone) as the layers set it (later wins)."""
    value = RUN_SETTINGS[key].default
    for layer in layers:
        if key in layer:
            value = str(layer[key])
    return value


FALLBACK_LR = 0.2 / 128  # lr=auto for a backbone without a rule: the encoder's at its default width


def derive(cfg: Config) -> Config:
    """``cfg`` with its "choose for me" run-level keys filled in from the run's size:
    ``lr=None`` -> the backbone factory's ``default_lr(cfg)`` (the transformers':
    catdiff.nn.backbones.transformer_lr), else :data:`FALLBACK_LR`; ``warmup=None`` ->
    ``min(2000, steps // 40)`` (~30 of the tuned small tasks' 1300 steps; a fixed 100 was too
    slow for short runs, benchmarks/defaults.py). The saved config holds the values, so a
    resume compares what was trained."""
    from ..api.hooks import registry

    changes: dict[str, Any] = {}
    if cfg.lr is None:
        rule = getattr(registry().get("backbones", cfg.backbone).factory, "default_lr", None)
        changes["lr"] = float(rule(cfg)) if rule is not None else FALLBACK_LR
    if cfg.warmup is None:
        changes["warmup"] = min(2000, cfg.steps // 40)
    return dataclasses.replace(cfg, **changes)


def for_task(task, config: str | Path | Mapping[str, Any] | None = None,
             overrides: Mapping[str, Any] | None = None) -> Config:
    """A task's run config: defaults < ``task.defaults`` < ``config`` (a file, or a saved
    config's mapping) < ``overrides``; the keys are the run-level ones and the settings of the
    run's method, backbone and task.

    A task's defaults may pin settings of several methods (``shift`` for catdm, ...): those the
    run's components do not declare are skipped. Any other unknown key is an error naming its
    owner if it has one."""
    saved = migrate(config) if isinstance(config, Mapping) else migrate(load_file(config)) if config else {}
    overrides = dict(overrides or {})
    method = pick("method", task.defaults, saved, overrides)
    backbone = pick("backbone", task.defaults, saved, overrides)
    settings = component_settings(task, method, backbone)
    known = lambda k: k in RUN_SETTINGS or k in settings  # noqa: E731
    typos = sorted(k for k in task.defaults if not known(k) and owner_of(k) is None)
    if typos:  # a plugin's bug, not the user's
        raise ValueError(f"task {task.name!r} has defaults for {', '.join(typos)}, which no method, backbone or "
                         f"task declares")
    task_defaults = {k: v for k, v in task.defaults.items() if known(k)}
    for given in (saved, overrides or {}):
        if given.get("task", task.name) != task.name:
            raise UserError(f"config task={given['task']!r} does not match the task being run ({task.name!r}); the "
                            f"command's TASK (or Engine(task=...)) chooses it: remove the key or run that task")
    return derive(resolve(task_defaults, saved, overrides, {"task": task.name}, settings=settings))


def make(**values: Any) -> Config:
    """A config without a task: the run-level keys and the settings of the ``method`` and
    ``backbone`` in ``values`` (default catdm, encoder), e.g. to build a backbone in a test."""
    settings = component_settings(None, pick("method", values), pick("backbone", values))
    return derive(resolve(values, settings=settings))


def parse_sets(items: list[str]) -> dict[str, str]:
    """``["lr=1e-3", "drop=none"]`` -> dict; values are coerced later by :func:`resolve`."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--set expects key=value, got {item!r}")
        if key.strip() == "task":
            raise UserError(f"--set {item}: the task is not a setting; name it as the command's TASK (`catdiff run "
                            f"{value.strip() or 'TASK'}`); a checkpoint keeps its own")
        key, value = key.strip(), value.strip()
        if key in out and out[key] != value:
            raise UserError(f"--set {key} is given twice ({out[key]!r}, then {value!r}); give it once")
        out[key] = value
    return out


CONFIG_FORMATS = (".json", ".toml")


def load_file(path: str | Path) -> dict[str, Any]:
    """A JSON or TOML file of config values (a table of key = value); errors name the file and line."""
    path = Path(path)
    if path.suffix not in CONFIG_FORMATS:
        raise UserError(f"config file {path}: unknown format {path.suffix or '(no extension)'!r}; "
                        f"use one of {', '.join(CONFIG_FORMATS)}")
    if not path.is_file():
        raise UserError(f"config file {path} not found")
    text = read_text(path, "config file")
    try:
        if path.suffix == ".toml":
            import tomllib

            values = tomllib.loads(text)
        else:
            values = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"config file {path}, line {e.lineno} column {e.colno}: {e.msg} (invalid JSON)") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"config file {path}: {e} (invalid TOML)") from None
    if not isinstance(values, dict):
        raise UserError(f"config file {path} must hold a table of key: value pairs, got a {type(values).__name__}")
    return values



# ----------------------------------------------------------------------------- checks and resuming
def validate(cfg: Config) -> None:
    """Combinations of run-level keys (each value was checked by :func:`resolve`); a component
    checks combinations of its own settings when it is built."""
    if cfg.batch_size % cfg.accum:
        raise UserError(f"config batch_size={cfg.batch_size!r}: must be a multiple of accum={cfg.accum} "
                        f"(batch_size is the global batch)")


def resume_differences(saved: Mapping[str, Any], requested: Config,
                       settings: Mapping[str, Setting] | None = None) -> tuple[list, list]:
    """(fixed, changed): lists of (key, saved value, requested value) between a checkpoint's
    config and the requested one; ``fixed`` differences forbid resuming. A key may change when
    its Setting is ``mutable`` (run-level ones from :data:`RUN_SETTINGS`, the components' from
    ``settings``). Keys the checkpoint does not record (older catdiff) are not compared."""
    fixed, changed = [], []
    old = migrate(saved)
    for key, new in requested.to_dict().items():
        if key in old and old[key] != new:
            (changed if may_change(key, settings) else fixed).append((key, old[key], new))
    return fixed, changed


def may_change(key: str, settings: Mapping[str, Setting] | None = None) -> bool:
    """Whether ``key`` may change when a run resumes: its Setting is ``mutable`` (run-level ones from
    :data:`RUN_SETTINGS`, the components' from ``settings``)."""
    setting = dict(settings or {}).get(key) or RUN_SETTINGS.get(key)
    return setting is not None and setting.mutable
