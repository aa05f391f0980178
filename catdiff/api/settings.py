"""Typed settings: each component declares its config keys, checked in one place.

A :class:`Setting` is one key: its name, type, default, a one-line doc, the allowed values or
range, whether "choose for me" (``None``, spelled ``auto`` on the command line) is allowed, and
whether it may change when a run resumes. The core declares the run-level keys
(:class:`catdiff.run.config.Config`); a method, a backbone and a task declare theirs as a class
(or factory) attribute ``settings``, a tuple of :class:`Setting`. Names are flat and unique
across components, so ``--set key=value`` needs no prefix; two components may share a key only
by declaring the same setting (e.g. the two transformer backbones' ``layers``).

Plugins written from catdiff 0.1's first docs declare ``options`` (name -> default; the type
follows the default) and ``mutable_options`` instead. :func:`declared` still reads that form, with
a DeprecationWarning naming the component, so those plugins keep working until 0.3 removes it.
This module imports no torch (``catdiff --help`` stays fast).
"""
from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping

from .errors import UserError

AUTO_WORDS = ("auto", "none", "null", "")
TYPES = (bool, int, float, str)


@dataclass(frozen=True)
class Setting:
    """One config key. ``low``/``high`` bound numbers (inclusive unless ``low_open`` /
    ``high_open``); ``pattern`` is a regular expression a string must match in full (``rule``
    says it in words); ``auto`` allows ``None``, which the component fills in; ``mutable`` lets
    a resume change the value."""

    name: str
    default: Any
    doc: str
    type: type | None = None  # inferred from ``default`` when None
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    pattern: str = ""
    rule: str = ""
    auto: bool = False
    mutable: bool = False
    high_open: bool = False

    def __post_init__(self):
        kind = self.type or type(self.default)
        if kind not in TYPES and kind not in (dict, list):
            raise TypeError(f"setting {self.name!r}: type {kind.__name__} is not one of bool, int, float, str")
        if self.default is None and not self.auto:
            raise TypeError(f"setting {self.name!r}: default None needs auto=True")
        if self.default is None and self.type is None:
            raise TypeError(f"setting {self.name!r}: default None needs an explicit type")
        object.__setattr__(self, "type", kind)

    def coerce(self, value: Any) -> Any:
        """``value`` (a command-line string, or a JSON/TOML value) as this setting's type."""
        name, kind = self.name, self.type
        if self.auto and (value is None or isinstance(value, str) and value.strip().lower() in AUTO_WORDS):
            return None
        if kind in (dict, list):
            if isinstance(value, kind):
                return value
            raise UserError(f"config {name}: expected a {kind.__name__}, got {value!r}")
        if isinstance(value, str):
            if kind is bool:
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise UserError(f"config {name}: expected true/false, got {value!r}")
            if kind is str:
                return value
            try:
                value = float(value) if kind is int and "e" in value.lower() and "x" not in value.lower() else kind(value)
            except ValueError:
                raise UserError(f"config {name}: expected {kind.__name__}, got {value!r}") from None
        if kind is bool and isinstance(value, bool) or kind is str and isinstance(value, str):
            return value
        if kind in (int, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
            if kind is int and value != int(value):
                raise UserError(f"config {name}: expected an integer, got {value!r}")
            return kind(value)
        raise UserError(f"config {name}: expected {kind.__name__}, got {type(value).__name__} {value!r}")

    def check(self, value: Any) -> None:
        """Raise a UserError naming the key, the value and what is allowed, unless ``value`` is."""
        if value is None:
            if not self.auto:
                raise UserError(f"config {self.name}=None: must be set (it has no automatic value)")
            return
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"config {self.name}={value!r}: must be a finite number")
        ok = True
        if self.choices and value not in self.choices:
            ok = False
        elif self.low is not None and (value <= self.low if self.low_open else value < self.low):
            ok = False
        elif self.high is not None and (value >= self.high if self.high_open else value > self.high):
            ok = False
        elif self.pattern and not re.fullmatch(self.pattern, value):
            ok = False
        if not ok:
            raise UserError(f"config {self.name}={value!r}: must be {self.allowed() or 'a finite number'}"
                            + (", or auto" if self.auto else ""))

    def allowed(self) -> str:
        """The allowed values in words: ``a | b``, ``>= 1``, ``in [0, 1]``, ``in (0, 1)``, ``> 0``, a rule."""
        if self.choices:
            return " | ".join(str(c) for c in self.choices)
        if self.rule:
            return self.rule
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return ""


