"""The module paths of catdiff 0.1 that 0.2 grouped into ``api/``, ``nn/`` and ``run/``.

``import catdiff.task`` (and every other old path in :data:`MOVED`) still gives the module at its
new home, the same object, with a DeprecationWarning naming it, so that a third-party plugin
written for 0.1 keeps working until 0.3 removes this table.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    **{m: f"api.{m}" for m in ("context", "errors", "hooks", "markers", "method", "settings", "streams", "task")},
    **{m: f"nn.{m}" for m in ("backbones", "diagnostics", "model")},
    **{m: f"run.{m}" for m in ("checkpoint", "checks", "config", "distributed", "engine",
                               "evaluation", "export", "feed", "heartbeat", "interrupts", "judge", "rundir",
                               "runlock", "splits", "trainlog", "training")},
}


def new_home(fullname: str) -> str | None:
    """``catdiff.task`` -> ``catdiff.api.task`` (``catdiff.backbones.encoder`` too); None if not moved."""
    head, _, rest = fullname.partition(".")
    if head != "catdiff" or not rest:
        return None
    first, _, tail = rest.partition(".")
    return f"catdiff.{MOVED[first]}" + (f".{tail}" if tail else "") if first in MOVED else None


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self):
        self._specs = {}  # old name -> the module's own spec, between create_module and exec_module

    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if new_home(fullname) else None

    def create_module(self, spec):
        new = new_home(spec.name)
        warnings.warn(f"{spec.name} moved to {new} in catdiff 0.2; the old path goes in 0.3",
                      DeprecationWarning, stacklevel=2)
        module = importlib.import_module(new)  # the module itself: one object under both names
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module):
        # already executed under its new name; importlib has just set __spec__ to the old name's
        # (a spec without origin), which would break reload and importlib.resources: put it back
        module.__spec__ = self._specs.pop(module.__spec__.name)


if not any(isinstance(f, _OldPaths) for f in sys.meta_path):
    sys.meta_path.insert(0, _OldPaths())  # before PathFinder, which would load a second copy of a submodule
