"""catdiff hook implementations of the catdiff-tokens plugin (entry point ``catdiff: tokens``).

The task is named by reference (``Lazy``), imported on first use, so that listing imports no
torch; its description repeats the class's own (a test keeps them equal).
"""
from catdiff.hooks import Lazy, hookimpl


@hookimpl
def catdiff_tasks():
    return {"tokens": Lazy("catdiff_tokens.task:TokensTask", "any integer token array [N, M] (.npy/.pt, "
                           "--set path=...) or token shards, optional labels")}
