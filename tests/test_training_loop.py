"""The training loop at scale: gradient accumulation, no host sync between log points, the
finite-loss check, evaluation during training, kept checkpoints, precision, loggers, export."""
import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch

from catdiff.run import checkpoint

from catdiff import cli
from catdiff.api.errors import UserError
from catdiff.api.hooks import Component, registry
from catdiff.run.engine import Engine
from test_engine import same_weights
from toytask import ToyTask


def close(a: Engine, b: Engine, tol: float = 1e-5) -> float:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    worst = max((sa[k] - sb[k]).abs().max().item() for k in sa)
    assert worst < tol, worst
    return worst


def first_gradients(engine: Engine) -> list[torch.Tensor]:
    """Train one step, returning the (accumulated, clipped) gradients the optimizer stepped with."""
    grads, real = [], engine.optimizer.step

    def step(*a, **k):
        grads.extend(p.grad.clone() for p in engine.model.parameters() if p.grad is not None)
        return real(*a, **k)

    engine.optimizer.step = step
    engine.fit(until=1)
    return grads


@pytest.mark.parametrize("accum", [2, 4])
def test_accumulation_gives_the_gradient_of_the_whole_batch(toy, accum):
    # ar's loss is deterministic (teacher forcing), so the split alone is compared
    whole = first_gradients(Engine(toy, method="ar", steps=4, threads=1))
    split = first_gradients(Engine(toy, method="ar", steps=4, threads=1, accum=accum))
    assert len(whole) == len(split) > 0
    scale = max(g.abs().max().item() for g in whole)
    assert max((a - b).abs().max().item() for a, b in zip(whole, split)) < 1e-5 * scale
    # and the weights a few steps on, up to float noise that Adam amplifies for tiny gradients
    close(Engine(toy, method="ar", steps=4, threads=1).fit(), Engine(toy, method="ar", steps=4, threads=1,
                                                                      accum=accum).fit(), tol=2e-4)


def test_accumulation_is_checked_and_resumes_exactly(tmp_path, toy):
    with pytest.raises(UserError, match="batch_size=16: must be a multiple of accum=3"):
        Engine(toy, accum=3)
    full = Engine(toy, steps=8, accum=2, threads=1).fit()
    Engine(toy, out=tmp_path, steps=8, accum=2, threads=1).fit(until=5)
    assert same_weights(full, Engine(toy, out=tmp_path, steps=8, accum=2, threads=1).fit())


DDP_ACCUM = textwrap.dedent('''
    import sys, torch, torch.distributed as dist
    sys.path.insert(0, {tests!r})
    from toytask import ToyTask
    from catdiff.run.engine import Engine
    eng = Engine(ToyTask(), method="ar", steps=4, threads=1, accum=2)
    eng.fit()
    if eng.rank == 0:
        torch.save(eng.model.state_dict(), {out!r})
''')


@pytest.mark.slow
def test_two_ranks_with_accumulation_match_one_process(tmp_path, toy):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_ACCUM.format(tests=str(Path(__file__).parent), out=str(tmp_path / "w.pt")))
    torchrun = Path(sys.executable).with_name("torchrun")
    res = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", str(script)], capture_output=True,
                         text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr[-3000:]
    one = Engine(toy, method="ar", steps=4, threads=1).fit().model.state_dict()
    ddp = torch.load(tmp_path / "w.pt", weights_only=True)
    assert max((one[k] - ddp[k]).abs().max().item() for k in one) < 2e-4  # float noise, amplified by Adam


SYNCS = ("item", "__float__", "__bool__", "tolist", "__int__")


@pytest.mark.parametrize("settings", [{}, {"l0_rows": "auto"}])
def test_no_host_sync_between_log_points(toy, monkeypatch, settings):
    eng = Engine(toy, steps=12, log_every=6, ckpt_every=1000, threads=1, **settings)
    eng.data("train"), eng.data("test")  # loaded and checked once, before the loop
    calls, allowed = [], []
    for name in SYNCS:
        real = getattr(torch.Tensor, name)

        def spy(self, *a, _real=real, _name=name, **k):
            if not allowed:
                calls.append((eng.step, _name))
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)

    def at_log_point(real):
        def wrapped(*a, **k):
            assert eng.step % 6 == 0, f"a log point at step {eng.step}"
            allowed.append(1)
            try:
                return real(*a, **k)
            finally:
                allowed.pop()
        return wrapped

    from catdiff.run import trainlog, training
    monkeypatch.setattr(training, "check_finite", at_log_point(training.check_finite))
    monkeypatch.setattr(trainlog.TrainLog, "write", at_log_point(trainlog.TrainLog.write))
    eng.fit()
    if settings:  # l0_rows=auto reads its share back once per log_every updates, in the step before a log point
        assert calls == [(5, "tolist"), (11, "tolist")], calls
    else:
        assert calls == [], calls  # every read of a device value happened at steps 6 and 12
    assert eng.step == 12


