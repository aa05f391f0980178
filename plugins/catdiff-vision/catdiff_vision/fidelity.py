"""FID in the feature space of the digits classifier, computed by torch-fidelity.

``fid_digits_classifier``: FID between samples and the REFERENCE set, the 1497 real
TRAIN digits. Train, because that is the distribution the generative model is fit to (a
model that reproduces its training distribution scores best) and because it is the
largest real set, so the reference statistics are the least noisy. Features: the
classifier's 64-d ``penultimate`` layer (post-ReLU fc), semantic enough to see wrong or
blurred digits while small enough that a 64x64 covariance is well estimated from a few
hundred samples.

FID is biased upwards at small sample sizes, so a number only means something next to
its floor: ``fid_digits_classifier_real_test`` is the same FID for the 300 real TEST
digits, i.e. what a perfect (non-memorising) model would score with 300 samples. Compare
samples at a similar count (the floor shrinks roughly like 1/N). The classifier never saw
the test digits, so the floor also contains its small train/test feature gap.

Only this module's functions import torch-fidelity (through
:mod:`catdiff_vision.feature_extractor`); importing it is cheap.
"""
from __future__ import annotations

import functools

import torch

from catdiff.api.errors import UserError

from . import classifier, data

FID_FEATURE_LAYER = "penultimate"
REFERENCE_SPLIT = "train"


def fid(tokens_a: torch.Tensor, tokens_b: torch.Tensor, feature_layer: str = FID_FEATURE_LAYER) -> float:
    """FID between two sets of digit token sequences ``[N, 64]`` in the classifier's feature space."""
    from .feature_extractor import EXTRACTOR_NAME, UInt8Images, ensure_registered, tokens_to_uint8
    import torch_fidelity

    ensure_registered()
    for name, t in (("first", tokens_a), ("second", tokens_b)):
        if len(t) < 2:
            raise UserError(f"FID needs at least 2 samples in each set; the {name} set has {len(t)}")
    with classifier.single_thread():
        metrics = torch_fidelity.calculate_metrics(
            input1=UInt8Images(tokens_to_uint8(tokens_a)),
            input2=UInt8Images(tokens_to_uint8(tokens_b)),
            fid=True,
            feature_extractor=EXTRACTOR_NAME,
            feature_layer_fid=feature_layer,
            feature_extractor_weights_path=str(classifier.weights_path()),
            cuda=False,
            batch_size=512,
            cache=False,  # inputs are in-memory tensors; nothing to name a cache entry after
            save_cpu_ram=True,  # num_workers=0: no DataLoader worker processes
            verbose=False,
        )
    return float(metrics[torch_fidelity.KEY_METRIC_FID])


def reference_tokens() -> torch.Tensor:
    return data.load_split(REFERENCE_SPLIT)[0]


def digits_fid(tokens: torch.Tensor, feature_layer: str = FID_FEATURE_LAYER) -> dict[str, float]:
    """The ``digits-fid`` metric: ``{"fid_digits_classifier": FID(tokens, real train digits)}``."""
    return {"fid_digits_classifier": fid(torch.as_tensor(tokens).cpu(), reference_tokens(), feature_layer)}


def real_test_floor(feature_layer: str = FID_FEATURE_LAYER) -> float:
    """FID of the 300 real test digits against the reference: a perfect model's score at N=300."""
    return _real_test_floor(str(classifier.weights_path()), feature_layer)


@functools.lru_cache(maxsize=None)
def _real_test_floor(weights: str, feature_layer: str) -> float:  # keyed by the classifier file
    return fid(data.load_split("test")[0], reference_tokens(), feature_layer)