def with_defaults(settings: Iterable[Setting], **defaults: Any) -> tuple[Setting, ...]:
    """``settings`` with the defaults of the named ones replaced (a subclass's own defaults for
    its parent's keys, e.g. ``with_defaults(Parent.settings, bpe_vocab=32000)``)."""
    settings = tuple(settings)
    unknown = set(defaults) - {s.name for s in settings}
    if unknown:
        raise KeyError(f"with_defaults: no setting named {', '.join(sorted(unknown))}")
    return tuple(replace(s, default=defaults[s.name]) if s.name in defaults else s for s in settings)


def legacy(options: Mapping[str, Any], mutable: Iterable[str] = ()) -> tuple[Setting, ...]:
    """Settings of a catdiff-0.1 ``options`` mapping (name -> default) and ``mutable_options``."""
    mutable = set(mutable)
    out = []
    for name, default in options.items():
        kind = type(default) if type(default) in TYPES or type(default) in (dict, list) else str
        out.append(Setting(name, default, "", type=kind, auto=default is None, mutable=name in mutable))
    return tuple(out)


def declared(component: Any) -> tuple[Setting, ...]:
    """The settings a component (a Method/Task class or instance, a backbone factory) declares:
    its ``settings``, then its 0.1-style ``options`` not already among them. A 0.1-style subclass
    of a component that declares ``settings`` (``options = {...}`` set below ``settings`` in the
    class hierarchy) keeps its own defaults for the keys it shares with them."""
    own = tuple(getattr(component, "settings", None) or ())
    options = dict(getattr(component, "options", None) or {})
    if own and options and _below(component, "options", "settings"):
        own = tuple(replace(s, default=options[s.name]) if s.name in options else s for s in own)
    names = {s.name for s in own}
    options = {k: v for k, v in options.items() if k not in names}
    if options:
        _deprecated(component)
    return own + legacy(options, getattr(component, "mutable_options", ()) or ())


_WARNED: set[str] = set()


def _deprecated(component: Any) -> None:
    cls = component if isinstance(component, type) else type(component)
    name = f"{cls.__module__}.{cls.__qualname__}"
    if name not in _WARNED:  # once per class, not at every config resolve
        _WARNED.add(name)
        warnings.warn(f"{name} declares catdiff 0.1's `options`; declare `settings = (catdiff.Setting(...), ...)` "
                      f"instead (docs/plugins.md). `options` will not be read from catdiff 0.3", DeprecationWarning,
                      stacklevel=3)


def _below(component: Any, attr: str, other: str) -> bool:
    """Whether a class (of ``component``) sets ``attr`` in a subclass of the one that sets ``other``."""
    mro = (component if isinstance(component, type) else type(component)).__mro__
    where = lambda name: next((i for i, c in enumerate(mro) if name in vars(c)), len(mro))  # noqa: E731
    return where(attr) < where(other)


def merge(owners: Iterable[tuple[str, Iterable[Setting]]], reserved: Mapping[str, str] | None = None) -> dict[str, Setting]:
    """One name -> Setting map from ``(owner, settings)`` pairs; a name declared twice with
    different declarations (or a reserved run-level name) raises ValueError naming both owners."""
    table: dict[str, Setting] = {}
    where: dict[str, str] = dict(reserved or {})
    for owner, settings in owners:
        for s in settings:
            if s.name in where and table.get(s.name) != s:
                raise ValueError(f"config key {s.name!r} is declared by {where[s.name]} and by {owner}; "
                                 f"one of them must rename it")
            table[s.name] = s
            where.setdefault(s.name, owner)
    return table

