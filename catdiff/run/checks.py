"""What a checkpoint or an export was written with: the plugins that provide its components."""
from __future__ import annotations

from typing import Any

from ..api.errors import UserError
from ..api.hooks import registry
from . import config as config_mod


def plugin_sources(task: str, method: str, backbone: str) -> dict[str, str]:
    """The distributions (with version) that provide a run's task, method and backbone, kept in
    checkpoints and exports, so that loading one where a plugin is missing names it."""
    reg = registry()
    names = {"tasks": task, "methods": method, "backbones": backbone}
    return {kind: reg.components[kind][name].source for kind, name in names.items() if name in reg.components[kind]}


def check_installed(what: str, config: dict[str, Any], plugins: dict[str, str] | None, task_given: bool) -> None:
    """The task, method and backbone a checkpoint or export (``what``) was written with are provided
    here; else a UserError names the missing one and the plugin that gave it (``plugins``: its
    distribution and version; absent in checkpoints written before catdiff recorded them)."""
    reg = registry()
    config = config_mod.migrate(config)
    for kind, key in (("tasks", "task"), ("methods", "method"), ("backbones", "backbone")):
        name = config.get(key)
        if (kind == "tasks" and task_given) or not isinstance(name, str) or name in reg.components[kind]:
            continue
        source = (plugins or {}).get(kind)
        dist = source.split(" ")[0] if source else None
        if dist is None:
            why = (f"which no installed plugin provides (installed {kind}: {', '.join(reg.names(kind)) or '(none)'}); "
                   f"install the plugin that provides it")
        elif dist == "catdiff":
            why = "which this version of catdiff does not provide; use the catdiff version that wrote it"
        elif any(f"(from {dist} " in err for err in reg.failed.values()):
            why = "which failed to load (see its warning; --debug shows the traceback)"
        elif (here := installed_version(dist)) is not None:
            why = f"which the installed {dist} {here} does not provide; install the version that wrote it"
        else:
            why = f"which is not installed: pip install {dist}"
        plugin = f" (plugin {source})" if dist not in (None, "catdiff") else ""
        raise UserError(f"{what} was written with {kind[:-1]} {name!r}{plugin}, {why}")


def installed_version(dist: str) -> str | None:
    """The version of the installed distribution ``dist``, or None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None
