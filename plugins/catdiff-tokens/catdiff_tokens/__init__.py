"""catdiff-tokens: the ``tokens`` task, a diffusion model of any integer token array."""
