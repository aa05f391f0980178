"""Run configuration: one flat dataclass, resolved as defaults < task defaults < file < overrides.

"Choose for me" is ``None`` (``--set lr=auto``; ``none`` and ``null`` are read the same), never a
sentinel number: the engine or the method fills it in, and the saved config holds the value.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from .errors import UserError, read_text


@dataclass
class Config:
    task: str = "digits"
    seed: int = 0

    # backbone
    backbone: str = "encoder"
    layers: int = 4
    heads: int = 4
    width: int = 128
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    positions: str = "rotary"      # encoder / encdec decoder: rotary (in attention) | sinusoidal (added to the input)
    pos_scale: float = 1.0         # amplitude of the added sinusoids
    conv_kernel: int = 0           # encoder: depthwise conv over neighbouring tokens before each block; 0 = off
    token_grid: str = ""           # "HxW": the tokens' 2D layout for conv_kernel (images); "" = along the sequence
    embed_dim: int = 256           # D, the codebook / diffusion space dimension
    embed_init_std: float | None = None  # None: D ** -0.25, i.e. variance D^-1/2 (the paper's N(0, D^-1/2))

    # method (paper 003 sec. 2, 4, 5); ablation switches, one value each
    method: str = "catdm"          # a registered method (catdiff list); the keys below are catdm's
    objective: str = "catdm"       # catdm | csdm | csdm_l2 | ce
    beta_dm: float = 0.005
    beta_cm: float = 1.0           # 0 gives "CATDM w/o CM"
    l2_weight: float = 1e-3        # csdm_l2 only
    fixed_codebook: bool = False
    shift: float = -3.0            # s of the shifted cosine schedule (paper gives none; digits sweep); 0 = "w/o NS"
    logsnr_min: float = -15.0
    logsnr_max: float = 8.0        # z_0's noise std e^-4: see catdiff/methods/catdm/schedule.py for why not higher
    drop: str = "rand"             # rand | linear | rand_ratio | none ("w/o RD")
    drop_ratio: float = 0.2
    drop_l0: float | None = None   # drop ratio of L0's z_0 pass; None = the strategy's (catdiff.methods.catdm.objective)
    t_draw: str = "iid"            # training times: iid | stratified (catdiff.methods.catdm.schedule.draw_times)
    l0_rows: float = 1.0           # fraction of the batch whose z_0 pass estimates L0 (catdiff.methods.catdm.objective); 1 = all rows
    ema_cm: float = 0.99           # EMA rate of the CM target (network and codebook)
    ema_eval: float = 0.9999       # slow EMA used for sampling and evaluation
    cond_drop: float = 0.1         # classifier-free guidance: condition dropped to null
    self_cond: bool = False        # self-conditioning on the previous EMB_hat (not in the paper; catdiff.model.Denoiser)
    evidence: bool = True          # logits += each token's own Gaussian evidence (not in the paper; catdiff.model.Denoiser); continuous methods only

    # discrete-state methods (catdiff.methods: d3pm, vqdiffusion, maskgit)
    discrete_steps: int | None = None  # T of d3pm / vqdiffusion; None = the paper's (d3pm 1000, vqdiffusion 100)
    hybrid_weight: float | None = None  # lambda of d3pm L_vb + lambda L_CE, vqdiffusion L_vlb + lambda L_x0; None = paper's
    purity_scale: float = 1.0      # r of Improved VQ-Diffusion eq. 11 (vqdiffusion sampler "purity")
    mask_temperature: float = 4.5  # maskgit: Gumbel temperature of the confidence order, annealed to 0

    # optimisation
    steps: int = 2000              # 0 = no training: checkpoint and evaluate the initial (or resumed) model
    batch_size: int = 32           # the global batch of one optimizer step (all processes, all micro-batches)
    accum: int = 1                 # micro-batches per optimizer step (gradient accumulation)
    lr: float | None = None        # peak AdamW rate (warm-up, then cosine to 0.1 lr); None = min(2e-3, 0.2 / width)
    weight_decay: float = 0.0
    warmup: int | None = None      # steps of linear LR warm-up; None = steps // 40, at most 2000
    grad_clip: float = 1.0
    device: str = "auto"           # auto | cpu | cuda | cuda:N (under torchrun, cuda = cuda:LOCAL_RANK)
    precision: str = "auto"        # auto (CUDA: bf16 where supported, else fp16; CPU: fp32) | fp32 | bf16 | fp16
    compile: bool = False          # torch.compile the training network and the one used for sampling
    threads: int = 0               # torch threads on CPU; 0 = torch default
    dist_timeout: float = 120.0    # seconds a DDP rank waits for a peer that does not answer (stopped, dead, hung) before ending the run with an error naming it

    # bookkeeping
    log_every: int = 50            # steps between reads of the training curves (and the finite-loss check)
    ckpt_every: int = 500
    keep_last: int = 0             # step-numbered checkpoints kept beside last.pt (step-00001000.pt, ...)
    eval_every: int = 0            # steps between evaluations during training (bound + sample metrics); 0 = off
    eval_samples: int = 64         # samples for the sample metrics of those evaluations
    logger: str = "auto"           # csv (always written) plus: auto (TensorBoard when installed) | tensorboard | wandb
    resume: bool = True            # false: start over in --out, moving the old run's files aside

    # sampling and evaluation
    sampler: str = ""              # "" = the method's default (catdm: ancestral | ddim)
    sample_steps: int = 100
    final: str = "argmax"          # argmax | sample: how x is read from P(x | z_0; 0)
    guidance: float = 0.0
    n_samples: int = 500
    eval_batches: int = 8          # test batches for the likelihood bound

    # plugin keys, set like any other: the ``options`` of the task (data paths, tokenizer files, ...)
    # and of the method (``Method.options``); the name predates method options (saved configs use it)
    task_options: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


AUTO_WORDS = ("auto", "none", "null", "")


def _coerce(name: str, value: Any, kind: type, optional: bool = False) -> Any:
    if optional and (value is None or isinstance(value, str) and value.strip().lower() in AUTO_WORDS):
        return None
    if isinstance(value, str):
        if kind is bool:
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise UserError(f"config {name}: expected true/false, got {value!r}")
        if kind is str:
            return value
        try:
            value = float(value) if kind is int and "e" in value.lower() and "x" not in value.lower() else kind(value)
        except ValueError:
            raise UserError(f"config {name}: expected {kind.__name__}, got {value!r}") from None
    if kind is bool and isinstance(value, bool) or kind is str and isinstance(value, str):
        return value
    if kind in (int, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        if kind is int and value != int(value):
            raise UserError(f"config {name}: expected an integer, got {value!r}")
        return kind(value)
    if not isinstance(value, (dict, list, tuple)) and kind not in (int, float, bool, str):
        return kind(value)
    raise UserError(f"config {name}: expected {kind.__name__}, got {type(value).__name__} {value!r}")


# entries of a saved ``task_options`` that were messages between components in format 1
# (``ar`` set ``causal`` for the backbone); dropped when such a config is loaded
V1_MESSAGES = ("causal",)

def _field_type(f) -> tuple[type, bool]:
    """(the value type, whether None = "choose for me" is allowed) of a Config field."""
    if f.default is not None:
        return type(f.default), False
    return {"int": int, "float": float, "str": str, "bool": bool}[str(f.type).split("|")[0].strip()], True


_TYPES = {f.name: _field_type(f)[0] for f in fields(Config) if f.name != "task_options"}
OPTIONAL = frozenset(f.name for f in fields(Config) if f.name != "task_options" and _field_type(f)[1])

# format 1 (catdiff 0.1) spelled "choose for me" with sentinel numbers; they load as None
V1_SENTINELS = {"embed_init_std": lambda v: v < 0, "drop_l0": lambda v: v < 0, "discrete_steps": lambda v: v == 0,
                "hybrid_weight": lambda v: v < 0, "warmup": lambda v: v < 0, "lr": lambda v: v == 0}


def migrate(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A saved config (config.json, a checkpoint's or an export's) in today's form: format-1
    sentinels become None, component messages leave ``task_options``."""
    out = dict(saved)
    for key, is_sentinel in V1_SENTINELS.items():
        if isinstance(out.get(key), (int, float)) and not isinstance(out[key], bool) and is_sentinel(out[key]):
            out[key] = None
    if "task_options" in out:
        out["task_options"] = {k: v for k, v in dict(out["task_options"]).items() if k not in V1_MESSAGES}
    return out


