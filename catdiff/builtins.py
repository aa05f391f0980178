"""Components that ship with catdiff, registered through the same hooks as any plugin."""
from .markers import hookimpl


@hookimpl
def catdiff_backbones():
    from .backbones import build_encoder

    return {"encoder": build_encoder}


@hookimpl
def catdiff_methods():
    from .methods import builtin_methods

    return builtin_methods()
