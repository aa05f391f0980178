"""The first-party methods, one module or package each, all on the same Denoiser:

- ``catdm``: CATDM (paper 003), continuous diffusion over the learned codebook, :mod:`.catdm`

the discrete-state methods (the codebook is their input embedding table; [mask] is row K;
shared machinery in :mod:`.discrete`):

- ``d3pm``: D3PM-uniform (Austin et al. 2021), :mod:`.d3pm`
- ``vqdiffusion``: VQ-Diffusion mask-and-replace with Improved VQ-Diffusion sampling
  (paper 004), :mod:`.vqdiffusion`
- ``maskgit``: MaskGIT (Chang et al. 2022), :mod:`.maskgit`
- ``mdlm``: masked diffusion on its continuous-time ELBO (Sahoo et al. 2024), :mod:`.mdlm`
- ``udlm``: uniform-state diffusion on its continuous-time ELBO (Schiff et al. 2024; Duo), :mod:`.udlm`

and the autoregressive baseline they are compared against (the same backbone made causal):

- ``ar``: a causal Transformer decoder with exact likelihood and KV-cache decoding, :mod:`.ar`

What every method shares (guidance, Gumbel draws, argument checks, the aux loss): :mod:`.shared`.
"""
from .ar import AR
from .catdm import CATDM
from .d3pm import D3PM
from .maskgit import MaskGIT
from .mdlm import MDLM
from .udlm import UDLM
from .vqdiffusion import VQDiffusion

__all__ = ["AR", "CATDM", "D3PM", "MDLM", "MaskGIT", "UDLM", "VQDiffusion", "builtin_methods"]


def builtin_methods() -> dict:
    """``{name: Method subclass}`` of the first-party methods (what :mod:`catdiff.builtins` registers)."""
    return {m.name: m for m in (CATDM, D3PM, VQDiffusion, MaskGIT, MDLM, UDLM, AR)}
