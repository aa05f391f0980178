import dataclasses
import json
import math
import subprocess
import sys

import pytest
import torch

from catdiff.api.errors import UserError
from catdiff.api.task import LazyTokenData, TokenData
from catdiff.nn.model import Denoiser
from catdiff.run import checkpoint
from catdiff.run.config import for_task, validate
from catdiff.run.engine import Engine
from helpers import fit_until_killed
from toytask import ToyClassTask, ToyCondTask, ToyTask, progressions


def same_weights(a: Engine, b: Engine) -> bool:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa) and all(
        torch.equal(x, y) for x, y in zip(a.ema_eval.state_dict().values(), b.ema_eval.state_dict().values()))


def test_a_training_setting_changed_at_sample_time_is_named(tmp_path, toy, capsys):
    Engine(toy, out=tmp_path, steps=2).fit()
    capsys.readouterr()
    Engine.from_checkpoint(tmp_path / "last.pt", task=toy, sampler="ddim", threads=1)  # sampling keys: quiet
    assert "warning" not in capsys.readouterr().err
    back = Engine.from_checkpoint(tmp_path / "last.pt", task=toy, embed_norm=5, sampler="ddim")
    assert back.cfg.embed_norm == 5.0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["catdiff: warning: training settings changed at sample time: embed_norm=5.0 (trained with 0.0); "
                   "the model never trained with them"]


def test_checkpoint_round_trip(tmp_path, toy):
    eng = Engine(toy, out=tmp_path, steps=5)
    eng.fit()
    back = Engine.from_checkpoint(tmp_path / "last.pt", task=toy)
    assert back.step == 5 and back.cfg == dataclasses.replace(eng.cfg, resume=False)
    assert same_weights(eng, back)
    assert json.loads((tmp_path / "config.json").read_text())["steps"] == 5
    assert torch.equal(eng.sample(4, steps=3, seed=0), back.sample(4, steps=3, seed=0))


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, toy, monkeypatch):
    full = Engine(toy, steps=20).fit()
    cut = Engine(toy, out=tmp_path, steps=20, ckpt_every=7)
    fit_until_killed(cut, 10, monkeypatch)
    resumed = Engine(toy, out=tmp_path, steps=20)
    assert resumed.step == 7  # the last checkpoint before the crash
    resumed.fit()
    assert same_weights(full, resumed)


def test_likelihood_bound_decreases_during_training(toy):
    eng = Engine(toy, steps=120, seed=3, evidence=False)  # the paper's network (with evidence it starts near uniform)
    before = eng.likelihood(batches=1)["nll_bound_nats_per_token"]
    eng.fit()
    after = eng.likelihood(batches=1)["nll_bound_nats_per_token"]
    assert torch.isfinite(torch.tensor([before, after])).all()
    assert after < before - 0.1, (before, after)


def test_unknown_task_lists_known_ones():
    with pytest.raises(KeyError, match="unknown task 'nope'.*Known tasks"):
        Engine("nope")


def test_unknown_config_key():
    with pytest.raises(ValueError, match="unknown config key 'lrr'"):
        Engine(ToyTask(), lrr=1)


def test_corrupt_checkpoint_is_reported_and_left_untouched(tmp_path, toy):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(checkpoint.CheckpointError, match="corrupt.*left untouched"):
        Engine(toy, out=tmp_path)
    assert bad.read_bytes() == b"not a checkpoint at all"
    with pytest.raises(FileNotFoundError, match="catdiff run"):
        Engine.from_checkpoint(tmp_path / "missing.pt")


def test_wrong_vocabulary_size(tmp_path, toy):
    Engine(toy, out=tmp_path, steps=2).fit()

    class Bigger(ToyTask):
        vocab_size = 9

    with pytest.raises(checkpoint.CheckpointError, match="vocab_size=7.*vocab_size=9"):
        Engine(Bigger(), out=tmp_path)

    class Liar(ToyTask):
        vocab_size = 5

        def load(self, split):  # data has ids up to 6
            return progressions(32, self.seq_len, 7, 0)

    with pytest.raises(ValueError, match=r"token ids span \[0, 6\].*vocab_size=5"):
        Engine(Liar(), steps=1).fit()


