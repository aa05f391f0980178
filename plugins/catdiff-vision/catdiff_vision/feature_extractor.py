"""The digits classifier as a torch-fidelity feature extractor, registered as ``"digits-classifier"``.

The name is deliberately not "fid"/"inception"-like: numbers computed with it are FIDs in
the classifier's feature space, not comparable with Inception FIDs of any paper.

torch-fidelity contract (``torch_fidelity.feature_extractor_base.FeatureExtractorBase``):
the class is built as ``cls(name, features_list, **all_calculate_metrics_kwargs)``; its
``forward`` gets a batch from the input Dataset and returns a tuple of ``[B, C]`` float
tensors in the order of ``features_list``. Inputs here follow torch-fidelity's image
convention, uint8 ``[B, C, 8, 8]`` with C = 1 or 3 (grey RGB) and values 0..255; each
pixel is snapped back to the nearest of the 17 grey levels, so level -> uint8 -> level
is exact. Weights come from ``feature_extractor_weights_path`` (a file written by
:mod:`catdiff_vision.classifier`) or, if that is None, the cached default classifier.
Nothing is ever downloaded.
"""
from __future__ import annotations

import copy

import torch
from torch.utils.data import Dataset

try:
    import torch_fidelity
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
except ImportError as e:  # pragma: no cover - exercised only without the dependency
    raise ImportError(
        "the digits FID needs torch-fidelity: `pip install torch-fidelity` "
        "(or install the plugin with its dependencies: `pip install -e plugins/catdiff-vision`)"
    ) from e

from . import classifier, data

EXTRACTOR_NAME = "digits-classifier"
LEVELS = data.LEVELS
SIDE = data.SIDE


class DigitsClassifierFeatureExtractor(FeatureExtractorBase):
    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            model = classifier.get_classifier()
        else:
            model = classifier.load_weights(feature_extractor_weights_path)
        # A private copy: torch-fidelity may move or re-mode its extractor (.cuda(), .eval()).
        self.model = copy.deepcopy(model)
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def get_provided_features_list():
        return classifier.DigitsCNN.FEATURES

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits", "fid": "penultimate", "kid": "penultimate", "prc": "penultimate"}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 1, SIDE, SIDE, dtype=torch.uint8)

    def forward(self, x):
        if not (torch.is_tensor(x) and x.dtype == torch.uint8):
            raise ValueError(f"{EXTRACTOR_NAME}: expected a torch.uint8 image batch, got {type(x).__name__} "
                             f"{getattr(x, 'dtype', '')}")
        if x.dim() != 4 or x.shape[1] not in (1, 3) or tuple(x.shape[2:]) != (SIDE, SIDE):
            raise ValueError(f"{EXTRACTOR_NAME}: expected [B, 1 or 3, {SIDE}, {SIDE}] images, got {tuple(x.shape)}")
        grey = x.float().mean(1, keepdim=True)
        levels = torch.round(grey * ((LEVELS - 1) / 255.0))
        feats = self.model.features(levels / (LEVELS - 1))
        return tuple(feats[name].float() for name in self.features_list)


class UInt8Images(Dataset):
    """A Dataset over a uint8 image tensor ``[N, C, H, W]``, the input form torch-fidelity expects."""

    def __init__(self, images: torch.Tensor):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"UInt8Images expects a uint8 [N, C, H, W] tensor, got {images.dtype} {tuple(images.shape)}")
        self.images = images

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, i):
        return self.images[i]


def tokens_to_uint8(tokens: torch.Tensor) -> torch.Tensor:
    """Grey-level tokens ``[N, 64]`` -> uint8 images ``[N, 1, 8, 8]`` (level * 255 / 16, rounded)."""
    images = classifier.preprocess(tokens)  # range-checked float in [0, 1]
    return torch.round(images * 255).to(torch.uint8)


def ensure_registered() -> None:
    registered = FEATURE_EXTRACTORS_REGISTRY.get(EXTRACTOR_NAME)
    if registered is None:
        torch_fidelity.register_feature_extractor(EXTRACTOR_NAME, DigitsClassifierFeatureExtractor)
    elif registered is not DigitsClassifierFeatureExtractor:
        raise RuntimeError(
            f"torch-fidelity feature extractor {EXTRACTOR_NAME!r} is already registered by {registered!r}"
        )


ensure_registered()
