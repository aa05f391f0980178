"""The Task interface: what a plugin provides so the engine can train on its data.

A task owns everything modality-specific: where the data lives, how it becomes token
sequences, how generated tokens are judged (metrics) and shown (samples, plots). The
engine only sees integer token tensors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from .errors import UserError
from .settings import declared

if TYPE_CHECKING:  # the interface imports no torch (LazyTokenData.rows imports it when called)
    import torch


@dataclass(frozen=True)
class DataSpec:
    """What a task's data look like, handed by the engine to the method and backbone factories
    (the backbone factory receives it as ``spec=`` when it accepts that argument) and stored
    with every checkpoint. Built by :meth:`Task.data_spec` after ``setup``.

      vocab_size   K, data tokens (ids 0..K-1; the engine adds [mask] and [null])
      seq_len      M, tokens per sequence
      num_classes  > 0: class labels 0..num_classes-1 condition the model (guidance)
      conditional  the backbone reads another condition (e.g. source sentences)
      grid         (H, W) with H * W = seq_len: the tokens' 2D layout (images), read by the
                   encoder's ``conv_kernel`` when ``token_grid`` is not set; None: a sequence
      extras       named facts the task derived from its data (JSON values), e.g. a backbone's
                   ``{"src_vocab": 8000, "pad_id": 1}`` or image-folder's cache key: stored with
                   the checkpoint and handed back by :meth:`Task.restore`
    """

    vocab_size: int
    seq_len: int
    num_classes: int = 0
    conditional: bool = False
    extras: Mapping[str, Any] = field(default_factory=dict)
    grid: tuple[int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"vocab_size": self.vocab_size, "seq_len": self.seq_len, "num_classes": self.num_classes,
                "conditional": self.conditional, "extras": dict(self.extras),
                "grid": list(self.grid) if self.grid else None}

    @classmethod
    def from_dict(cls, meta: Mapping[str, Any]) -> "DataSpec":
        """The spec of a checkpoint's or an export's task record (:meth:`to_dict`; older records
        lack ``extras`` and ``grid``)."""
        grid = meta.get("grid")
        return cls(int(meta["vocab_size"]), int(meta["seq_len"]), int(meta.get("num_classes", 0)),
                   bool(meta.get("conditional", False)), dict(meta.get("extras") or {}),
                   tuple(int(v) for v in grid) if grid else None)


@dataclass
class TokenData:
    """A split of a task: ``tokens`` LongTensor [N, M] in 0..K-1 and the per-example condition.

    ``labels`` is None (unconditional), class ids [N] (``num_classes > 0``), or any tensor
    [N, ...] the task's backbone reads as its condition (e.g. source-sentence ids [N, S]).
    """

    tokens: torch.Tensor
    labels: torch.Tensor | None = None

    def __post_init__(self):
        if self.tokens.dim() != 2:
            raise ValueError(f"TokenData.tokens must be [N, M], got shape {tuple(self.tokens.shape)}")
        if self.labels is not None and self.labels.shape[:1] != self.tokens.shape[:1]:
            raise ValueError(
                f"TokenData.labels must be [N, ...] with N={self.tokens.shape[0]}, got {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return self.tokens.shape[0]


class LazyTokenData:
    """A split read on demand, for token sets too large to hold in memory (e.g. memory-mapped shards).

    ``source`` is any object with ``len(source)`` and ``source.rows(idx) -> (tokens, labels)``:
    tokens int64 [len(idx), seq_len], labels [len(idx), ...] or None. ``seq_len`` and
    ``vocab_size`` (ids lie in 0..vocab_size-1) default to the source's attributes of those
    names. The engine keeps such a split on the host, checks it from this metadata and a few
    rows, and gathers (and range-checks) only each batch's rows before moving them to the device.
    """

    def __init__(self, source: Any, seq_len: int | None = None, vocab_size: int | None = None):
        self.source = source
        self.seq_len = int(source.seq_len if seq_len is None else seq_len)
        self.vocab_size = int(source.vocab_size if vocab_size is None else vocab_size)

    def __len__(self) -> int:
        return len(self.source)

    def rows(self, idx) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tokens and labels of rows ``idx`` (an index tensor/array or a slice), on the host."""
        import torch

        if isinstance(idx, slice):
            r = range(len(self))[idx]
            idx = torch.arange(r.start, r.stop, r.step)
        tokens, labels = self.source.rows(torch.as_tensor(idx, device="cpu"))
        return torch.as_tensor(tokens, dtype=torch.long), None if labels is None else torch.as_tensor(labels)


