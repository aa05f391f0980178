"""catdiff hook implementations of the catdiff-tokens plugin (entry point ``catdiff: tokens``)."""
from catdiff.hooks import hookimpl


@hookimpl
def catdiff_tasks():
    from .task import TokensTask

    return {"tokens": TokensTask}
