"""benchmarks.compare on a tiny budget: the rows of its tables, and equal-time steps that
follow the methods' step costs (a CATDM step costs ~2x an AR step: its z_0 pass doubles the
batch and the CM teacher adds a forward)."""
from __future__ import annotations

import json

import pytest

from benchmarks import compare
from benchmarks.harness import train_time

TINY = {"layers": 1, "width": 32, "heads": 2, "embed_dim": 8, "warmup": 10}
BUDGET, STEPS = 1.5, 30


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    path = tmp_path_factory.mktemp("compare") / "results.json"
    records = compare.compare(tasks=("digits",), methods=("catdm", "ar"), seeds=(0,), modes=("time", "steps"),
                              budget=BUDGET, steps=STEPS, sample_steps=(2,), samples=16, threads=1, clock="cpu",
                              sets=TINY, json_path=path, log=lambda *a: None)
    return records, path


def test_records_and_table_rows(results):
    records, path = results
    assert sorted((r["method"], r["mode"]) for r in records) == [
        ("ar", "steps"), ("ar", "time"), ("catdm", "steps"), ("catdm", "time")]
    assert json.loads(path.read_text())["records"] == json.loads(json.dumps(records, default=str))
    for r in records:
        (e,) = r["evals"]  # one sampler arm, one step count (AR: none)
        assert e["fid"] > 0 and e["fid_floor"] > 0
        assert e["sample_steps"] == (None if r["method"] == "ar" else 2)
        assert e["nfe_per_sample"] == (64 if r["method"] == "ar" else 3)  # AR: one call per position; CATDM: + final
        assert r["bits_per_token"] > 0
    table = compare.markdown(records)
    assert "equal training time, 2 s each" in table and "equal training steps" in table
    rows = [line for line in table.splitlines() if line.startswith("| CATDM |") or line.startswith("| AR |")]
    assert len(rows) == 4
    head = next(line for line in table.splitlines() if line.startswith("| method |"))
    assert all(row.count("|") == head.count("|") for row in rows)


def test_equal_time_steps_follow_step_costs(results):
    """Both modes ran and the time mode stopped within its plan (no timing assertion: how far
    a real clock gets depends on the machine; the arithmetic is tested with a virtual clock)."""
    records, _ = results
    by = {(r["method"], r["mode"]): r for r in records}
    for m in ("catdm", "ar"):
        assert by[m, "steps"]["steps"] == STEPS
        assert 0 < by[m, "time"]["steps"] <= by[m, "time"]["steps_planned"]


@pytest.mark.parametrize("cost", [0.01, 0.02, 0.05])
def test_train_time_reaches_the_steps_a_budget_buys(cost):
    """With a virtual clock that advances ``cost`` seconds per optimizer step, equal time means
    budget / cost steps: a method twice as dear gets half the steps."""
    from catdiff import Engine

    eng = Engine(task="digits", steps=2000, batch_size=4, threads=1, **TINY)
    res = train_time(eng, 2.0, clock=lambda: eng.step * cost)
    assert eng.step == res["steps_planned"] == round(2.0 / cost)
    assert res["train_s"] == pytest.approx(2.0)
    assert res["probe_s_per_step"] == pytest.approx(cost)


def test_reruns_skip_finished_records(results, tmp_path):
    records, _ = results
    again = compare.compare(tasks=("digits",), methods=("catdm",), seeds=(0,), modes=("steps",), steps=STEPS,
                            sample_steps=(2,), samples=16, sets=TINY, previous=records,
                            log=lambda *a: pytest.fail("reran a finished record"))
    assert again == records


def test_sampler_sweep_temperature_is_restored(capsys):
    """benchmarks.sampler_sweep: tau rescales the posterior logits of every step and leaves the model as
    it was; its table has a row per setting."""
    import torch

    from benchmarks import sampler_sweep
    from catdiff import Engine

    eng = Engine("digits", seed=0, threads=1, steps=0, **TINY)
    z, t = torch.randn(2, 64, TINY["embed_dim"]), torch.full((2,), 0.5)
    before = eng.ema_eval.logits(z, t)
    calls = []
    eng.task.generate = lambda ctx, n: (calls.append(eng.ema_eval.logits(z, t)), (torch.zeros(n, 64, dtype=torch.long), None))[1]
    eng.task.evaluate = lambda tokens, labels, out: {"fid_digits_classifier": 1.0, "fid_digits_classifier_real_test": 0.5}
    assert sampler_sweep.fid(eng, 4, 0.5, {"sample_steps": 3}) == (1.0, 0.5)
    torch.testing.assert_close(calls[0], before / 0.5)
    torch.testing.assert_close(eng.ema_eval.logits(z, t), before)  # restored
    assert "logits" not in eng.ema_eval.__dict__ and eng.cfg.sample_steps != 3

    sampler_sweep.main(["--task", "digits", "--steps", "2", "--samples", "8",
                        *[f"--set={k}={v}" for k, v in TINY.items()]])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "FID |" not in line]
    assert [r.split(" | ")[0][2:] for r in rows] == [label for label, _, _ in sampler_sweep.SETTINGS]


def test_method_variants_are_their_own_rows(tmp_path):
    """A lever arm ``catdm[KEY=VALUE,...]`` trains with its settings, under its own label and key,
    beside the plain method of the same run; a bad name is refused before anything trains."""
    label, overrides, arms = compare.method_spec("catdm[embed_norm=4,time_warp=sample]")
    assert label == "CATDM embed_norm=4 time_warp=sample" and arms == [(label, {})]
    assert overrides["embed_norm"] == "4" and overrides["time_warp"] == "sample"
    assert not compare.has_likelihood("maskgit[steps=3]") and compare.has_likelihood("mdlm")
    for bad in ("foo[a=1]", "catdm[embed_norm=4", "catdm[novalue]"):
        with pytest.raises(ValueError):
            compare.method_spec(bad)
    records = compare.compare(tasks=("digits",), methods=("catdm", "catdm[embed_norm=4]"), seeds=(0,),
                              modes=("steps",), steps=3, sample_steps=(2,), samples=8, threads=1, clock="cpu",
                              sets=TINY, json_path=tmp_path / "r.json", log=lambda *a: None)
    rows = {s["arm"]: s for s in compare.arm_summary(records)}
    assert set(rows) == {"CATDM", "CATDM embed_norm=4"}
    assert "| CATDM embed_norm=4 |" in compare.markdown(records)


def test_steps_takes_any_registered_method_by_name():
    import argparse

    from benchmarks import steps

    assert steps.arm_name("udlm") == "udlm" and steps.arm_overrides("udlm") == ({"method": "udlm"}, {})
    assert steps.arm_overrides("CATDM-CE") == steps.ARMS["CATDM-CE"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown arm 'nosuch'"):
        steps.arm_name("nosuch")
