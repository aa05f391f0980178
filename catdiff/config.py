"""Run configuration: one flat dataclass, resolved as defaults < task defaults < file < overrides."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping


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
    positions: str = "sinusoidal"  # encoder / encdec decoder: sinusoidal (added to the input) | rotary (in attention)
    pos_scale: float = 1.0         # amplitude of the added sinusoids
    conv_kernel: int = 0           # encoder: depthwise conv over neighbouring tokens before each block; 0 = off
    token_grid: str = ""           # "HxW": the tokens' 2D layout for conv_kernel (images); "" = along the sequence
    embed_dim: int = 256           # D, the codebook / diffusion space dimension
    embed_init_std: float = -1.0   # < 0: D ** -0.25, i.e. variance D^-1/2 (the paper's N(0, D^-1/2))

    # method (paper 003 sec. 2, 4, 5); ablation switches, one value each
    method: str = "catdm"          # a registered method (catdiff list); the keys below are catdm's
    objective: str = "catdm"       # catdm | csdm | csdm_l2 | ce
    beta_dm: float = 0.005
    beta_cm: float = 1.0           # 0 gives "CATDM w/o CM"
    l2_weight: float = 1e-3        # csdm_l2 only
    fixed_codebook: bool = False
    shift: float = -3.0            # s of the shifted cosine schedule (paper gives none; digits sweep); 0 = "w/o NS"
    logsnr_min: float = -15.0
    logsnr_max: float = 8.0        # z_0's noise std e^-4: see catdiff/schedule.py for why not higher
    drop: str = "rand"             # rand | linear | rand_ratio | none ("w/o RD")
    drop_ratio: float = 0.2
    drop_l0: float = -1.0          # drop ratio of L0's z_0 pass; < 0 = the strategy's (catdiff.objective)
    ema_cm: float = 0.99           # EMA rate of the CM target (network and codebook)
    ema_eval: float = 0.9999       # slow EMA used for sampling and evaluation
    cond_drop: float = 0.1         # classifier-free guidance: condition dropped to null
    self_cond: bool = False        # self-conditioning on the previous EMB_hat (not in the paper; catdiff.model.Denoiser)
    evidence: bool = False         # logits += each token's own Gaussian evidence (not in the paper; catdiff.model.Denoiser)

    # discrete-state methods (catdiff.methods: d3pm, vqdiffusion, maskgit)
    discrete_steps: int = 0        # T of d3pm / vqdiffusion; 0 = the paper's (d3pm 1000, vqdiffusion 100)
    hybrid_weight: float = -1.0    # lambda of d3pm L_vb + lambda L_CE, vqdiffusion L_vlb + lambda L_x0; < 0 = paper's
    purity_scale: float = 1.0      # r of Improved VQ-Diffusion eq. 11 (vqdiffusion sampler "purity")
    mask_temperature: float = 4.5  # maskgit: Gumbel temperature of the confidence order, annealed to 0

    # optimisation
    steps: int = 2000
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup: int = 100
    grad_clip: float = 1.0
    device: str = "auto"           # auto | cpu | cuda | cuda:N
    precision: str = "auto"        # auto (bf16 on CUDA) | fp32 | bf16
    compile: bool = False
    threads: int = 0               # torch threads on CPU; 0 = torch default

    # bookkeeping
    log_every: int = 50
    ckpt_every: int = 500
    resume: bool = True

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

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def _coerce(name: str, value: Any, kind: type) -> Any:
    if not isinstance(value, str):
        return kind(value) if kind is not bool else bool(value)
    if kind is bool:
        low = value.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"config {name}: expected true/false, got {value!r}")
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"config {name}: expected {kind.__name__}, got {value!r}") from None


_TYPES = {f.name: type(f.default) for f in fields(Config) if f.name != "task_options"}


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
                values[key] = _coerce(key, value, _TYPES[key])
            elif key in types:
                options[key] = _coerce(key, value, types[key])
            else:
                known = sorted(_TYPES) + sorted(types)
                raise ValueError(f"unknown config key {key!r}. Known keys: {', '.join(known)}")
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


def for_task(task, config_file: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """A task's run config: defaults < ``task.defaults`` < the config file < ``overrides``,
    with the ``options`` of the task and of the run's method accepted as keys."""
    file_values = load_file(config_file) if config_file else {}
    layers = (task.defaults, file_values, overrides or {}, {"task": task.name})
    return resolve(*layers, options=plugin_options(task, method_of(*layers)))


def parse_sets(items: list[str]) -> dict[str, str]:
    """``["lr=1e-3", "drop=none"]`` -> dict; values are coerced later by :func:`resolve`."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def load_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    text = path.read_text()
    if path.suffix == ".toml":
        import tomllib

        return tomllib.loads(text)
    return json.loads(text)
