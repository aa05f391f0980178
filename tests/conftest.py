import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from toytask import ToyCondTask, ToyTask  # noqa: E402


@pytest.fixture
def toy():
    return ToyTask()


@pytest.fixture
def toy_cond():
    return ToyCondTask()