@pytest.mark.parametrize("method", ["catdm", "mdlm", "ar", "d3pm"])
def test_guidance_moves_the_samples_toward_their_label(method):
    """Each class of ToyClassTask is mostly its own token; after brief training the share of sampled
    tokens equal to the label rises with the guidance weight (w = 0, 1, 3), as it cannot when the
    sampler ignores the label or the weight."""
    eng = Engine(ToyClassTask(), method=method, steps=60, seed=0, threads=1).fit()
    labels = torch.arange(96) % ToyClassTask.num_classes
    share = {w: (eng.sample(96, steps=8, guidance=w, labels=labels, seed=0) == labels[:, None]).float().mean().item()
             for w in (0.0, 1.0, 3.0)}
    assert share[0.0] + 0.1 < share[1.0] < share[3.0] - 0.1 and share[3.0] > 0.8, share


def test_labels_for_an_unconditional_task_are_refused(toy):
    with pytest.raises(ValueError, match="unconditional"):
        Engine(toy, steps=1).sample(2, labels=torch.zeros(2, dtype=torch.long))


def test_evaluate_writes_flat_metrics(tmp_path, toy):
    eng = Engine(toy, out=tmp_path, steps=3).fit()
    m = eng.evaluate()
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved.pop("config") == {k: v for k, v in eng.cfg.to_dict().items() if k != "resume"}
    assert saved.keys() == m.keys() and all(isinstance(v, float) for v in saved.values())
    for key in ("nll_bound_bits_per_token", "embedding_participation_ratio", "progression_frac"):
        assert key in saved


