"""catdiff-translate: encoder-decoder CATDM translation (paper 003 sec. 6.3)."""
