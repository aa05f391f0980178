"""The pluggy markers of the ``catdiff`` hooks, in a module that imports nothing of catdiff.

Plugins (and :mod:`catdiff.builtins`) mark their hook implementations with :data:`hookimpl`;
:mod:`catdiff.hooks` re-exports both markers, so ``from catdiff.hooks import hookimpl`` keeps
working for third-party plugins.
"""
import importlib

import pluggy

GROUP = "catdiff"  # the entry-point group and the pluggy project name

hookspec = pluggy.HookspecMarker(GROUP)
hookimpl = pluggy.HookimplMarker(GROUP)



class Lazy:
    """A component a hook names by reference, ``"module:attr"`` (``attr`` may be dotted), imported on
    its first use: listing the components (``catdiff list``) then imports none of them (nor torch).
    ``description`` (a task's one-line summary) is shown by ``catdiff list`` without the import."""

    __slots__ = ("ref", "description")

    def __init__(self, ref: str, description: str = ""):
        self.ref, self.description = ref, description

    def load(self):
        module, _, attr = self.ref.partition(":")
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj

    def __repr__(self) -> str:
        return f"Lazy({self.ref!r})"


__all__ = ["GROUP", "Lazy", "hookimpl", "hookspec"]
