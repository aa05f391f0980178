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


class ClassifierFeatureExtractor(FeatureExtractorBase):
    """A small image classifier as a torch-fidelity extractor (shared by digits and fashion).

    Subclasses set ``extractor_name``, ``side`` (input H = W) and ``features`` (the model's
    feature names), and implement ``load_model(weights_path)`` and ``model_input(x)``
    (uint8 [B, 1 or 3, side, side] -> the model's float input)."""

    extractor_name = ""
    side = 0
    features: tuple = ()

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        # A private copy: torch-fidelity may move or re-mode its extractor (.cuda(), .eval()).
        self.model = copy.deepcopy(self.load_model(feature_extractor_weights_path))
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def get_provided_features_list(cls):
        return cls.features

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits", "fid": "penultimate", "kid": "penultimate", "prc": "penultimate"}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @classmethod
    def get_dummy_input_for_compile(cls):
        return torch.zeros(1, 1, cls.side, cls.side, dtype=torch.uint8)

    def forward(self, x):
        if not (torch.is_tensor(x) and x.dtype == torch.uint8):
            raise ValueError(f"{self.extractor_name}: expected a torch.uint8 image batch, got {type(x).__name__} "
                             f"{getattr(x, 'dtype', '')}")
        if x.dim() != 4 or x.shape[1] not in (1, 3) or tuple(x.shape[2:]) != (self.side, self.side):
            raise ValueError(f"{self.extractor_name}: expected [B, 1 or 3, {self.side}, {self.side}] images, "
                             f"got {tuple(x.shape)}")
        feats = self.model.features(self.model_input(x))
        return tuple(feats[name].float() for name in self.features_list)


class DigitsClassifierFeatureExtractor(ClassifierFeatureExtractor):
    extractor_name = EXTRACTOR_NAME
    side = SIDE
    features = classifier.DigitsCNN.FEATURES

    @staticmethod
    def load_model(weights_path):
        return classifier.get_classifier() if weights_path is None else classifier.load_weights(weights_path)

    @staticmethod
    def model_input(x):
        grey = x.float().mean(1, keepdim=True)
        return torch.round(grey * ((LEVELS - 1) / 255.0)) / (LEVELS - 1)


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
