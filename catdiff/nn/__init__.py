"""The networks: the codebook and the plain denoiser (model), the backbones, and the
embedding-collapse diagnostics of a network's codebook."""