class Diverging(ToyTask):
    name = "toy-diverging"


def test_a_non_finite_loss_stops_with_the_step_range_and_keeps_the_last_finite_checkpoint(tmp_path, toy, monkeypatch):
    eng = Engine(toy, out=tmp_path, steps=30, log_every=10, ckpt_every=5, threads=1)
    real = eng.method.loss

    def nan_at_7(*args):
        loss, logs = real(*args)
        return (loss * float("nan"), logs) if eng.step == 7 else (loss, logs)

    monkeypatch.setattr(eng.method, "loss", nan_at_7)
    with pytest.raises(UserError, match=r"non-finite loss or gradient between steps 6 and 10; the last checkpoint"):
        eng.fit()
    saved = checkpoint.load(tmp_path / "last.pt")
    assert saved["step"] == 5 and all(torch.isfinite(v).all() for v in saved["model"].values())


def test_eval_every_logs_and_keeps_the_best_checkpoint(tmp_path, toy):
    eng = Engine(toy, out=tmp_path, steps=20, eval_every=10, eval_samples=4, ckpt_every=10, threads=1).fit()
    rows = (tmp_path / "eval_log.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert len(rows) == 3 and "nll_bound_bits_per_token" in header and "progression_frac" in header
    assert [r.split(",")[0] for r in rows[1:]] == ["10", "20"]
    best = checkpoint.load(tmp_path / "best.pt")
    assert eng.best["metric"] == "nll_bound_bits_per_token" and best["step"] == eng.best["step"] in (10, 20)
    bits = [float(r.split(",")[header.index("nll_bound_bits_per_token")]) for r in rows[1:]]
    assert eng.best["value"] == min(bits)
    assert Engine(toy, out=tmp_path, steps=20).best == eng.best  # a resumed run keeps it


def test_task_best_metric_with_max_mode(tmp_path):
    class Best(ToyTask):
        best_metric = ("progression_frac", "max")

    eng = Engine(Best(), out=tmp_path, steps=10, eval_every=5, eval_samples=8, threads=1).fit()
    assert eng.best["metric"] == "progression_frac" and eng.best["mode"] == "max"


def test_keep_last_step_checkpoints(tmp_path, toy):
    Engine(toy, out=tmp_path, steps=12, ckpt_every=3, keep_last=2, threads=1).fit()
    assert sorted(p.name for p in tmp_path.glob("step-*.pt")) == ["step-00000009.pt", "step-00000012.pt"]
    assert checkpoint.load(tmp_path / "step-00000009.pt")["step"] == 9
    assert (tmp_path / "step-00000012.pt").read_bytes() == (tmp_path / "last.pt").read_bytes()


def test_fp16_precision_with_loss_scaling_resumes_exactly(tmp_path, toy):
    full = Engine(toy, steps=6, precision="fp16", threads=1).fit()
    assert full.precision == "fp16" and full.scaler.is_enabled() and full.scaler.get_scale() > 0
    Engine(toy, out=tmp_path, steps=6, precision="fp16", threads=1).fit(until=3)
    resumed = Engine(toy, out=tmp_path, steps=6, precision="fp16", threads=1)
    assert resumed.scaler.get_scale() == checkpoint.load(tmp_path / "last.pt")["scaler"]["scale"]
    assert same_weights(full, resumed.fit())
    assert Engine(toy, threads=1).precision == "fp32"  # auto on a CPU


def fake_wandb(monkeypatch) -> list:
    calls = []

    class Run:
        def log(self, values, step):
            calls.append(("log", step, values))

        def finish(self):
            calls.append(("finish",))

    module = types.SimpleNamespace(init=lambda **kw: calls.append(("init", kw)) or Run())
    monkeypatch.setitem(sys.modules, "wandb", module)
    return calls


def test_wandb_logger_continues_the_same_run_after_resuming(tmp_path, toy, monkeypatch):
    calls = fake_wandb(monkeypatch)
    Engine(toy, out=tmp_path, steps=10, logger="wandb", threads=1).fit(until=5)
    Engine(toy, out=tmp_path, steps=10, logger="wandb", threads=1).fit()
    inits = [c[1] for c in calls if c[0] == "init"]
    assert len(inits) == 2 and inits[0]["id"] == inits[1]["id"] and inits[1]["resume"] == "allow"
    logged = [c[1] for c in calls if c[0] == "log"]
    assert logged == [5, 10] and "train/loss" in calls[1][2]


def test_wandb_missing_is_a_clear_error(tmp_path, toy, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(UserError, match=r"logger=wandb needs the wandb package: pip install 'catdiff\[wandb\]'"):
        Engine(toy, out=tmp_path, steps=2, logger="wandb").fit()


def test_progress_off_a_terminal_is_plain_lines(toy, capsys):
    Engine(toy, steps=12, threads=1).fit()
    err = capsys.readouterr().err
    assert "\r" not in err and "train 12/12" in err


def test_export_and_from_pretrained_sample_like_the_checkpoint(tmp_path, toy, monkeypatch, capsys):
    monkeypatch.setitem(registry().components["tasks"], "toy", Component("tasks", "toy", ToyTask, "tests"))
    eng = Engine(toy, out=tmp_path / "run", steps=4, threads=1).fit()
    assert cli.main(["export", str(tmp_path / "run" / "last.pt"), str(tmp_path / "exp")]) == 0
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((tmp_path / "exp" / "config.json").read_text())
    assert meta["step"] == 4 and meta["task"]["vocab_size"] == 7
    back = Engine.from_pretrained(tmp_path / "exp")
    assert torch.equal(eng.sample(5, steps=3, seed=2), back.sample(5, steps=3, seed=2))
    assert cli.main(["export", str(tmp_path / "run"), str(tmp_path / "exp")]) == 2  # no silent overwrite
    assert "already holds an export" in capsys.readouterr().err
    assert cli.main(["sample", str(tmp_path / "exp"), "--n", "3", "--steps", "2", "--out", str(tmp_path / "s")]) == 0
    assert torch.load(tmp_path / "s" / "samples.pt").shape == (3, 12)
    assert cli.main(["eval", str(tmp_path / "exp"), "--n", "2", "--set", "sample_steps=2"]) == 0
    assert (tmp_path / "exp" / "metrics.json").exists()
    (tmp_path / "exp" / "model.safetensors").write_bytes(b"garbage")
    assert cli.main(["sample", str(tmp_path / "exp")]) == 2
    assert "corrupt or not a safetensors file" in capsys.readouterr().err


def test_sample_decode_returns_what_the_task_shows(toy):
    class Words(ToyTask):
        def decode(self, tokens):
            return ["".join("abcdefg"[i] for i in row) for row in tokens.tolist()]

    eng = Engine(Words(), steps=0)
    words = eng.sample(3, steps=2, decode=True)
    assert len(words) == 3 and all(isinstance(w, str) and len(w) == 12 for w in words)
    assert eng.sample(3, steps=2).shape == (3, 12)


@pytest.mark.slow
def test_compile_trains_and_samples_on_cpu(toy):
    eng = Engine(toy, steps=3, compile=True, threads=1, layers=1, width=32)
    eng.fit()
    plain = Engine(toy, steps=3, threads=1, layers=1, width=32).fit()
    close(eng, plain, tol=1e-4)  # the same network, compiled
    assert eng.sample(2, steps=2).shape == (2, 12)


def test_plain_progress_prints_no_rate_before_any_time_has_passed(capsys, monkeypatch):
    from catdiff.run import trainlog

    clock = iter([0.0, 0.00001, 0.05, 0.2, 0.3, 20.0])
    monkeypatch.setattr(trainlog.time, "perf_counter", lambda: next(clock))
    bar = trainlog.PlainProgress(8, "likelihood")  # t0 = 0
    for _ in range(4):
        bar.update(1)  # at 1e-5, 0.05 (too soon), 0.2 (first line), 0.3 (within `every`)
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["likelihood 3/8  15.00 it/s  eta 0s"]
    bar.update(4)  # the end: always a line
    assert capsys.readouterr().err.startswith("likelihood 8/8  0.40 it/s")
