"""catdiff: diffusion models for categorical data (CATDM: continuous diffusion in a jointly
learned embedding space with consistency matching)."""
from .config import Config
from .method import Method
from .task import Task, TokenData

try:  # the one version source is pyproject.toml, via the installed distribution's metadata
    from importlib.metadata import PackageNotFoundError, version as _version

    __version__ = _version("catdiff")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
__all__ = ["Config", "Engine", "Method", "Task", "TokenData", "__version__"]


def __getattr__(name):  # lazy: `import catdiff` stays light
    if name == "Engine":
        from .engine import Engine

        return Engine
    raise AttributeError(name)
