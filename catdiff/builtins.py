"""Components that ship with catdiff, registered through the same hooks as any plugin."""
from .markers import hookimpl


@hookimpl
def catdiff_backbones():
    from .backbones import build_encoder

    return {"encoder": build_encoder}


@hookimpl
def catdiff_methods():
    from .method import builtin_methods
    from .methods import discrete_methods

    return {**builtin_methods(), **discrete_methods()}
