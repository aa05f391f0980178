import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import plugins_on_path  # noqa: E402
from toytask import ToyCondTask, ToyTask  # noqa: E402

plugins_on_path()


@pytest.fixture
def toy():
    return ToyTask()


@pytest.fixture
def toy_cond():
    return ToyCondTask()


@pytest.fixture
def no_fidelity_weights(monkeypatch, tmp_path):
    """No Inception or VGG16 weights (nothing is downloaded): an empty TORCH_HOME, no weight env vars.
    Returns the TORCH_HOME."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("CATDIFF_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.delenv("CATDIFF_VGG16_WEIGHTS", raising=False)
    return tmp_path / "torch-home"
