"""catdiff hook implementations of the catdiff-tokens plugin (entry point ``catdiff: tokens``).

The task is named by reference (``Lazy``), imported on first use, so that listing imports no
torch; ``catdiff list`` reads its description from the class's source.
"""
from catdiff.api.hooks import Lazy, hookimpl


@hookimpl
def catdiff_tasks():
    return {"tokens": Lazy("catdiff_tokens.task:TokensTask")}
