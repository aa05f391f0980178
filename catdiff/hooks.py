"""Plugin hooks and the registry that collects components from every plugin.

Every component (task, method, tokenizer, backbone, metric), built-in or third-party, arrives
through the same five hooks. Third-party packages declare an entry point in the group
``catdiff``; see ``docs/plugins.md``.
"""
from __future__ import annotations

import importlib.metadata as md
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

GROUP = "catdiff"
KINDS = ("tasks", "methods", "tokenizers", "backbones", "metrics")

hookspec = pluggy.HookspecMarker(GROUP)
hookimpl = pluggy.HookimplMarker(GROUP)


class Hookspecs:
    @hookspec
    def catdiff_tasks(self) -> dict[str, Callable[[], Any]]:
        """Return ``{name: factory}``; ``factory()`` builds a :class:`catdiff.task.Task`."""

    @hookspec
    def catdiff_methods(self) -> dict[str, Callable[..., Any]]:
        """Return ``{name: factory}``; ``factory(cfg)`` builds a :class:`catdiff.method.Method`
        (an objective with its sampler and likelihood bound), chosen by config key ``method``.
        A Method subclass's ``options`` (name -> default) become config keys of runs using it."""

    @hookspec
    def catdiff_tokenizers(self) -> dict[str, Callable[..., Any]]:
        """Return ``{name: factory}`` of tokenizers (objects with ``encode``/``decode``)."""

    @hookspec
    def catdiff_backbones(self) -> dict[str, Callable[..., Any]]:
        """Return ``{name: factory}``; ``factory(cfg, vocab_size=, seq_len=, num_classes=)`` builds an
        ``nn.Module`` mapping ``(z [B,M,D], t [B], cond [B] or None) -> logits [B,M,K]``."""

    @hookspec
    def catdiff_metrics(self) -> dict[str, Callable[..., Any]]:
        """Return ``{name: fn}`` of metric functions ``fn(...) -> dict[str, float]``."""


@dataclass
class Component:
    kind: str
    name: str
    factory: Callable[..., Any]
    source: str  # distribution (or "catdiff" for built-ins) that provided it


@dataclass
class Registry:
    components: dict[str, dict[str, Component]] = field(default_factory=lambda: {k: {} for k in KINDS})
    failed: dict[str, str] = field(default_factory=dict)  # plugin name -> error message

    def get(self, kind: str, name: str) -> Component:
        known = self.components[kind]
        if name not in known:
            singular = kind[:-1]
            listing = ", ".join(sorted(known)) or "(none)"
            hint = ""
            if self.failed:
                hint = "\nPlugins that failed to load: " + "; ".join(f"{n}: {e}" for n, e in self.failed.items())
            raise KeyError(f"unknown {singular} {name!r}. Known {kind}: {listing}.{hint}")
        return known[name]

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])


def _plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(Hookspecs)
    return pm


def build_registry(entry_points: list[md.EntryPoint] | None = None) -> Registry:
    """Load built-ins and every plugin of the ``catdiff`` entry-point group.

    A plugin that fails to import (or whose hook raises) is recorded in ``registry.failed``
    with its error and skipped; the others still load.
    """
    from catdiff import builtins

    pm = _plugin_manager()
    registry = Registry()
    pm.register(builtins, name="catdiff")
    sources = {"catdiff": "catdiff"}
    if entry_points is None:
        entry_points = list(md.entry_points(group=GROUP))
    for ep in entry_points:
        dist = f"{ep.dist.name} {ep.dist.version}" if getattr(ep, "dist", None) else ep.value
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as e:  # noqa: BLE001 - any import error is reported, not raised
            registry.failed[ep.name] = f"{type(e).__name__}: {e} (from {dist})"
            continue
        sources[ep.name] = dist
    for kind in KINDS:
        hook = getattr(pm.hook, f"catdiff_{kind}")
        for impl in reversed(hook.get_hookimpls()):
            try:
                provided = impl.function() or {}
            except Exception as e:  # noqa: BLE001
                registry.failed[impl.plugin_name] = f"{type(e).__name__} in catdiff_{kind}: {e}"
                traceback.print_exc()
                continue
            for name, factory in provided.items():
                registry.components[kind][name] = Component(kind, name, factory, sources[impl.plugin_name])
    return registry


_REGISTRY: Registry | None = None


def registry(refresh: bool = False) -> Registry:
    """The process-wide registry, built on first use."""
    global _REGISTRY
    if _REGISTRY is None or refresh:
        _REGISTRY = build_registry()
    return _REGISTRY
