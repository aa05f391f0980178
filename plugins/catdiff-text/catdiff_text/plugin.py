"""catdiff hook implementations of the catdiff-text plugin (entry point ``catdiff: text``).

Components are named by reference (``Lazy``), imported on first use, so that loading or listing
the plugin imports no torch; ``catdiff list`` reads a task's description from its class's source.
"""
from catdiff.api.hooks import Lazy, hookimpl


@hookimpl
def catdiff_tasks():
    return {"text8": Lazy("catdiff_text.tasks:Text8Task"), "text-tdavid": Lazy("catdiff_text.tasks:TdavidTask"),
            "text-file": Lazy("catdiff_text.text_file:TextFileTask")}


@hookimpl
def catdiff_tokenizers():
    return {"text8-chars": Lazy("catdiff_text.tokenizer:CharTokenizer")}
