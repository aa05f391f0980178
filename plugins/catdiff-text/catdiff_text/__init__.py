"""catdiff-text: character-level text tasks (text8, text-tdavid) with bits per character."""
from .tokenizer import ALPHABET, CharTokenizer, clean_text

__all__ = ["ALPHABET", "CharTokenizer", "clean_text"]