class Task:
    """Base class for tasks. Subclass it, set the class attributes, implement ``load``.

    Class attributes:
      name         registry name, e.g. ``"digits"``
      vocab_size   K, the number of data tokens (specials are the engine's business)
      seq_len      M, tokens per sequence
      num_classes  > 0 for class-conditional tasks (labels in 0..num_classes-1; guidance)
      conditional  True when ``labels`` hold another kind of condition for the backbone
                   (e.g. source sentences); implied by ``num_classes > 0``
      defaults     config overrides applied before the user's (model size, budget, ...)
      settings     the task's own config keys (data paths, ...), a tuple of
                   :class:`catdiff.api.settings.Setting`; set them like any key (``--set
                   data_dir=...``), read them as ``self.option("data_dir")`` (or ``cfg.data_dir``).
                   catdiff 0.1's ``options`` (name -> default) with ``mutable_options`` (those a
                   resume may change) are still read, with a DeprecationWarning
      best_metric  (metric name, "min" | "max"): what ``best.pt`` keeps during ``eval_every``
                   evaluations; None: the likelihood bound (lower is better)
      description  one line for ``catdiff list``
      min_samples  the fewest samples its ``evaluate`` can score (e.g. 2 for FID): a smaller
                   ``n_samples`` is refused before training
      config_facts keys that an older version of the task stored in the config instead of
                   ``DataSpec.extras``: a saved config's values for them move into the extras
                   that :meth:`restore` receives (old checkpoints keep loading)

    The engine calls ``setup(cfg)`` before anything else, so ``self.cfg`` is the resolved config.
    """

    name: str = ""
    vocab_size: int = 0
    seq_len: int = 0
    num_classes: int = 0
    conditional: bool = False
    defaults: Mapping[str, Any] = {}
    settings: tuple = ()
    options: Mapping[str, Any] = {}
    mutable_options: tuple[str, ...] = ()
    best_metric: tuple[str, str] | None = None
    description: str = ""
    min_samples: int = 1
    config_facts: tuple[str, ...] = ()
    cfg: Any = None

    def setup(self, cfg) -> None:
        """Receive the resolved :class:`catdiff.run.config.Config` (override to react to it; call super)."""
        self.cfg = cfg

    def restore(self, spec: DataSpec) -> None:
        """Receive the spec a checkpoint or an export was trained on, before ``setup``, when the
        engine is rebuilt from one (``catdiff sample`` / ``eval`` / ``export``): a task whose
        facts come from data that may be absent then (image-folder's grid, classes and cache key)
        reads them here. Default: nothing (the task derives its spec in ``setup``)."""

    def data_spec(self) -> DataSpec:
        """The data's shape for the method and the backbone (called after ``setup``). Default:
        the class attributes; override to add ``extras`` for a backbone of your own."""
        return DataSpec(self.vocab_size, self.seq_len, self.num_classes, bool(self.conditional or self.num_classes))

    def option(self, name: str) -> Any:
        """The resolved value of one of this task's settings."""
        if self.cfg is not None and name in self.cfg.options:
            return self.cfg.options[name]
        return {s.name: s.default for s in declared(self)}[name]

    def load(self, split: str) -> TokenData | LazyTokenData:
        """Return the ``"train"`` or ``"test"`` split (in memory, or :class:`LazyTokenData` for large
        token sets). Raise FileNotFoundError naming what to provide."""
        raise NotImplementedError

    def generate(self, ctx, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The ``n`` samples that ``Engine.evaluate`` scores, with their conditions.

        ``ctx`` is a :class:`catdiff.api.context.RunContext`, all a task may call: sampling,
        likelihoods, named random streams, the ranks evaluating together, and ``ctx.out``, the
        directory for files of the task's own (None during training). Default: ``ctx.sample``
        with balanced class labels. Override to condition on test inputs (e.g. translate the
        test sources), choose lengths, rerank candidates, ...
        """
        labels = ctx.default_labels(n)
        return ctx.sample(n, labels=labels), labels

    def model_metrics(self, ctx) -> dict[str, float]:
        """Metrics of the model itself rather than of its samples (e.g. bits per character from
        the likelihood bound), computed through ``ctx`` (a RunContext) before ``generate``;
        ``Engine.evaluate`` reports them beside :meth:`evaluate`'s. Default: none."""
        return {}

    def evaluate(self, tokens: torch.Tensor, labels: torch.Tensor | None, out_dir: Path | None) -> dict[str, float]:
        """Metrics of generated ``tokens`` [N, M] (with the ``labels`` they were conditioned on)."""
        return {}

    def save_samples(self, tokens: torch.Tensor, labels: torch.Tensor | None, out_dir: Path) -> list[Path]:
        """Write a human-viewable rendering of samples into ``out_dir``; return the files written."""
        return []

    def decode(self, tokens: torch.Tensor) -> Any:
        """What a user looks at for sample tokens [N, M] (``Engine.sample(..., decode=True)``):
        images as a tensor, text as a list of strings, ...; default: the tokens themselves."""
        return tokens

    def parse_prompt(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``catdiff sample --prompt TEXT``: (known [M], known_mask [M]) of the tokens to keep fixed."""
        raise UserError(f"task {self.name!r} does not read --prompt; use --infill pos:token,...")

    def init_codebook(self, codebook) -> None:
        """Optional: initialise the diffusion codebook (e.g. from a VQ tokenizer's codes, the
        paper's CSDM-fixed baseline) before training; ``codebook.data`` is the [K, D] table."""

    def prepare_arguments(self, parser) -> None:
        """Add this task's ``catdiff prepare TASK ...`` flags to an argparse parser."""

    def prepare(self, args) -> None:
        """One-off preparation (tokenizer training, token extraction) for ``catdiff prepare``."""
        raise UserError(f"task {self.name!r} needs no preparation")

    def diagnostics(self, report: Mapping[str, Any], out_dir: Path) -> list[Path]:
        """Optional: render the engine's collapse diagnostics (see ``catdiff.nn.diagnostics``)."""
        return []
