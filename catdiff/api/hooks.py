"""Plugin hooks and the registry that collects components from every plugin.

Every component (task, method, tokenizer, backbone, metric), built-in or third-party, arrives
through the same five hooks. Third-party packages declare an entry point in the group
``catdiff``; see ``docs/plugins.md``. A hook may name a factory by reference,
``Lazy("module:attr")``, so that building the registry (``catdiff list``) imports no component.
"""
from __future__ import annotations

import importlib.metadata as md
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

from .. import builtins
from .errors import UnknownName, UserError
from .markers import GROUP, Lazy, hookimpl, hookspec

KINDS = ("tasks", "methods", "tokenizers", "backbones", "metrics")
# Distributions whose components win over a third-party one of the same name (after the built-ins).
FIRST_PARTY = ("catdiff-vision", "catdiff-text", "catdiff-translate", "catdiff-tokens")

__all__ = ["GROUP", "KINDS", "Component", "Lazy", "Registry", "build_registry", "hookimpl", "hookspec", "registry"]


class Hookspecs:
    @hookspec
    def catdiff_tasks(self) -> dict[str, Callable[[], Any]]:
        """Return ``{name: factory}``; ``factory()`` builds a :class:`catdiff.api.task.Task`."""

    @hookspec
    def catdiff_methods(self) -> dict[str, Callable[..., Any]]:
        """Return ``{name: factory}``; ``factory(cfg)`` builds a :class:`catdiff.api.method.Method`
        (its network, objective, sampler and likelihood bound), chosen by config key ``method``.
        The method's ``settings`` (:class:`catdiff.api.settings.Setting`) become config keys of runs
        using it."""

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
    ref: Callable[..., Any] | Lazy  # the factory, or a reference to it imported on first use
    source: str  # distribution (or "catdiff" for built-ins) that provided it

    @property
    def factory(self) -> Callable[..., Any]:
        if isinstance(self.ref, Lazy):
            try:
                self.ref = self.ref.load()
            except Exception as e:  # a broken plugin, as when its module fails to load: one line, exit 2
                first = (str(e).strip().splitlines() or [""])[0]
                raise UserError(f"{self.kind[:-1]} {self.name!r} of plugin {self.source} failed to load "
                                f"({type(e).__name__}: {first}); fix or reinstall the plugin (run with --debug "
                                f"for the traceback)") from e
        return self.ref

    @property
    def description(self) -> str:
        """A component's one-line summary (its class's ``description``), read without importing a
        Lazy component."""
        return getattr(self.ref, "description", "") or ""


@dataclass
class Registry:
    components: dict[str, dict[str, Component]] = field(default_factory=lambda: {k: {} for k in KINDS})
    failed: dict[str, str] = field(default_factory=dict)  # plugin name -> error message (one line)
    tracebacks: dict[str, str] = field(default_factory=dict)  # plugin name -> its traceback (for --debug)
    # (kind, name) -> the sources that also provide it and were shadowed by the winner
    shadowed: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # plugins loaded under another name, ...
    settings_checked: bool = False  # catdiff.run.config.settings_registry() has refused clashing settings
    _warned: set = field(default_factory=set)

    def get(self, kind: str, name: str) -> Component:
        known = self.components[kind]
        if name not in known:
            singular = kind[:-1]
            listing = ", ".join(sorted(known)) or "(none)"
            hint = ""
            if self.failed:  # a broken plugin may be the one that provides it
                hint = (" It may come from a plugin that failed to load: "
                        + "; ".join(f"{n} ({e})" for n, e in self.failed.items())
                        + "; fix or reinstall it (run with --debug for the traceback).")
            raise UnknownName(f"unknown {singular} {name!r}. Known {kind}: {listing}.{hint}")
        comp = known[name]
        if (kind, name) in self.shadowed and (kind, name) not in self._warned:
            self._warned.add((kind, name))
            print(f"catdiff: warning: {self.shadow_note(kind, name)}", file=sys.stderr)
        return comp

    def shadow_note(self, kind: str, name: str) -> str:
        others = ", ".join(self.shadowed[(kind, name)])
        return (f"{kind[:-1]} {name!r} is provided by {self.components[kind][name].source} and also by {others}; "
                f"using {self.components[kind][name].source}")

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])

    def fail(self, plugin: str, error: Exception, dist: str, hook: str = "") -> None:
        """Record ``plugin`` (of distribution ``dist``) as broken by ``error``, raised on import or in
        ``hook``; a plugin's first error is kept."""
        if plugin not in self.failed:
            first = (str(error).strip().splitlines() or [""])[0]
            self.failed[plugin] = f"{type(error).__name__}{' in ' + hook if hook else ''}: {first} (from {dist})"
            self.tracebacks[plugin] = "".join(traceback.format_exception(error))


