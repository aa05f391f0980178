"""Checkpoints and exports written by catdiff 0.1 (format version 1, one flat config) keep
loading, sampling, evaluating and resuming. The fixtures in tests/fixtures/v1 were written by
that code (tiny digits models, catdm and ar, 4 steps); expected.json holds what it sampled
(3 samples, 3 steps, seed 5) and its likelihood bound (16 test rows, seed 3)."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from catdiff import Engine
from catdiff.run.config import migrate

pytest.importorskip("catdiff_vision", reason="the fixtures are digits models (catdiff-vision)")

FIXTURES = Path(__file__).parent / "fixtures" / "v1"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("kind", ["checkpoint", "export"])
def test_v1_files_sample_and_score_as_they_did(name, kind):
    torch.set_num_threads(1)
    path = FIXTURES / (f"{name}.pt" if kind == "checkpoint" else f"{name}-export")
    eng = Engine.load(path)
    exp = EXPECTED[name]
    assert eng.step == exp["step"]
    assert eng.sample(3, steps=3, seed=5).tolist() == exp["samples"]
    lik = eng.likelihood(batches=1, batch_size=16, seed=3)
    assert lik["nll_bound_nats_per_token"] == pytest.approx(exp["nll_bound_nats_per_token"], rel=1e-5)


def test_v1_checkpoint_resumes_and_keeps_method_options(tmp_path):
    torch.set_num_threads(1)
    shutil.copy(FIXTURES / "digits-ar.pt", tmp_path / "last.pt")
    saved = torch.load(tmp_path / "last.pt", weights_only=False)["config"]
    assert saved["discrete_steps"] == 0 and saved["embed_init_std"] == -1  # format 1's "choose for me"
    flat = {k: v for k, v in migrate(saved).items() if k not in ("task", "task_options", "resume")}
    assert flat["embed_init_std"] is None  # a run-level sentinel
    assert not {"discrete_steps", "shift", "drop_l0"} & set(flat)  # other methods' keys: format 1 saved every one
    eng = Engine(task="digits", out=tmp_path, config_file=flat, steps=6, temperature=0.9)  # a format-1 config as a source
    assert eng.step == 4  # resumed, not started over
    assert eng.method.option("temperature") == 0.9
    eng.fit()
    assert eng.step == 6
    eng.save()
    assert torch.load(tmp_path / "last.pt", weights_only=False)["step"] == 6


def test_v1_ar_config_message_is_not_carried_forward():
    saved = torch.load(FIXTURES / "digits-ar.pt", weights_only=False)["config"]
    assert saved["task_options"]["causal"] is True  # what format 1 wrote
    eng = Engine.load(FIXTURES / "digits-ar.pt")
    assert "causal" not in eng.cfg.task_options and eng.model.net.causal


def test_v1_checkpoint_teacher_becomes_the_methods_own(tmp_path):
    """Format 1 saved a teacher EMA (``ema_cm``) for every method; CATDM's comes back as its CM
    teacher, AR's is dropped, and the next checkpoint holds only what the method keeps."""
    torch.set_num_threads(1)
    for name, nets in (("digits-catdm", ["ema_cm"]), ("digits-ar", [])):
        old = torch.load(FIXTURES / f"{name}.pt", weights_only=False)
        eng = Engine.load(FIXTURES / f"{name}.pt", out=tmp_path / name)
        assert sorted(eng.method.networks()) == nets
        for net in eng.method.networks().values():
            assert all(torch.equal(v, old["ema_cm"][k]) for k, v in net.state_dict().items())
        new = torch.load(eng.save(tmp_path / f"{name}.pt"), weights_only=False)
        assert new["version"] == 2 and "ema_cm" not in new and sorted(new["nets"]) == nets


@pytest.mark.parametrize("method,expect", [
    ("d3pm", {"discrete_steps": None, "hybrid_weight": None}),  # the method's own sentinels (D3PM.v1_auto)
    ("catdm", {"drop_l0": None, "shift": -3.0}),
    ("mdlm", {})])
def test_v1_config_keeps_the_runs_own_keys_with_their_sentinels_as_auto(method, expect):
    saved = {"task": "digits", "method": method, "backbone": "encoder", "lr": 0.0, "warmup": -1, "width": 32,
             "discrete_steps": 0, "hybrid_weight": -1.0, "drop_l0": -1.0, "shift": -3.0, "task_options": {"guidance": 1.5}}
    flat = migrate(saved)
    mine = {"discrete_steps", "hybrid_weight", "drop_l0", "shift"} & set(flat)
    assert {k: flat[k] for k in mine} == expect
    assert flat["lr"] is None and flat["warmup"] is None and flat["width"] == 32 and flat["guidance"] == 1.5
    assert migrate(flat) == flat  # idempotent: the engine migrates a config more than once
