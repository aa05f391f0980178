"""catdiff hook implementations of the catdiff-text plugin (entry point ``catdiff: text``)."""
from catdiff.hooks import hookimpl


@hookimpl
def catdiff_tasks():
    from .tasks import TdavidTask, Text8Task
    from .text_file import TextFileTask

    return {"text8": Text8Task, "text-tdavid": TdavidTask, "text-file": TextFileTask}


@hookimpl
def catdiff_tokenizers():
    from .tokenizer import CharTokenizer

    return {"text8-chars": CharTokenizer}