def resolve(*layers: Mapping[str, Any], options: Mapping[str, Any] | None = None) -> Config:
    """Merge override mappings (later wins) onto the defaults, checking names and types.

    ``options`` are plugin keys (a task's and its method's) with their defaults (types follow
    the defaults); their values land in ``Config.task_options``. A layer may also carry
    ``task_options`` as a mapping (a saved config does)."""
    options = dict(options or {})
    types = {k: type(v) for k, v in options.items()}
    values: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if key == "task_options":
                for k, v in dict(value).items():
                    options[k] = _coerce(k, v, types[k]) if k in types else v
            elif key in _TYPES:
                values[key] = _coerce(key, value, _TYPES[key], key in OPTIONAL)
            elif key in types:
                options[key] = _coerce(key, value, types[key])
            else:
                known = sorted(_TYPES) + sorted(types)
                raise UserError(f"unknown config key {key!r}. Known keys: {', '.join(known)}")
    return Config(**values, task_options=options)


def method_of(*layers: Mapping[str, Any]) -> str:
    """The ``method`` key as :func:`resolve` would set it from ``layers`` (later wins)."""
    name = Config.method
    for layer in layers:
        if "method" in layer:
            name = str(layer["method"])
    return name


def plugin_options(task, method: str) -> dict[str, Any]:
    """The config keys declared by ``task`` and by the registered method ``method`` (its
    factory's ``options``; a :class:`catdiff.method.Method` subclass is such a factory), with
    their defaults. Unknown methods raise the registry's KeyError (listing the known ones)."""
    from .hooks import registry

    method_opts = dict(getattr(registry().get("methods", method).factory, "options", None) or {})
    task_opts = dict(task.options)
    for owner, opts in ((f"task {task.name!r}", task_opts), (f"method {method!r}", method_opts)):
        core = sorted(set(opts) & (set(_TYPES) | {"task_options"}))
        if core:
            raise ValueError(f"{owner} declares option(s) {', '.join(core)}, which are core config keys; rename them")
    clash = sorted(set(task_opts) & set(method_opts))
    if clash:
        raise ValueError(f"config key(s) {', '.join(clash)} declared both by task {task.name!r} and by "
                         f"method {method!r} (their options); one of the plugins must rename them")
    return {**task_opts, **method_opts}


