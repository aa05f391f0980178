"""What several test files share: the plugins on sys.path when they are not pip-installed,
skipping a test whose optional dependency is missing, and a simulated kill during training."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = {"catdiff_vision": "catdiff-vision", "catdiff_text": "catdiff-text",
           "catdiff_translate": "catdiff-translate", "catdiff_tokens": "catdiff-tokens"}
VISION_DIR = ROOT / "plugins" / "catdiff-vision"


def plugins_on_path() -> None:
    """Import each plugin from plugins/ when it is not installed (editable or not)."""
    for module, folder in PLUGINS.items():
        if importlib.util.find_spec(module) is None:
            sys.path.insert(0, str(ROOT / "plugins" / folder))


def needs(*modules: str) -> None:
    """Skip the calling test unless every module imports (the vision plugin's optional dependencies)."""
    for name in modules:
        pytest.importorskip(name, reason=f"{name} is not installed (pip install -e plugins/catdiff-vision)")


def fit_until_killed(eng, step: int, monkeypatch) -> None:
    """Train ``eng`` until a simulated kill (KeyboardInterrupt in its loss) at ``step``."""
    real = eng.method.loss

    def crash(*args):
        if eng.step == step:
            raise KeyboardInterrupt("simulated kill")
        return real(*args)

    monkeypatch.setattr(eng.method, "loss", crash)
    with pytest.raises(KeyboardInterrupt):
        eng.fit()
