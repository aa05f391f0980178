"""catdiff hook implementations of the catdiff-text plugin (entry point ``catdiff: text``).

Components are named by reference (``Lazy``), imported on first use, so that loading or listing
the plugin imports no torch; the task descriptions repeat the classes' own (a test keeps them equal).
"""
from catdiff.hooks import Lazy, hookimpl


@hookimpl
def catdiff_tasks():
    return {
        "text8": Lazy("catdiff_text.tasks:Text8Task",
                      "text8 characters (a-z, space), 90M/5M/5M, chunks of 256; needs text8(.zip)"),
        "text-tdavid": Lazy("catdiff_text.tasks:TdavidTask", "Treasury of David prose (Debian sword-comm-tdavid), "
                            "a-z and space, 90/5/5 split, chunks of 256"),
        "text-file": Lazy("catdiff_text.text_file:TextFileTask", "any UTF-8 text file, folder or glob "
                          "(--set path=...), characters or BPE, bits per character"),
    }


@hookimpl
def catdiff_tokenizers():
    return {"text8-chars": Lazy("catdiff_text.tokenizer:CharTokenizer")}
