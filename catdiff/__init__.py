"""catdiff: diffusion models for categorical data (CATDM: continuous diffusion in a jointly
learned embedding space with consistency matching)."""
from . import _moved  # noqa: F401  (0.1 module paths keep working, with a warning)
from .api.settings import Setting
from .run.config import Config

try:  # the one version source is pyproject.toml, via the installed distribution's metadata
    from importlib.metadata import PackageNotFoundError, version as _version

    __version__ = _version("catdiff")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
__all__ = ["Config", "Engine", "Method", "Setting", "Task", "TokenData", "hookimpl", "__version__"]

# name -> submodule; imported on first access so that `import catdiff` (and `catdiff --help`)
# does not import torch; Method, Task, Setting and hookimpl import none either (a plugin module
# that uses only them keeps `catdiff list` fast)
_LAZY = {"Engine": "run.engine", "Method": "api.method", "Task": "api.task", "TokenData": "api.task",
         "hookimpl": "api.markers"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