def test_core_imports_no_modality_library():
    code = ("import sys, catdiff, catdiff.run.engine, catdiff.cli, catdiff.api.hooks;"
            "catdiff.api.hooks.build_registry(entry_points=[]);"
            "bad = [m for m in ('torchvision', 'sentencepiece', 'sklearn', 'torch_fidelity', 'sacrebleu', 'PIL')"
            " if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_bf16_autocast_training_on_cpu(toy, precision, dtype):
    """precision=bf16 runs the training step's matmuls in bf16 (every Linear's output, seen by a
    forward hook) while the weights stay fp32; fp32 is the control."""
    eng = Engine(toy, steps=3, precision=precision, threads=1)
    seen = set()
    for m in eng.model.modules():
        if isinstance(m, torch.nn.Linear):
            m.register_forward_hook(lambda m, i, out: seen.add((out.dtype, torch.is_autocast_enabled("cpu"))))
    eng.fit()
    assert eng.step == 3
    assert seen == {(dtype, precision == "bf16")}
    assert all(torch.isfinite(p).all() and p.dtype == torch.float32 for p in eng.model.parameters())


def test_cli_sample_and_eval_from_checkpoint(tmp_path, toy, monkeypatch, capsys):
    from catdiff import cli
    from catdiff.api.hooks import Component, registry

    Engine(toy, out=tmp_path / "run", steps=2).fit()
    monkeypatch.setitem(registry().components["tasks"], "toy", Component("tasks", "toy", ToyTask, "tests"))
    ckpt = str(tmp_path / "run" / "last.pt")
    assert cli.main(["sample", ckpt, "--n", "5", "--steps", "2", "--infill", "0:3,11:6", "--out", str(tmp_path / "s")]) == 0
    tokens = torch.load(tmp_path / "s" / "samples.pt")
    assert tokens.shape == (5, 12) and (tokens[:, 0] == 3).all() and (tokens[:, 11] == 6).all()
    assert cli.main(["eval", ckpt, "--n", "4", "--set", "sample_steps=2"]) == 0
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "progression_frac" in saved  # and what eval measured with, not the training's settings
    assert (saved["config"]["sample_steps"], saved["config"]["n_samples"], saved["step"]) == (2, 4, 2.0)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["sample_steps"] != 2
    assert cli.main(["sample", ckpt, "--infill", "99:1"]) == 2
    assert "position 99 outside [0, 11]" in capsys.readouterr().err


class TextSamplesTask(ToyTask):
    name = "toy-text"

    def save_samples(self, tokens, labels, out_dir):
        (out_dir / "samples.txt").write_text("\n".join(" ".join(map(str, t.tolist())) for t in tokens) + "\n")
        (out_dir / "translations.txt").write_text("not returned: listed all the same\n")
        return [out_dir / "samples.txt"]


def test_cli_lists_the_files_it_wrote(tmp_path, monkeypatch, capsys):
    from catdiff import cli
    from catdiff.api.hooks import Component, registry

    monkeypatch.setitem(registry().components["tasks"], "toy-text", Component("tasks", "toy-text", TextSamplesTask, "tests"))
    (tmp_path / "notes.md").write_text("the user's")
    small = ["--set", "n_samples=2", "--set", "sample_steps=2", "--set", "threads=1"]
    assert cli.main(["run", "toy-text", "--out", str(tmp_path), "--steps", "2", *small]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.split("run directory:")[1].splitlines()[1:]]
    assert listed == ["config.json", "last.pt", "metrics.json", "samples.txt", "train_log.csv", "translations.txt"]
    assert cli.main(["sample", str(tmp_path), "--n", "2", "--steps", "2", "--out", str(tmp_path / "s")]) == 0
    assert capsys.readouterr().out.split("wrote ")[1:] == [f"{tmp_path / 's' / n}\n" for n in
                                                          ("samples.pt", "samples.txt", "translations.txt")]
    assert cli.main(["eval", str(tmp_path), "--n", "2", "--set", "sample_steps=2"]) == 0
    wrote = [line.split("/")[-1] for line in capsys.readouterr().out.splitlines() if line.startswith("wrote ")]
    assert wrote == ["metrics.json", "samples.txt", "translations.txt"]


class OptionTask(ToyTask):
    name = "toy-options"
    options = {"data_dir": "", "repeat": 1}

    def load(self, split):
        data = super().load(split)
        return TokenData(data.tokens.repeat(self.option("repeat"), 1))


def test_task_options_are_config_keys_with_types_and_survive_checkpoints(tmp_path):
    eng = Engine(OptionTask(), out=tmp_path, steps=2, repeat="3")
    assert (eng.cfg.data_dir, eng.cfg.repeat) == ("", 3)  # typed as the default
    assert len(eng.data("train")) == 3 * 256
    eng.fit()
    back = Engine.from_checkpoint(tmp_path / "last.pt", task=OptionTask())
    assert back.task.option("repeat") == 3
    with pytest.raises(ValueError, match="unknown config key 'repeats'.*repeat"):
        Engine(OptionTask(), repeats=2)


def test_unknown_method_and_sampler_are_named(toy):
    with pytest.raises(KeyError, match="unknown method 'nope'. Known methods: ar, catdm"):
        Engine(toy, method="nope")
    with pytest.raises(ValueError, match="samplers .*ancestral.*not 'maskgit'"):
        Engine(toy, sampler="maskgit")


def test_self_conditioned_run_trains_checkpoints_and_samples(tmp_path, toy_cond):
    eng = Engine(toy_cond, out=tmp_path, steps=6, self_cond=True, guidance=1.0)
    eng.fit()
    assert eng.model.prev_proj.weight.abs().sum() > 0  # the estimate map left its zero init
    back = Engine.from_checkpoint(tmp_path / "last.pt", task=toy_cond)
    assert back.model.self_cond and same_weights(eng, back)
    torch.testing.assert_close(back.sample(4, steps=3, seed=0), eng.sample(4, steps=3, seed=0))
    assert torch.isfinite(torch.tensor(eng.likelihood(batches=1)["nll_bound_nats_per_token"]))
    with pytest.raises(ValueError, match="config key 'self_cond' is a setting of method 'catdm', which this run "
                                         r"\(method 'maskgit', backbone 'encoder'\) does not use"):
        Engine(toy_cond, self_cond=True, method="maskgit")


class RowSource:
    """A minimal lazy-split source: len() and rows(idx), counting the rows it hands out."""

    def __init__(self, data: TokenData, vocab_size: int):
        self.tokens, self.labels, self.vocab_size = data.tokens.clone(), data.labels, vocab_size
        self.seq_len, self.served = self.tokens.shape[1], 0

    def __len__(self):
        return len(self.tokens)

    def rows(self, idx):
        self.served += len(idx)
        return self.tokens[idx], None if self.labels is None else self.labels[idx]


class LazyToyCond(ToyCondTask):
    def load(self, split):
        self.sources = getattr(self, "sources", {})
        self.sources[split] = self.source = RowSource(super().load(split), self.vocab_size)
        return LazyTokenData(self.source)


def test_lazy_split_trains_like_the_in_memory_one_and_checks_gathered_batches(toy_cond):
    lazy = LazyToyCond()
    eng = Engine(lazy, steps=3)
    assert isinstance(eng.data("train"), LazyTokenData) and eng.data("train").source.tokens.device.type == "cpu"
    eng.fit()
    assert same_weights(Engine(toy_cond, steps=3).fit(), eng)  # same batches, bit for bit
    train = eng.task.sources["train"]
    assert train.served < len(train)  # spot check + 3 batches of 16, never the whole split
    assert torch.isfinite(torch.tensor(eng.likelihood(batches=1)["nll_bound_nats_per_token"]))
    # an out-of-range id the spot check did not see is caught when its batch is gathered
    bad = Engine(LazyToyCond(), steps=2)
    bad.data("train").source.tokens[:, 3] = 9
    with pytest.raises(ValueError, match=r"split 'train': token ids span \[0, 9\].*vocab_size=7"):
        bad.fit()


def test_lazy_split_is_checked_from_its_metadata_and_a_few_rows():
    class Declares(ToyTask):
        def __init__(self, **meta):
            self.meta = meta

        def load(self, split):
            return LazyTokenData(RowSource(super().load(split), 7), **self.meta)

    with pytest.raises(ValueError, match=r"sequences have length 10, the task declares seq_len=12"):
        Engine(Declares(seq_len=10), steps=1).data("train")
    with pytest.raises(ValueError, match=r"declares vocab_size=9 but the task declares vocab_size=7"):
        Engine(Declares(vocab_size=9), steps=1).data("train")

    class Liar(ToyTask):
        vocab_size = 5

        def load(self, split):
            return LazyTokenData(RowSource(progressions(32, self.seq_len, 7, 0), 5))

    with pytest.raises(ValueError, match=r"token ids span \[0, 6\].*vocab_size=5"):
        Engine(Liar(), steps=1).data("train")


def test_token_evidence_run_checkpoints_and_samples(tmp_path, toy_cond):
    eng = Engine(toy_cond, out=tmp_path, steps=6, evidence=True, guidance=1.0)
    eng.fit()
    back = Engine.from_checkpoint(tmp_path / "last.pt", task=toy_cond)
    assert back.model.schedule is not None and same_weights(eng, back)
    torch.testing.assert_close(back.sample(4, steps=3, seed=0), eng.sample(4, steps=3, seed=0))
    assert torch.isfinite(torch.tensor(eng.likelihood(batches=1)["nll_bound_nats_per_token"]))
    with pytest.raises(ValueError, match="config key 'evidence' is a setting of method 'catdm'"):
        Engine(toy_cond, evidence=True, method="d3pm")


def test_a_tasks_defaults_for_another_method_do_not_apply(toy):
    class EvidenceTask(ToyTask):
        defaults = {**ToyTask.defaults, "evidence": False, "mask_temperature": 2.0}

    assert Engine(toy).cfg.evidence and not Engine(EvidenceTask()).cfg.evidence  # catdm's setting, task default
    for method in ("ar", "d3pm", "vqdiffusion"):
        eng = Engine(EvidenceTask(), method=method)
        assert "evidence" not in eng.cfg.options and "mask_temperature" not in eng.cfg.options
        assert type(eng.model) is Denoiser  # the plain network: no evidence, no self-conditioning
    assert Engine(EvidenceTask(), method="maskgit").cfg.mask_temperature == 2.0
    with pytest.raises(ValueError, match="config key 'evidence' is a setting of method 'catdm'"):
        Engine(toy, method="d3pm", evidence=True)  # asked for explicitly


def test_lr_and_warmup_are_derived_from_the_run_size_unless_set(tmp_path):
    class Bare(ToyTask):
        defaults = {}

    cfg = for_task(Bare(), overrides=dict(width=64, heads=4, steps=1300))
    assert cfg.lr == pytest.approx(2e-3) and cfg.warmup == 32  # min(2e-3, 0.2 / 64), 1300 // 40
    cfg = for_task(Bare(), overrides=dict(width=768, heads=4, steps=400_000))
    assert cfg.lr == pytest.approx(0.2 / 768) and cfg.warmup == 2000
    cfg = for_task(Bare(), overrides=dict(lr=1e-3, warmup=0, steps=1300))
    assert (cfg.lr, cfg.warmup) == (1e-3, 0)  # set values are kept, warmup=0 included
    cfg = for_task(Bare(), overrides=dict(width="64", heads=4, steps="1300", lr="auto", warmup="none"))
    assert cfg.lr == pytest.approx(2e-3) and cfg.warmup == 32  # "choose for me" is auto, never a number
    with pytest.raises(UserError, match=r"warmup=-1: must be >= 0, or auto"):
        for_task(Bare(), overrides=dict(warmup=-1))  # no sentinel numbers in what a user sets
    with pytest.raises(UserError, match=r"config width: expected int, got 'auto'"):
        for_task(Bare(), overrides=dict(width="auto"))  # only the keys that may be chosen accept it
    from catdiff.run.config import FALLBACK_LR
    from catdiff.api.hooks import registry

    encoder = registry().get("backbones", "encoder").factory
    rule = encoder.default_lr
    try:  # the rule is the backbone's: without one, lr=auto is the fallback whatever the width
        del encoder.default_lr
        assert for_task(Bare(), overrides=dict(width=64, heads=4)).lr == FALLBACK_LR
    finally:
        encoder.default_lr = rule
    run = tmp_path / "r"
    Engine(Bare(), out=run, width=32, heads=2, layers=1, embed_dim=8, steps=2, batch_size=4).fit()
    saved = json.loads((run / "config.json").read_text())
    assert saved["lr"] == pytest.approx(2e-3) and saved["warmup"] == 0  # the values trained with, not markers


def test_a_long_cpu_run_says_so_after_a_few_steps(toy, monkeypatch, capsys):
    import catdiff.run.training as training

    monkeypatch.setattr(training, "SLOW_RUN_S", 0.0)  # any run is "long": no dependence on the machine's speed
    Engine(toy, steps=2 + training.TIMED_STEPS, threads=1).fit()
    line = [x for x in capsys.readouterr().err.splitlines() if "per step" in x][0]
    assert line.startswith("catdiff: ") and "s per step on the CPU: the remaining 1 steps take about" in line
    assert "a GPU (device=cuda), a smaller model (layers, width) or fewer steps" in line
    monkeypatch.setattr(training, "SLOW_RUN_S", float("inf"))
    Engine(toy, steps=2 + training.TIMED_STEPS, threads=1).fit()
    assert "per step on the CPU" not in capsys.readouterr().err


def test_a_bound_worse_than_uniform_after_training_is_warned(tmp_path, toy, capsys):
    from catdiff.run import evaluation

    eng = Engine(toy, out=tmp_path, steps=2, warmup=1)
    eng.fit()
    capsys.readouterr()
    evaluation.warn_if_worse_than_uniform(eng, 50.0)  # 2 steps: no verdict yet
    assert capsys.readouterr().err == ""
    eng.step = 100
    evaluation.warn_if_worse_than_uniform(eng, math.log2(toy.vocab_size))  # as good as uniform: quiet
    assert capsys.readouterr().err == ""
    evaluation.warn_if_worse_than_uniform(eng, 49.97)
    assert capsys.readouterr().err == (f"catdiff: warning: after 100 steps the likelihood bound is 49.97 bits/token, "
                                       f"worse than a uniform guess ({math.log2(toy.vocab_size):.2f}); check lr "
                                       f"({eng.cfg.lr}) and the data\n")


@pytest.mark.parametrize("edit,says", [
    (lambda c: c.update(colour="blue"), "colour (added)"),
    (lambda c: c.update(width="wide"), "width: 32 -> 'wide'"),
    (lambda c: c.pop("shift"), "shift (removed)"),
])
def test_a_hand_edited_run_record_is_refused_not_overwritten(tmp_path, toy, edit, says):
    opts = dict(steps=2, layers=1, width=32, heads=2, embed_dim=8, threads=1)
    Engine(toy, out=tmp_path, **opts).fit()
    record = json.loads((tmp_path / "config.json").read_text())
    edit(record)
    text = json.dumps(record)
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(UserError, match="config.json was edited") as e:
        Engine(toy, out=tmp_path, **dict(opts, steps=4))
    assert says in str(e.value) and "not an input" in str(e.value)
    assert (tmp_path / "config.json").read_text() == text  # the edit is still there


def test_a_record_differing_in_a_setting_that_may_change_is_named_and_resumes(tmp_path, toy, capsys):
    opts = dict(steps=2, layers=1, width=32, heads=2, embed_dim=8, threads=1)
    Engine(toy, out=tmp_path, **opts).fit()
    record = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(record, lr=0.5)))
    capsys.readouterr()
    eng = Engine(toy, out=tmp_path, **dict(opts, steps=3))
    assert eng.step == 2 and "differs from" in capsys.readouterr().err
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        Engine(toy, out=tmp_path, **dict(opts, steps=3))


def test_collapse_report_of_a_single_test_sequence_warns_nothing(toy):
    import warnings

    from catdiff.nn.diagnostics import collapse_report

    eng = Engine(toy, steps=0)
    x = eng.rows(eng.data("test"), slice(0, 1), "test")[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "degrees of freedom is <= 0" would fail here
        report = collapse_report(eng.ema_eval, eng.method.schedule, x, grid=3)
    assert report["embedding_total_variance"] == 0.0 and len(report["cross_entropy"]) == 3
