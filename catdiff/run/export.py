"""Shareable weights: ``DIR/model.safetensors`` (the EMA weights used for sampling) and
``DIR/config.json`` (the run's config and task metadata), without optimizer or RNG state.

safetensors holds only tensors, so loading runs no code; ``Engine.from_pretrained(DIR)``
(and ``catdiff sample DIR`` / ``catdiff eval DIR``) rebuild the model from the two files.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..api.errors import UserError
from . import checkpoint

FORMAT = "catdiff-export"
VERSION = 1
WEIGHTS, CONFIG = "model.safetensors", "config.json"


TOP_KEYS = frozenset({"format", "version", "step", "config", "task", "plugins", "method"})


def is_export(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / WEIGHTS).is_file()


def plain(state):
    """A method's state_dict as JSON values (tensors become lists; Method.load_state_dict reads both)."""
    if isinstance(state, dict):
        return {k: plain(v) for k, v in state.items()}
    return state.tolist() if hasattr(state, "tolist") else state


def export(engine, directory: str | Path, force: bool = False) -> list[Path]:
    """Write the two files of ``engine`` (its ``ema_eval`` weights) into ``directory``."""
    from safetensors.torch import save

    directory = Path(directory)
    if (directory / "last.pt").exists() or ((directory / CONFIG).is_file() and not _export_config(directory / CONFIG)):
        raise UserError(f"{directory} is a run directory (its last.pt or config.json would be overwritten); "
                        f"export into another directory")
    if (directory / WEIGHTS).exists() and not force:
        raise UserError(f"{directory} already holds an export ({WEIGHTS}); pass another directory or --force")
    weights = {k: v.detach().cpu().clone().contiguous() for k, v in engine.ema_eval.state_dict().items()}
    meta = {"format": FORMAT, "version": VERSION, "step": engine.step, "config": engine.cfg.to_dict(),
            "task": engine.task_meta, "plugins": engine.plugins, "method": plain(engine.method.state_dict())}
    files = [checkpoint.write_atomic(save(weights, metadata={"format": FORMAT}), directory / WEIGHTS, "weights"),
             checkpoint.write_atomic((json.dumps(meta, indent=2) + "\n").encode(), directory / CONFIG, "config")]
    return files


def _export_config(path: Path) -> bool:
    """Whether ``path`` is an export's config.json (which --force may replace), not a run's record."""
    try:
        return json.loads(path.read_bytes().decode("utf-8")).get("format") == FORMAT
    except (ValueError, UnicodeDecodeError, AttributeError, OSError):
        return False


def read(directory: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metadata, weights) of an export; a UserError names what is missing or damaged."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    directory = Path(directory)
    for name in (WEIGHTS, CONFIG):
        if not (directory / name).is_file():
            raise UserError(f"{directory} is not a catdiff export: {name} is missing "
                            f"(write one with `catdiff export DIR/last.pt {directory}`)")
    try:
        meta = json.loads((directory / CONFIG).read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{directory / CONFIG} is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{directory / CONFIG} is not a catdiff export config (no '{FORMAT}' format)")
    version = meta.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise UserError(f"{directory / CONFIG}: version {version!r} is not a whole number; write the export again "
                        f"with `catdiff export`")
    if version > VERSION:
        raise UserError(f"{directory} has export version {meta['version']}; this catdiff reads <= {VERSION}")
    unknown = sorted(set(meta) - TOP_KEYS)
    if unknown:  # an edit that would otherwise be ignored
        raise UserError(f"{directory / CONFIG} has keys a catdiff export does not hold: {', '.join(unknown)} "
                        f"(known: {', '.join(sorted(TOP_KEYS))}); run settings go inside \"config\"")
    config, task, step = meta.get("config"), meta.get("task"), meta.get("step", 0)
    if not (isinstance(config, dict) and isinstance(config.get("task"), str) and isinstance(task, dict)
            and all(k in task for k in ("name", "vocab_size", "seq_len", "num_classes")) and isinstance(step, int)):
        raise UserError(f"{directory / CONFIG} is incomplete or damaged (config with its task, task and step expected); "
                        f"write the export again with `catdiff export`")
    try:
        weights = load((directory / WEIGHTS).read_bytes())
    except SafetensorError as e:
        raise UserError(f"{directory / WEIGHTS} is corrupt or not a safetensors file ({e})") from None
    return meta, weights
