"""A task's splits as the engine reads them: loaded and checked once; in memory on the device,
or lazy (memory-mapped) on the host, each gathered batch range-checked."""
from __future__ import annotations

import sys

import torch

from ..api.errors import UserError
from ..api.task import LazyTokenData, Task, TokenData

SPOT_CHECK_ROWS = 64  # rows of a lazy split read by check_tokens (each gathered batch is checked too)


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
    if split == "train" and tokens.numel() and int(tokens.min()) == int(tokens.max()):  # degenerate, yet trainable
        which = "the rows checked of its training split hold" if isinstance(data, LazyTokenData) else \
            "its training split holds"
        print(f"catdiff: warning: task {task.name!r}: {which} one token id only ({int(tokens.min())}): there is "
              f"nothing to learn but that id", file=sys.stderr)


class Splits:
    def __init__(self, task: Task, device: torch.device, conditional: bool):
        self.task, self.device, self.conditional = task, device, conditional
        self._loaded: dict[str, TokenData | LazyTokenData] = {}

    def get(self, split: str) -> TokenData | LazyTokenData:
        """The task's ``split``, checked; in memory on the device, or a LazyTokenData left on the host."""
        if split not in self._loaded:
            data = self.task.load(split)
            check_tokens(data, self.task, split)
            if not isinstance(data, LazyTokenData):
                data = TokenData(data.tokens.to(self.device), None if data.labels is None else data.labels.to(self.device))
            self._loaded[split] = data
        return self._loaded[split]

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
