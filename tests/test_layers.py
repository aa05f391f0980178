"""The core (``catdiff/`` outside ``catdiff/methods/``) names no method's setting: a method owns
its network, its copies of it and its settings (docs/architecture.md)."""
import ast
from pathlib import Path

import pytest

from catdiff.api.hooks import registry
from catdiff.api.settings import declared

CORE = Path(__file__).parents[1] / "catdiff"


def method_setting_names() -> dict[str, str]:
    """setting name -> the first-party method that declares it."""
    names = {}
    for name, comp in registry().components["methods"].items():
        if comp.source.split()[0] == "catdiff":
            names.update({s.name: name for s in declared(comp.factory)})
    return names


def named_settings(path: Path, names) -> list[str]:
    """Where ``path`` spells a setting in ``names`` as a string or reads it as an attribute."""
    hits = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and node.value in names:
            hits.append(f"{path.name}:{node.lineno} {node.value!r}")
        elif isinstance(node, ast.Attribute) and node.attr in names:
            hits.append(f"{path.name}:{node.lineno} .{node.attr}")
    return sorted(hits)


def test_the_finder_sees_a_setting_read_by_the_core(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('x = cfg.options.get("embed_norm")\ny = cfg.self_cond\nV1_OLD = ("shift",)\n')
    assert named_settings(bad, {"embed_norm", "self_cond", "shift"}) == [
        "bad.py:1 'embed_norm'", "bad.py:2 .self_cond", "bad.py:3 'shift'"]


@pytest.mark.parametrize("path", sorted(p for p in CORE.rglob("*.py") if "methods" not in p.relative_to(CORE).parts),
                         ids=lambda p: str(p.relative_to(CORE)))
def test_the_core_names_no_method_setting(path):
    names = method_setting_names()
    assert {"embed_norm", "self_cond", "evidence", "ema_cm", "mdlm_eps"} <= set(names)
    assert named_settings(path, names) == []


@pytest.mark.parametrize("method,settings,nets", [
    ("catdm", {}, ["ema_cm"]), ("catdm", {"beta_cm": 0.0}, []), ("catdm", {"objective": "csdm"}, []),
    ("mdlm", {}, []), ("udlm", {}, []), ("maskgit", {}, []), ("vqdiffusion", {}, []), ("d3pm", {}, []),
    ("ar", {}, [])])
def test_a_checkpoint_holds_the_copies_its_method_uses(tmp_path, method, settings, nets):
    """The trained network and its sampling EMA for every method; a teacher only where the loss
    reads one (CATDM's L_CM), and that teacher moves with training."""
    from toytask import ToyTask

    from catdiff import Engine
    import torch

    eng = Engine(ToyTask(), out=tmp_path, method=method, steps=3, threads=1, **settings)
    before = {k: {n: v.clone() for n, v in m.state_dict().items()} for k, m in eng.method.networks().items()}
    eng.fit()
    saved = torch.load(tmp_path / "last.pt", weights_only=False)
    assert sorted(saved["nets"]) == nets and "ema_cm" not in saved
    assert saved["model"].keys() == saved["ema_eval"].keys()
    for name, state in saved["nets"].items():
        assert state.keys() == saved["model"].keys()
        assert any(not torch.equal(state[k], before[name][k]) for k in state)  # after_step moved it
