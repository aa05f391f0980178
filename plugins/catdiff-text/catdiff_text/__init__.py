"""catdiff-text: character-level text tasks (text8, text-tdavid) with bits per character."""
__all__ = ["ALPHABET", "CharTokenizer", "clean_text"]


def __getattr__(name):  # lazy: loading the plugin (catdiff_text.plugin) does not import torch
    if name in __all__:
        from . import tokenizer

        return getattr(tokenizer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
