"""FID, Inception Score and precision/recall of generated images with torch-fidelity, offline.

FID and IS use torch-fidelity's ``inception-v3-compat`` (the TF-FID Inception port); precision
and recall (Kynkaanniemi et al. 2019, k = 3) use its ``vgg16`` (torchvision ImageNet VGG16,
fc2 features). Their weights are never downloaded: each comes from, in this order,
  1. an explicit path (task options ``inception_weights`` / ``vgg16_weights``),
  2. the env vars ``CATDIFF_INCEPTION_WEIGHTS`` / ``CATDIFF_VGG16_WEIGHTS``,
  3. the torch hub cache, ``$TORCH_HOME/hub/checkpoints/<file>`` (where torch-fidelity and
     torchvision would have saved their own download),
and a missing file is an error that names the file and the URL the installed torch-fidelity
/ torchvision would fetch it from. Reference statistics are cached by torch-fidelity (its
``fidelity_cache`` under the torch home) when the reference is a directory given a cache name.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from catdiff.api.errors import UserError

ENV = {"inception": "CATDIFF_INCEPTION_WEIGHTS", "vgg16": "CATDIFF_VGG16_WEIGHTS"}
OPTION = {"inception": "inception_weights", "vgg16": "vgg16_weights"}
EXTRACTOR = {"inception": "inception-v3-compat", "vgg16": "vgg16"}


def expected_url(kind: str) -> str:
    """The URL the installed torch-fidelity (Inception) or torchvision (VGG16) downloads from."""
    if kind == "inception":
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

        return URL_INCEPTION_V3
    if kind == "vgg16":
        import torchvision

        return torchvision.models.VGG16_Weights.IMAGENET1K_V1.url
    raise UserError(f"unknown feature network {kind!r}; expected inception or vgg16")


def weights_file(kind: str, explicit: str | os.PathLike | None = None) -> Path:
    """The local weights of ``kind`` (inception | vgg16); FileNotFoundError saying where to put them."""
    filename = expected_url(kind).rsplit("/", 1)[-1]
    hub = Path(torch.hub.get_dir()) / "checkpoints" / filename
    candidates = [("option " + OPTION[kind], explicit), ("env " + ENV[kind], os.environ.get(ENV[kind])),
                  ("torch hub cache", hub)]
    for _, path in candidates:
        if path and Path(path).expanduser().is_file():
            return Path(path).expanduser()
    tried = "; ".join(f"{where}: {path}" for where, path in candidates if path)
    raise FileNotFoundError(
        f"{kind} weights for torch-fidelity not found (never downloaded at run time). Provide the file {filename} "
        f"(from {expected_url(kind)}) as {hub}, or point the env var {ENV[kind]} or the task option "
        f"{OPTION[kind]} at it. Tried: {tried}")


def _uint8(images: torch.Tensor) -> torch.Tensor:
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 RGB images [N, 3, H, W], got {images.dtype} {tuple(images.shape)}")
    return images.cpu()


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [-1, 1] -> uint8 [0, 255]."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def image_metrics(generated: torch.Tensor, reference: str | Path | torch.Tensor, *, fid: bool = True,
                  isc: bool = True, prc: bool = True, inception_weights=None, vgg16_weights=None,
                  reference_cache_name: str | None = None, reference_size: int = 0, cuda: bool | None = None,
                  batch_size: int = 64) -> dict[str, float]:
    """Metrics of uint8 ``generated`` images [N, 3, H, W] against ``reference`` (an image directory
    or a uint8 tensor): ``fid_inception``, ``is_inception`` (+ ``_std``; of ``generated`` only),
    ``precision_vgg16``, ``recall_vgg16``. ``reference_size`` > 0 resizes-and-crops reference
    files to that size (torch-fidelity ``samples_resize_and_crop``)."""
    import torch_fidelity

    from .feature_extractor import UInt8Images

    if cuda is None:
        cuda = torch.cuda.is_available()
    gen = UInt8Images(_uint8(generated))
    if isinstance(reference, torch.Tensor):
        ref: Any = UInt8Images(_uint8(reference))
    else:
        ref = str(Path(reference).expanduser())
        if not Path(ref).is_dir():
            raise FileNotFoundError(f"FID reference image directory {ref} not found (task option fid_reference)")
    common = dict(input1=gen, input2=ref, cuda=cuda, batch_size=batch_size, verbose=False, save_cpu_ram=True,
                  cache=reference_cache_name is not None and not isinstance(reference, torch.Tensor),
                  input2_cache_name=reference_cache_name, samples_resize_and_crop=reference_size)
    out: dict[str, float] = {}
    if fid or isc:
        m = torch_fidelity.calculate_metrics(**common, fid=fid, isc=isc, feature_extractor=EXTRACTOR["inception"],
                                             feature_extractor_weights_path=str(weights_file("inception", inception_weights)))
        if fid:
            out["fid_inception"] = float(m[torch_fidelity.KEY_METRIC_FID])
        if isc:
            out["is_inception"] = float(m[torch_fidelity.KEY_METRIC_ISC_MEAN])
            out["is_inception_std"] = float(m[torch_fidelity.KEY_METRIC_ISC_STD])
    if prc:
        m = torch_fidelity.calculate_metrics(**common, prc=True, feature_extractor=EXTRACTOR["vgg16"],
                                             feature_extractor_weights_path=str(weights_file("vgg16", vgg16_weights)))
        out["precision_vgg16"] = float(m[torch_fidelity.KEY_METRIC_PRECISION])
        out["recall_vgg16"] = float(m[torch_fidelity.KEY_METRIC_RECALL])
    return out
