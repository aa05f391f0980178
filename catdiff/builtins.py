"""Components that ship with catdiff, registered through the same hooks as any plugin; named by
reference (imported on first use), so that listing them does not import torch."""
from .api.markers import Lazy, hookimpl


@hookimpl
def catdiff_backbones():
    return {"encoder": Lazy("catdiff.nn.backbones:build_encoder")}


@hookimpl
def catdiff_methods():
    return {name: Lazy(f"catdiff.methods:{cls}") for name, cls in (
        ("catdm", "CATDM"), ("d3pm", "D3PM"), ("vqdiffusion", "VQDiffusion"), ("maskgit", "MaskGIT"),
        ("mdlm", "MDLM"), ("udlm", "UDLM"), ("ar", "AR"))}