def _plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(Hookspecs)
    return pm


def _rank(source: str) -> int:
    """Precedence of a source: built-ins, then first-party plugins, then third-party ones."""
    dist = source.split(" ")[0]
    return 0 if source == "catdiff" else 1 if dist in FIRST_PARTY else 2


def build_registry(entry_points: list[md.EntryPoint] | None = None) -> Registry:
    """Load built-ins and every plugin of the ``catdiff`` entry-point group.

    A plugin that fails to import (or whose hook raises) is recorded in ``registry.failed``
    with its error and skipped; the others still load. When several plugins provide one name,
    the built-in wins, then a first-party plugin, then the third-party plugin found first
    (entry points sorted by distribution and name); the others are listed in
    ``registry.shadowed``, and ``catdiff list`` and the first use of the name say so.
    """
    pm = _plugin_manager()
    registry = Registry()
    pm.register(builtins, name="catdiff")
    sources = {"catdiff": "catdiff"}
    if entry_points is None:
        entry_points = list(md.entry_points(group=GROUP))
    dist_of = lambda ep: f"{ep.dist.name} {ep.dist.version}" if getattr(ep, "dist", None) else ep.value  # noqa: E731
    for ep in sorted(entry_points, key=lambda ep: (_rank(dist_of(ep)), dist_of(ep), ep.name)):
        dist = dist_of(ep)
        try:
            plugin = ep.load()
        except Exception as e:  # noqa: BLE001 - any import error is reported, not raised
            registry.fail(ep.name, e, dist)
            continue
        if pm.is_registered(plugin):
            registry.notes.append(f"entry point {ep.name!r} of {dist} names module {ep.value!r}, "
                                  f"already loaded as plugin {pm.get_name(plugin)!r}; loaded once")
            continue
        name = ep.name
        if pm.has_plugin(name):
            name = f"{ep.name} ({dist})"
            registry.notes.append(f"entry point name {ep.name!r} of {dist} is already taken by "
                                  f"{sources[ep.name]}; loaded as plugin {name!r}")
        pm.register(plugin, name=name)
        sources[name] = dist
    order = list(sources)  # registration order: built-ins, first-party, third-party
    for kind in KINDS:
        hook = getattr(pm.hook, f"catdiff_{kind}")
        for impl in sorted(hook.get_hookimpls(), key=lambda impl: order.index(impl.plugin_name)):
            try:
                provided = impl.function() or {}
            except Exception as e:  # noqa: BLE001 - reported (cli: one warning line), the others still load
                registry.fail(impl.plugin_name, e, sources[impl.plugin_name], f"catdiff_{kind}")
                continue
            source = sources[impl.plugin_name]
            for name, factory in provided.items():
                if name in registry.components[kind]:  # an earlier (higher-precedence) source won
                    registry.shadowed.setdefault((kind, name), []).append(source)
                else:
                    registry.components[kind][name] = Component(kind, name, factory, source)
    return registry



_REGISTRY: Registry | None = None


def registry(refresh: bool = False) -> Registry:
    """The process-wide registry, built on first use."""
    global _REGISTRY
    if _REGISTRY is None or refresh:
        _REGISTRY = build_registry()
    return _REGISTRY