def derive(cfg: Config) -> Config:
    """``cfg`` with the keys left at their "derive" marker set from the run's size (issue 18):
    ``lr=None`` -> ``min(2e-3, 0.2 / width)`` (Adam's update ~ 1 / width, as in muP) and
    ``warmup=None`` -> ``min(2000, steps // 40)``. The sweep of benchmarks/defaults.py (four
    untuned tasks, 1300 steps) found the former fixed values (lr 3e-4, warmup 100) too slow for
    small models and short runs; the rules give what the tuned small tasks use (lr 2e-3 at width
    96, warmup ~30 of 1300 steps) and the paper's text8 run (12 x 768 at 3e-4, rule 2.6e-4; 343k
    steps, warmup 2000). The saved config holds the values, so a resume compares what was trained."""
    changes: dict[str, Any] = {}
    if cfg.lr is None:
        changes["lr"] = min(2e-3, 0.2 / cfg.width)
    if cfg.warmup is None:
        changes["warmup"] = min(2000, cfg.steps // 40)
    return dataclasses.replace(cfg, **changes)


CONTINUOUS_ONLY = ("evidence", "self_cond")


def for_task(task, config_file: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """A task's run config: defaults < ``task.defaults`` < the config file < ``overrides``,
    with the ``options`` of the task and of the run's method accepted as keys."""
    file_values = migrate(load_file(config_file)) if config_file else {}
    layers = (task.defaults, file_values, overrides or {}, {"task": task.name})
    method = method_of(*layers)
    options = plugin_options(task, method)
    from .hooks import registry

    if not getattr(registry().get("methods", method).factory, "continuous", True):
        # evidence / self_cond belong to continuous methods: the core's and the task's defaults of
        # them do not apply to a discrete method (a value the user sets still errors in the Engine)
        task_defaults = {k: v for k, v in task.defaults.items() if k not in CONTINUOUS_ONLY}
        layers = ({k: False for k in CONTINUOUS_ONLY}, task_defaults, *layers[1:])
    return derive(resolve(*layers, options=options))


def parse_sets(items: list[str]) -> dict[str, str]:
    """``["lr=1e-3", "drop=none"]`` -> dict; values are coerced later by :func:`resolve`."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
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


# ----------------------------------------------------------------------------- validation
# the run-level keys' allowed values; a method checks its own keys' values when it is built
# (CATDM: objective, drop, t_draw). This module imports no torch (`catdiff --help` stays fast).
CHOICES = {
    "positions": ("sinusoidal", "rotary"),
    "precision": ("auto", "fp32", "bf16", "fp16"),
    "logger": ("auto", "csv", "tensorboard", "wandb"),
    "final": ("argmax", "sample"),  # = catdiff.methods.shared.FINALS (tests/test_imports.py)
}
AT_LEAST_1 = ("layers", "heads", "width", "embed_dim", "batch_size", "accum", "log_every", "ckpt_every",
              "eval_samples", "sample_steps", "n_samples", "eval_batches", "discrete_steps")
AT_LEAST_0 = ("lr", "steps", "warmup", "threads", "keep_last", "eval_every", "conv_kernel",
              "weight_decay", "beta_dm", "beta_cm", "l2_weight", "guidance", "mask_temperature", "pos_scale")
FRACTIONS = ("dropout", "drop_ratio", "ema_cm", "ema_eval", "cond_drop")  # in [0, 1]
POSITIVE = ("grad_clip", "mlp_ratio", "purity_scale", "dist_timeout")


def validate(cfg: Config) -> None:
    """Check every core value (ranges, names, combinations that need no task); a UserError
    names the key, the value and what is allowed. Called when the Engine is built."""
    import math
    import re

    def bad(key: str, need: str) -> UserError:
        return UserError(f"config {key}={getattr(cfg, key)!r}: {need}")

    for key, names in CHOICES.items():
        if getattr(cfg, key) not in names:
            raise bad(key, f"must be one of {', '.join(names)}")
    for f in fields(Config):
        v = getattr(cfg, f.name)
        if v is None and f.name not in OPTIONAL:
            raise bad(f.name, "must be set (only " + ", ".join(sorted(OPTIONAL)) + " may be auto)")
        if isinstance(v, float) and not math.isfinite(v):
            raise bad(f.name, "must be a finite number")
    for key in AT_LEAST_1:
        if getattr(cfg, key) is not None and getattr(cfg, key) < 1:
            raise bad(key, "must be >= 1" + (" or auto" if key in OPTIONAL else ""))
    for key in AT_LEAST_0:
        if getattr(cfg, key) is not None and getattr(cfg, key) < 0:
            raise bad(key, "must be >= 0" + (" or auto" if key in OPTIONAL else ""))
    for key in FRACTIONS:
        if not 0 <= getattr(cfg, key) <= 1:
            raise bad(key, "must lie in [0, 1]")
    for key in POSITIVE:
        if getattr(cfg, key) <= 0:
            raise bad(key, "must be > 0")
    if not 0 < cfg.l0_rows <= 1:
        raise bad("l0_rows", "must lie in (0, 1]")
    if cfg.drop_l0 is not None and not 0 <= cfg.drop_l0 <= 1:
        raise bad("drop_l0", "must lie in [0, 1], or be auto (the strategy's)")
    for key in ("embed_init_std", "hybrid_weight"):
        if getattr(cfg, key) is not None and getattr(cfg, key) < 0:
            raise bad(key, "must be >= 0, or auto (the paper's)")
    if cfg.batch_size % cfg.accum:
        raise bad("batch_size", f"must be a multiple of accum={cfg.accum} (batch_size is the global batch)")
    if cfg.width % cfg.heads:
        raise bad("width", f"must be a multiple of heads={cfg.heads}")
    if cfg.conv_kernel and cfg.conv_kernel % 2 == 0:
        raise bad("conv_kernel", "must be 0 (off) or odd")
    if cfg.token_grid and not re.fullmatch(r"[1-9]\d*x[1-9]\d*", cfg.token_grid):
        raise bad("token_grid", "must be HxW (e.g. 8x8) or empty")
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", cfg.device):
        raise bad("device", "must be auto, cpu, cuda, cuda:N or mps")
    if cfg.logsnr_min >= cfg.logsnr_max:
        raise UserError(f"config logsnr_min={cfg.logsnr_min} must be < logsnr_max={cfg.logsnr_max}")


# ----------------------------------------------------------------------------- resuming
# Keys that may differ between a checkpoint and the run that resumes it: the budget, the
# optimisation, sampling / evaluation, bookkeeping and the machine. Every other core key
# (task, method, objective and its switches, backbone and sizes, embed_dim, ...) defines
# what is trained and must match; task and method options must match unless their plugin
# lists them in ``mutable_options``.
MUTABLE_KEYS = frozenset({
    "seed", "steps", "batch_size", "lr", "weight_decay", "warmup", "grad_clip", "ema_eval",
    "accum", "device", "precision", "compile", "threads", "dist_timeout", "log_every", "ckpt_every", "resume",
    "keep_last", "eval_every", "eval_samples", "logger",
    "sampler", "sample_steps", "final", "guidance", "n_samples", "eval_batches", "purity_scale",
    "mask_temperature",
})


def resume_differences(saved: Mapping[str, Any], requested: Config, mutable_options=()) -> tuple[list, list]:
    """(fixed, changed): lists of (key, saved value, requested value) between a checkpoint's
    config and the requested one; ``fixed`` differences forbid resuming. Keys the checkpoint
    does not record (older catdiff) are not compared."""
    fixed, changed = [], []
    now = requested.to_dict()
    pairs = [(k, saved[k], now[k]) for k in now if k != "task_options" and k in saved]
    old_opts, new_opts = dict(saved.get("task_options") or {}), now["task_options"]
    pairs += [(k, old_opts[k], new_opts[k]) for k in new_opts if k in old_opts]
    for key, old, new in pairs:
        if old != new:
            mutable = key in MUTABLE_KEYS or key in mutable_options
            (changed if mutable else fixed).append((key, old, new))
    return fixed, changed
