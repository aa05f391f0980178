"""The pluggy markers of the ``catdiff`` hooks, in a module that imports nothing of catdiff.

Plugins (and :mod:`catdiff.builtins`) mark their hook implementations with :data:`hookimpl`;
:mod:`catdiff.api.hooks` re-exports both markers, so ``from catdiff.api.hooks import hookimpl`` keeps
working for third-party plugins.
"""
import ast
import importlib
import importlib.util
from pathlib import Path

import pluggy

GROUP = "catdiff"  # the entry-point group and the pluggy project name

hookspec = pluggy.HookspecMarker(GROUP)
hookimpl = pluggy.HookimplMarker(GROUP)



class Lazy:
    """A component a hook names by reference, ``"module:attr"`` (``attr`` may be dotted), imported on
    its first use: listing the components (``catdiff list``) then imports none of them (nor torch).
    ``description`` (a task's one-line summary, shown by ``catdiff list``) is the class's own
    ``description``, read from the module's source without importing it (:func:`literal_attribute`),
    unless the hook passes one."""

    __slots__ = ("ref", "_description")

    def __init__(self, ref: str, description: str | None = None):
        self.ref, self._description = ref, description

    @property
    def description(self) -> str:
        if self._description is None:
            self._description = literal_attribute(self.ref, "description")
        return self._description

    def load(self):
        module, _, attr = self.ref.partition(":")
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj

    def __repr__(self) -> str:
        return f"Lazy({self.ref!r})"


def literal_attribute(ref: str, name: str) -> str:
    """The string literal assigned to ``name`` in the body of the class ``"module:Class"``, read
    from the module's source (its parent packages are imported, the module is not); "" where there
    is none (the module is not found, the class is nested or built, the value is not a literal)."""
    module, _, cls = ref.partition(":")
    try:
        origin = Path(importlib.util.find_spec(module).origin)
    except (ImportError, ValueError, AttributeError, TypeError):
        return ""
    return _class_literal(origin, cls, name)


def _class_literal(origin: Path, cls: str, name: str, depth: int = 3) -> str:
    """:func:`literal_attribute` in the source file ``origin``; a class the module re-exports with a
    relative ``from .sub import Class`` is followed into that file (not imported either)."""
    try:
        tree = ast.parse(origin.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return ""
    for node in tree.body:
        if (depth and isinstance(node, ast.ImportFrom) and node.level == 1 and node.module
                and any((a.asname or a.name) == cls and a.name == cls for a in node.names)):
            base = origin.parent.joinpath(*node.module.split("."))
            sub = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
            return _class_literal(sub, cls, name, depth - 1)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for stmt in node.body:
                target = stmt.targets[-1] if isinstance(stmt, ast.Assign) else getattr(stmt, "target", None)
                value = getattr(stmt, "value", None)
                if (isinstance(target, ast.Name) and target.id == name and isinstance(value, ast.Constant)
                        and isinstance(value.value, str)):
                    return value.value
    return ""


__all__ = ["GROUP", "Lazy", "hookimpl", "hookspec"]
