"""catdiff: diffusion models for categorical data (CATDM: continuous diffusion in a jointly
learned embedding space with consistency matching)."""
from .config import Config
from .method import Method
from .task import Task, TokenData

__version__ = "0.1.0"
__all__ = ["Config", "Engine", "Method", "Task", "TokenData", "__version__"]


def __getattr__(name):  # lazy: `import catdiff` stays light
    if name == "Engine":
        from .engine import Engine

        return Engine
    raise AttributeError(name)
