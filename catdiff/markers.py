"""The pluggy markers of the ``catdiff`` hooks, in a module that imports nothing of catdiff.

Plugins (and :mod:`catdiff.builtins`) mark their hook implementations with :data:`hookimpl`;
:mod:`catdiff.hooks` re-exports both markers, so ``from catdiff.hooks import hookimpl`` keeps
working for third-party plugins.
"""
import pluggy

GROUP = "catdiff"  # the entry-point group and the pluggy project name

hookspec = pluggy.HookspecMarker(GROUP)
hookimpl = pluggy.HookimplMarker(GROUP)

__all__ = ["GROUP", "hookimpl", "hookspec"]
