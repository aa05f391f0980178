"""The benchmarks' ``--models`` cache (benchmarks.harness.Runner): one name per trained model (the resolved training
config and seed), reused by a later run instead of training again, with the same results."""
from __future__ import annotations

import argparse

from benchmarks import harness
from benchmarks.harness import Runner, model_key


def test_model_names_follow_the_resolved_training_config():
    written_out = {"drop": "rand", "drop_ratio": 0.2, "drop_l0": 0.5}  # the digits defaults
    assert model_key("digits", {}) == model_key("digits", written_out)
    assert model_key("digits", {}) == model_key("digits", {"threads": 1, "sample_steps": 7, "sampler": "ddim"})
    for changed in ({"seed": 1}, {"steps": 10}, {"lr": 1e-3}, {"drop": "none"}, {"method": "d3pm"},
                    {"precision": "bf16"}):
        assert model_key("digits", {}) != model_key("digits", changed), changed


def test_a_kept_model_is_loaded_not_retrained(tmp_path, monkeypatch):
    args = argparse.Namespace(task="digits", steps=3, threads=1, samples=16, jobs=1, sets=[],
                              models=str(tmp_path))
    first = Runner(args).run({"layers": 1}, {"sample_steps": 4}, 0)
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert len(kept) == 2 and kept[0].endswith(".json") and kept[1].endswith(".pt")

    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(harness.Engine, "fit", no_training)
    again = Runner(args).run({"layers": 1}, {"sample_steps": 4}, 0)
    assert again["fid_digits_classifier"] == first["fid_digits_classifier"]
    assert again["train_seconds"] == first["train_seconds"]
    assert sorted(p.name for p in tmp_path.iterdir()) == kept
