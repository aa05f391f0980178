"""Discrete-state methods, each an objective with its sampler, training the same Denoiser as
CATDM (the codebook is their input embedding table; [mask] is row K):

- ``d3pm``: D3PM-uniform (Austin et al. 2021), :mod:`.d3pm`
- ``vqdiffusion``: VQ-Diffusion mask-and-replace with Improved VQ-Diffusion sampling
  (paper 004), :mod:`.vqdiffusion`
- ``maskgit``: MaskGIT (Chang et al. 2022), :mod:`.maskgit`

and the autoregressive baseline they are compared against (the same backbone made causal):

- ``ar``: a causal Transformer decoder with exact likelihood and KV-cache decoding, :mod:`.ar`
"""
from .ar import AR
from .d3pm import D3PM
from .maskgit import MaskGIT
from .mdlm import MDLM
from .vqdiffusion import VQDiffusion

__all__ = ["AR", "D3PM", "MaskGIT", "VQDiffusion", "discrete_methods"]


def discrete_methods() -> dict:
    return {m.name: m for m in (D3PM, VQDiffusion, MaskGIT, MDLM, AR)}
