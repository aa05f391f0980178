"""Bad inputs through the real CLI (``cli.main``): each gives exit 2, one line naming the
problem and what to provide, no traceback, and leaves the run directory's files as they were."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from catdiff import cli
from catdiff.api.errors import read_text
from catdiff.api.hooks import Component, registry
from catdiff.api.task import TokenData
from catdiff.run.engine import Engine
from toytask import ToyCondTask, ToyTask


class EmptyTask(ToyTask):
    name = "toy-empty"

    def load(self, split):
        return TokenData(torch.zeros(0, self.seq_len, dtype=torch.long))


class OutOfRangeTestTask(ToyTask):
    name = "toy-badtest"

    def load(self, split):
        data = super().load(split)
        if split == "test":
            data.tokens[5, 3] = 11
        return data


class MissingDataTask(ToyTask):
    name = "toy-missing"

    def load(self, split):
        raise FileNotFoundError("toy data /nowhere/toy.txt not found; pass --set data=FILE")


class TextFileTask(ToyTask):
    """Reads its split from a file the test writes (here: not UTF-8)."""
    name = "toy-text"
    options = {"path": ""}

    def load(self, split):
        read_text(self.option("path"), "toy text")
        return super().load(split)


class TermDuringEvalTask(ToyTask):
    name = "toy-term"

    def evaluate(self, tokens, labels, out_dir):
        os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler stopping the job in its final evaluation
        return super().evaluate(tokens, labels, out_dir)


class BuggyTask(ToyTask):
    name = "toy-buggy"

    def evaluate(self, tokens, labels, out_dir):
        return {"n": {}[21]}  # a plugin bug: KeyError 21


TASKS = {t.name: t for t in (ToyTask, ToyCondTask, EmptyTask, OutOfRangeTestTask, MissingDataTask, TextFileTask,
                             BuggyTask, TermDuringEvalTask)}


@pytest.fixture(autouse=True)
def toy_tasks(monkeypatch):
    for name, cls in TASKS.items():
        monkeypatch.setitem(registry().components["tasks"], name, Component("tasks", name, cls, "tests"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A toy run directory (2 steps) and a toy-cond one, made once."""
    root = tmp_path_factory.mktemp("trained")
    Engine(ToyTask(), out=root / "toy", steps=2, threads=1).fit()
    Engine(ToyCondTask(), out=root / "cond", steps=2, threads=1).fit()
    return root


@pytest.fixture
def run(tmp_path, trained):
    """A fresh copy of the toy run directory."""
    shutil.copytree(trained / "toy", tmp_path / "run")
    return tmp_path / "run"


def digest(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != ".catdiff.lock"}


def cli_run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def write(path: Path, content) -> Path:
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


# (case id, argv after `run toy --out RUN`, expected message fragment)
RUN_CASES = [
    ("unknown-key", ["--set", "nosuch=1"], "unknown config key 'nosuch'"),
    ("set-without-equals", ["--set", "lr"], "--set expects key=value"),
    ("int-not-a-number", ["--set", "steps=abc"], "config steps: expected int"),
    ("int-fraction", ["--set", "steps=2.5"], "config steps: expected int, got '2.5'"),
    ("bool", ["--set", "compile=maybe"], "expected true/false"),
    ("batch-size-0", ["--set", "batch_size=0"], "batch_size=0: must be >= 1"),
    ("embed-dim-0", ["--set", "embed_dim=0"], "embed_dim=0: must be >= 1"),
    ("ckpt-every-0", ["--set", "ckpt_every=0"], "ckpt_every=0: must be >= 1"),
    ("log-every-0", ["--set", "log_every=0"], "log_every=0: must be >= 1"),
    ("lr-negative", ["--set", "lr=-1e-3"], "lr=-0.001: must be >= 0"),
    ("lr-nan", ["--set", "lr=nan"], "lr=nan: must be a finite number"),
    ("threads-negative", ["--set", "threads=-1"], "threads=-1: must be >= 0"),
    ("steps-negative", ["--steps", "-5"], "steps=-5: must be >= 0"),
    ("ema-above-1", ["--set", "ema_eval=1.5"], "ema_eval=1.5: must be in [0, 1]"),
    ("final-name", ["--set", "final=mode"], "final='mode': must be argmax | sample"),
    ("sampler-name", ["--set", "sampler=nope"], "not 'nope'"),
    ("precision-name", ["--set", "precision=fp8"], "precision='fp8': must be auto | fp32 | bf16 | fp16"),
    ("device-name", ["--set", "device=gpu"], "device='gpu': must be auto, cpu"),
    ("device-no-cuda", ["--set", "device=cuda"], "CUDA is not available"),
    ("width-heads", ["--set", "heads=4", "--set", "width=30"], "multiple of heads"),
    ("even-conv-kernel", ["--set", "conv_kernel=2"], "must be 0 (off) or odd"),
    ("guidance-unconditional", ["--set", "guidance=2"], "needs a class-conditional task"),
    ("unknown-method", ["--set", "method=nope"], "unknown method 'nope'. Known methods:"),
    ("unknown-backbone", ["--set", "backbone=nope"], "unknown backbone 'nope'"),
    ("resume-other-method", ["--set", "method=maskgit"], "method: 'catdm' -> 'maskgit'"),
    ("resume-other-size", ["--set", "width=64"], "width: 32 -> 64"),
    ("resume-other-objective", ["--set", "objective=csdm"], "--set resume=false"),
    ("task-as-a-setting", ["--set", "task=digits"], "--set task=digits: the task is not a setting; name it as the "
                                                    "command's TASK (`catdiff run digits`)"),
    ("steps-twice", ["--steps", "4", "--set", "steps=5"], "--steps 4 and --set steps=5 disagree; give one"),
    ("set-twice", ["--set", "lr=1e-3", "--set", "lr=2e-3"], "--set lr is given twice ('1e-3', then '2e-3'); give it once"),
]


@pytest.mark.parametrize("argv, message", [c[1:] for c in RUN_CASES], ids=[c[0] for c in RUN_CASES])
def test_bad_run_settings(capsys, run, argv, message):
    before = digest(run)
    code, out, err = cli_run(capsys, "run", "toy", "--out", run, *argv)
    assert code == 2, err
    assert message in err and err.startswith("catdiff: error: ") and "Traceback" not in err, err
    assert digest(run) == before


@pytest.mark.parametrize("name, content, message", [
    ("cfg.yaml", "lr: 1\n", "unknown format '.yaml'; use one of .json, .toml"),
    ("cfg.json", '{"lr": 1e-3,\n "steps": }\n', "cfg.json, line 2 column"),
    ("cfg.toml", "lr = 1e-3\nsteps = = 3\n", "line 2"),
    ("cfg.json", b'{"seed": "\xff"}', "not UTF-8 text: byte 10"),
    ("cfg.json", "[1, 2]", "must hold a table"),
    ("cfg.json", '{"stepz": 3}', "unknown config key 'stepz'"),
    ("cfg.toml", "steps = [1]\n", "config steps: expected int, got list"),
    ("missing.json", None, "config file"),
    ("cfg.toml", 'task = "digits"\n', "config task='digits' does not match the task being run ('toy')"),
], ids=["yaml", "json-syntax", "toml-syntax", "not-utf8", "json-list", "unknown-key", "wrong-type", "missing",
        "another-task"])
def test_bad_config_files(capsys, tmp_path, run, name, content, message):
    path = tmp_path / name if content is None else write(tmp_path / name, content)
    before = digest(run)
    code, _, err = cli_run(capsys, "run", "toy", "--out", run, "--config", path)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert digest(run) == before


def malicious(path: Path, marker: Path) -> Path:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": "catdiff-checkpoint", "version": 1, "payload": Evil()}, path)
    return path


def checkpoint_cases(tmp_path: Path, run: Path) -> dict[str, tuple[Path, str]]:
    real = (run / "last.pt").read_bytes()
    return {
        "missing": (tmp_path / "nope.pt", "does not exist; train one"),
        "random-bytes": (write(tmp_path / "r.pt", os.urandom(4096)), "corrupt or not a torch file"),
        "truncated": (write(tmp_path / "t.pt", real[: len(real) // 2]), "corrupt or not a torch file"),
        "empty": (write(tmp_path / "e.pt", b""), "corrupt or not a torch file"),
        "not-catdiff": (tmp_path / "o.pt", "not a catdiff checkpoint"),
        "future-version": (tmp_path / "v.pt", "checkpoint version 99"),
        "incomplete": (tmp_path / "i.pt", "incomplete catdiff checkpoint (no config"),
        "malicious": (malicious(tmp_path / "m.pt", tmp_path / "MARKER"), "refused to load"),
        "directory-without-ckpt": (tmp_path, f"{tmp_path} is a directory that holds no checkpoint (last.pt) and "
                                              f"no export (model.safetensors); pass a checkpoint file"),
    }


@pytest.mark.parametrize("cmd", ["sample", "eval"])
@pytest.mark.parametrize("case", ["missing", "random-bytes", "truncated", "empty", "not-catdiff", "future-version",
                                  "incomplete", "malicious", "directory-without-ckpt"])
def test_bad_checkpoints(capsys, tmp_path, run, cmd, case):
    torch.save({"a": torch.ones(2)}, tmp_path / "o.pt")
    torch.save({"format": "catdiff-checkpoint", "version": 99}, tmp_path / "v.pt")
    torch.save({"format": "catdiff-checkpoint", "version": 1}, tmp_path / "i.pt")
    path, message = checkpoint_cases(tmp_path, run)[case]
    before = path.read_bytes() if path.is_file() else None
    code, _, err = cli_run(capsys, cmd, path, "--out", tmp_path / "out")
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "MARKER").exists()  # nothing in the pickle ran
    assert not (tmp_path / "out").exists()  # nothing written
    if before is not None:
        assert path.read_bytes() == before


def test_another_tasks_checkpoint_is_refused_for_resuming(capsys, tmp_path, trained):
    shutil.copytree(trained / "cond", tmp_path / "cond")
    before = digest(tmp_path / "cond")
    code, _, err = cli_run(capsys, "run", "toy", "--out", tmp_path / "cond")
    assert code == 2 and "task: 'toy-cond' -> 'toy'" in err and "new --out" in err, err
    assert digest(tmp_path / "cond") == before


SAMPLE_CASES = [
    ("infill-position", ["--infill", "99:1"], "position 99 outside [0, 11]"),
    ("infill-token", ["--infill", "0:9"], "token 9 at position 0 outside the data vocabulary [0, 6]"),
    ("infill-mask-id", ["--infill", "0:7"], "outside the data vocabulary"),  # 7 = [mask], never data
    ("infill-negative", ["--infill", "0:-1"], "outside the data vocabulary"),
    ("infill-syntax", ["--infill", "a:b"], "position:token pairs"),
    ("infill-no-colon", ["--infill", "3"], "position:token pairs"),
    ("infill-and-prompt", ["--infill", "0:1", "--prompt", "x"], "either --infill or --prompt"),
    ("prompt-unsupported", ["--prompt", "abc"], "does not read --prompt"),
    ("n-zero", ["--n", "0"], "--n must be >= 1"),
    ("steps-zero", ["--steps", "0"], "--steps must be >= 1"),
    ("label-unconditional", ["--label", "1"], "has no classes"),
    ("guidance-unconditional", ["--guidance", "1"], "class-conditional"),
    ("bad-set", ["--set", "sample_steps=0"], "sample_steps=0: must be >= 1"),
    ("another-shape", ["--set", "width=64"], "does not match the configured model (size mismatch for "),
    ("steps-and-set", ["--steps", "2", "--set", "sample_steps=5"], "--steps 2 and --set sample_steps=5 disagree"),
    ("seed-and-set", ["--seed", "7", "--set", "seed=5"], "--seed 7 and --set seed=5 disagree"),
    ("n-and-set", ["--n", "3", "--set", "n_samples=4"], "--n 3 and --set n_samples=4 disagree"),
    ("n-set-not-a-number", ["--set", "n_samples=abc"], "config n_samples: expected int, got 'abc'"),
    ("training-setting", ["--set", "lr=1"], "--set lr: a training setting; `catdiff sample` trains nothing"),
    ("another-method", ["--set", "method=mdlm"], "--set method: the checkpoint's method is the one its weights"),
    ("infill-twice", ["--infill", "0:1,0:2"], "--infill position 0 is given twice (1, then 2); give it once"),
]


@pytest.mark.parametrize("argv, message", [c[1:] for c in SAMPLE_CASES], ids=[c[0] for c in SAMPLE_CASES])
def test_bad_sample_arguments(capsys, tmp_path, run, argv, message):
    before = digest(run)
    code, _, err = cli_run(capsys, "sample", run / "last.pt", "--out", tmp_path / "s", *argv)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err  # one line, no warning before it, no torch dump
    assert not (tmp_path / "s").exists() and digest(run) == before
    if "width=64" in argv:
        assert err.strip().endswith("more); drop --set width=64: the model's shape is the checkpoint's"), err


def test_a_value_starting_with_a_dash_gets_the_equals_hint(capsys, run):
    with pytest.raises(SystemExit) as e:
        cli.main(["sample", str(run / "last.pt"), "--infill", "-1:3"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "expected one argument (a value that starts with '-' is written with '=', " \
        "e.g. --infill=-1:3)" in err and "Traceback" not in err


def test_too_few_samples_for_fid_are_refused_before_training(capsys, tmp_path):
    pytest.importorskip("sklearn")
    code, _, err = cli_run(capsys, "run", "digits", "--out", tmp_path / "r", "--set", "n_samples=1", "--steps", "5")
    assert code == 2 and "n_samples must be >= 2 for task 'digits' (its metrics need 2), got 1" in err
    assert not (tmp_path / "r" / "last.pt").exists()  # nothing trained


def test_sigterm_in_the_final_evaluation_says_so_and_releases_the_run(capsys, tmp_path):
    def default(signum, frame):  # stands for the default action (ending pytest) had catdiff not caught it
        raise RuntimeError("SIGTERM reached the handler catdiff found")

    inherited = signal.signal(signal.SIGTERM, default)
    try:
        code, _, err = cli_run(capsys, "run", "toy-term", "--out", tmp_path / "r", "--steps", "2", "--set", "threads=1")
        assert signal.getsignal(signal.SIGTERM) is default  # put back
    finally:
        signal.signal(signal.SIGTERM, inherited)
    assert code == 143 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "catdiff: stopped by SIGTERM during the final evaluation; the checkpoint and the files written before it "
        "are complete (`catdiff eval` evaluates the checkpoint again)")
    assert (tmp_path / "r" / "last.pt").exists() and not (tmp_path / "r" / ".catdiff.lock").exists()


def test_label_outside_the_classes(capsys, tmp_path, trained):
    code, _, err = cli_run(capsys, "sample", trained / "cond" / "last.pt", "--label", "3", "--out", tmp_path / "s")
    assert code == 2 and "has classes 0..2" in err


def test_eval_n_zero(capsys, run):
    before = digest(run)
    code, _, err = cli_run(capsys, "eval", run / "last.pt", "--n", "0")
    assert code == 2 and "--n must be >= 1" in err and digest(run) == before


@pytest.mark.parametrize("task, message", [
    ("toy-empty", "split 'train' is empty"),
    ("toy-badtest", "split 'test': token ids span [0, 11]"),
    ("toy-missing", "toy data /nowhere/toy.txt not found; pass --set data=FILE"),
    ("no-such-task", "unknown task 'no-such-task'. Known tasks:"),
])
def test_bad_data_fails_before_anything_is_written(capsys, tmp_path, task, message):
    code, _, err = cli_run(capsys, "run", task, "--out", tmp_path / "r")
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "r").exists()  # not even an empty run directory


def test_non_utf8_data_names_the_file_and_byte(capsys, tmp_path):
    data = write(tmp_path / "latin1.txt", "caf\xe9 au lait".encode("latin-1"))
    code, _, err = cli_run(capsys, "run", "toy-text", "--out", tmp_path / "r", "--set", f"path={data}")
    assert code == 2 and f"toy text {data} is not UTF-8 text: byte 3 is b'\\xe9'" in err, err


def test_output_path_is_a_file(capsys, tmp_path):
    write(tmp_path / "file", "mine")
    code, _, err = cli_run(capsys, "run", "toy", "--out", tmp_path / "file")
    assert code == 2 and "cannot use run directory" in err and "Traceback" not in err, err
    assert (tmp_path / "file").read_text() == "mine"


def mount_tmpfs(target: Path, *options: str) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(("size=8m",) + options), "tmpfs", str(target)],
                         capture_output=True)
    return res.returncode == 0


def test_read_only_output_directory(capsys, tmp_path, trained):
    ro = tmp_path / "ro"
    ro.mkdir()
    if not mount_tmpfs(ro):
        pytest.skip("needs root and mount to make a read-only file system")
    try:
        shutil.copytree(trained / "toy", ro / "run")
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        before = digest(ro / "run")
        code, _, err = cli_run(capsys, "run", "toy", "--out", ro / "run", "--steps", "4")
        assert code == 2 and "Read-only file system" in err and "Traceback" not in err, err
        assert digest(ro / "run") == before
        code, _, err = cli_run(capsys, "eval", ro / "run" / "last.pt", "--n", "2")  # refused before the work
        assert code == 2 and f"cannot write metrics.json into {ro / 'run'}: {ro / 'run'} is not writable" in err, err
    finally:
        subprocess.run(["umount", str(ro)])


def test_plugin_bug_shows_its_traceback_and_origin(capsys, tmp_path):
    code, _, err = cli_run(capsys, "run", "toy-buggy", "--out", tmp_path / "r", "--steps", "1")
    assert code == 1
    assert "Traceback" in err and "KeyError: 21" in err
    assert "This is a bug" in err and "test_bad_inputs.py" in err  # where it came from
    assert (tmp_path / "r" / "last.pt").exists()  # the training before the bug is kept


def test_out_of_device_memory_is_one_line_and_keeps_the_checkpoint(capsys, tmp_path, monkeypatch):
    from catdiff.run import training

    real = training.train_step

    def step(parts, state, ddp, feed, log):
        if state.step == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
                                         "capacity of 79.3 GiB of which 1.2 GiB is free.\nIf reserved ...")
        return real(parts, state, ddp, feed, log)

    monkeypatch.setattr(training, "train_step", step)
    code, _, err = cli_run(capsys, "run", "toy", "--out", tmp_path / "r", "--steps", "6", "--set", "ckpt_every=2")
    assert code == 2 and "Traceback" not in err and [line for line in err.splitlines() if "catdiff" in line] == [
        err.splitlines()[-1]], err
    assert "catdiff: error: CUDA out of memory: " in err and "lower batch_size" in err, err
    assert torch.load(tmp_path / "r" / "last.pt", weights_only=False)["step"] == 2


def test_debug_shows_tracebacks_of_user_errors(capsys, run, monkeypatch):
    code, _, err = cli_run(capsys, "--debug", "run", "toy", "--out", run, "--set", "lr=-1")
    assert code == 2 and "Traceback" in err and "lr=-1.0: must be >= 0" in err
    monkeypatch.setenv("CATDIFF_DEBUG", "1")
    code, _, err = cli_run(capsys, "run", "toy", "--out", run, "--set", "lr=-1")
    assert code == 2 and "Traceback" in err


def test_resume_prints_changed_settings_once_and_stores_them(capsys, run):
    code, out, err = cli_run(capsys, "run", "toy", "--out", run, "--steps", "4", "--set", "lr=2e-3")
    assert code == 0, err
    assert err.count("changed settings") == 1 and "steps: 2 -> 4" in err and "lr: 0.001 -> 0.002" in err
    saved = json.loads((run / "config.json").read_text())
    assert saved["steps"] == 4 and saved["lr"] == 2e-3
    assert torch.load(run / "last.pt", weights_only=True)["config"]["lr"] == 2e-3


def test_a_resume_at_or_past_its_steps_says_there_is_nothing_to_train(capsys, run):
    code, _, err = cli_run(capsys, "run", "toy", "--out", run, "--steps", "2")  # the run fixture trained 2 steps
    assert code == 0 and "catdiff: the run is already at steps=2 (step 2): nothing to train" in err, err
    code, _, err = cli_run(capsys, "run", "toy", "--out", run, "--steps", "1")
    assert code == 0 and "catdiff: the run is already past steps=1 (step 2): nothing to train" in err, err
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 2


def test_resume_false_moves_the_old_run_aside(capsys, run):
    before = digest(run)
    code, _, err = cli_run(capsys, "run", "toy", "--out", run, "--set", "method=maskgit", "--set", "resume=false")
    assert code == 0, err
    (old,) = run.glob("previous-*")
    assert digest(old) == before  # every file of the old run, byte for byte
    assert torch.load(run / "last.pt", weights_only=True)["config"]["method"] == "maskgit"


def test_divergence_before_the_first_checkpoint_says_none_was_written(capsys, tmp_path, monkeypatch):
    from catdiff.run import training

    real = training.train_step
    monkeypatch.setattr(training, "train_step", lambda parts, state, *a: real(parts, state, *a) & (state.step < 2))
    code, _, err = cli_run(capsys, "run", "toy", "--out", tmp_path / "r", "--steps", "6", "--set", "ckpt_every=5",
                           "--set", "log_every=1")
    assert code == 2 and "Traceback" not in err and [l for l in err.splitlines() if "catdiff" in l] == [
        err.splitlines()[-1]], err
    assert "training diverged" in err and "no checkpoint was written yet" in err and "last.pt" not in err, err
    assert "Lower lr" in err and not (tmp_path / "r" / "last.pt").exists()


def test_checkpoints_and_exports_record_their_plugins(capsys, tmp_path):
    code, _, err = cli_run(capsys, "run", "toy", "--out", tmp_path / "r", "--steps", "1", "--set", "n_samples=2")
    assert code == 0, err
    assert torch.load(tmp_path / "r" / "last.pt", weights_only=True)["plugins"] == {
        "tasks": "tests", "methods": "catdiff", "backbones": "catdiff"}
    assert cli_run(capsys, "export", tmp_path / "r", tmp_path / "x")[0] == 0
    assert json.loads((tmp_path / "x" / "config.json").read_text())["plugins"]["tasks"] == "tests"


@pytest.mark.parametrize("edit, message", [
    (dict(task="stripes", plugins={"tasks": "catdiff-stripes 0.1"}),
     "was written with task 'stripes' (plugin catdiff-stripes 0.1), which is not installed: pip install catdiff-stripes"),
    (dict(method="hot-catdm", plugins={"methods": "catdiff-hot 2.0"}),
     "was written with method 'hot-catdm' (plugin catdiff-hot 2.0), which is not installed: pip install catdiff-hot"),
    (dict(task="stripes", plugins=None),  # written before checkpoints recorded their plugins
     "was written with task 'stripes', which no installed plugin provides (installed tasks: "),
    (dict(task="fashion-stripes", plugins={"tasks": "catdiff-vision 9.0"}),  # installed, but not that task
     "was written with task 'fashion-stripes' (plugin catdiff-vision 9.0), which the installed catdiff-vision "),
], ids=["task", "method", "old-checkpoint", "installed-without-it"])
@pytest.mark.parametrize("cmd", ["sample", "eval"])
def test_a_checkpoint_of_a_plugin_not_installed_names_it(capsys, tmp_path, run, cmd, edit, message):
    payload = torch.load(run / "last.pt", weights_only=True)
    payload["config"].update({k: v for k, v in edit.items() if k != "plugins"})
    payload.pop("plugins", None)
    if edit["plugins"]:
        payload["plugins"] = edit["plugins"]
    torch.save(payload, tmp_path / "other.pt")
    before = digest(tmp_path)
    code, _, err = cli_run(capsys, cmd, tmp_path / "other.pt", "--out", tmp_path / "out")
    assert code == 2 and "Traceback" not in err and err.splitlines() == [
        f"catdiff: error: checkpoint {tmp_path / 'other.pt'} {message}" + err.split(message)[-1].rstrip("\n")], err
    assert digest(tmp_path) == before and not (tmp_path / "out").exists()


def test_a_checkpoint_of_a_broken_plugin_says_it_failed_to_load(capsys, tmp_path, run, monkeypatch):
    payload = torch.load(run / "last.pt", weights_only=True)
    payload["config"]["task"], payload["plugins"] = "stripes", {"tasks": "catdiff-stripes 0.1"}
    torch.save(payload, tmp_path / "other.pt")
    monkeypatch.setitem(registry().failed, "stripes", "ImportError: no libfoo (from catdiff-stripes 0.1)")
    code, _, err = cli_run(capsys, "sample", tmp_path / "other.pt", "--out", tmp_path / "out")
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 2, err
    assert err.startswith("catdiff: warning: plugin stripes failed to load")
    assert "task 'stripes' (plugin catdiff-stripes 0.1), which failed to load (see its warning" in err


def _no_work(*args, **kwargs):
    raise AssertionError("the checkpoint was loaded: the output check must come before the work")


@pytest.mark.parametrize("cmd, what", [("sample", "samples"), ("eval", "metrics.json")])
def test_an_output_under_a_file_is_refused_before_the_work(capsys, tmp_path, run, monkeypatch, cmd, what):
    write(tmp_path / "file", "mine")
    monkeypatch.setattr(Engine, "load", _no_work)
    code, _, err = cli_run(capsys, cmd, run, "--out", tmp_path / "file" / "out")
    assert code == 2 and "Traceback" not in err and err.splitlines() == [
        f"catdiff: error: cannot write {what} into {tmp_path / 'file' / 'out'}: {tmp_path / 'file'} is a file, "
        f"not a directory; pass another --out"], err
    assert (tmp_path / "file").read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0o500 directory")
@pytest.mark.parametrize("cmd, what", [("sample", "samples"), ("eval", "metrics.json")])
def test_an_unwritable_output_directory_is_refused_before_the_work(capsys, tmp_path, run, monkeypatch, cmd, what):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    monkeypatch.setattr(Engine, "load", _no_work)
    try:
        code, _, err = cli_run(capsys, cmd, run, "--out", locked / "out")
    finally:
        locked.chmod(0o700)
    assert code == 2 and "Traceback" not in err and err.splitlines() == [
        f"catdiff: error: cannot write {what} into {locked / 'out'}: {locked} is not writable; "
        f"pass a writable --out directory"], err
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["config"].update(width="wide"), "config.json stores a config this catdiff does not accept: config width"),
    (lambda m: m.update(colour="blue"), "config.json has keys a catdiff export does not hold: colour"),
], ids=["bad-value", "unknown-top-level-key"])
def test_an_edited_export_config_names_the_file(capsys, tmp_path, run, edit, message):
    assert cli_run(capsys, "export", run, tmp_path / "x")[0] == 0
    meta = json.loads((tmp_path / "x" / "config.json").read_text())
    edit(meta)
    (tmp_path / "x" / "config.json").write_text(json.dumps(meta))
    code, _, err = cli_run(capsys, "sample", tmp_path / "x", "--out", tmp_path / "s")
    assert code == 2 and "Traceback" not in err and message in err, err
    assert str(tmp_path / "x" / "config.json") in err


def test_an_unknown_key_stored_in_a_checkpoint_is_said_to_come_from_it(capsys, tmp_path, run):
    payload = torch.load(run / "last.pt", weights_only=True)
    payload["config"]["colour"] = "blue"
    torch.save(payload, tmp_path / "other.pt")
    code, _, err = cli_run(capsys, "sample", tmp_path / "other.pt", "--out", tmp_path / "s")
    assert code == 2 and "Traceback" not in err
    assert f"checkpoint {tmp_path / 'other.pt'} stores a config this catdiff does not accept: unknown config key " \
           f"'colour'" in err, err


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_an_export_into_a_run_directory_is_refused(capsys, tmp_path, run, force):
    before = digest(run)
    code, _, err = cli_run(capsys, "export", run / "last.pt", run, *force)
    assert code == 2 and f"{run} is a run directory (its last.pt or config.json would be overwritten)" in err, err
    assert digest(run) == before
    records = tmp_path / "records"  # a config.json that is not an export's, without a last.pt
    records.mkdir()
    (records / "config.json").write_text('{"steps": 3}')
    code, _, err = cli_run(capsys, "export", run / "last.pt", records, *force)
    assert code == 2 and "is a run directory" in err and (records / "config.json").read_text() == '{"steps": 3}'
    assert cli_run(capsys, "export", run / "last.pt", tmp_path / "exp")[0] == 0  # an export may be replaced with --force
    assert cli_run(capsys, "export", run / "last.pt", tmp_path / "exp", "--force")[0] == 0


def test_a_long_reason_is_cut_at_a_word_with_its_first_line_only():
    from catdiff.run.checkpoint import _short

    reason = "PytorchStreamReader failed reading zip archive: failed finding central directory " * 5 + "\nsecond"
    short = _short(reason)
    assert short.endswith(" ...") and len(short) <= 204 and "second" not in short
    assert reason.startswith(short[:-4]) and reason[len(short) - 4] == " "  # cut before a space, not mid-word
    assert _short("one line") == "one line"


def test_sampling_a_run_whose_config_json_was_edited_says_which_config_is_used(capsys, tmp_path, run):
    record = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**record, "sample_steps": 7}))
    code, _, err = cli_run(capsys, "sample", run, "--n", "2", "--out", tmp_path / "s")
    assert code == 0 and f"differs from {run / 'last.pt'} in sample_steps; {run / 'last.pt'}'s config is used" in err
    (run / "config.json").write_text("{bad")
    code, _, err = cli_run(capsys, "sample", run / "last.pt", "--n", "2", "--out", tmp_path / "t")
    assert code == 0 and "config.json is not a config record" in err
    (run / "config.json").write_text(json.dumps(record))
    code, _, err = cli_run(capsys, "sample", run, "--n", "2", "--out", tmp_path / "u")
    assert code == 0 and "warning" not in err


def test_sample_takes_its_count_from_set_n_samples_and_a_matching_flag(capsys, tmp_path, run):
    code, _, err = cli_run(capsys, "sample", run, "--set", "n_samples=3", "--steps", "2", "--set", "sample_steps=2",
                           "--guidance", "0", "--out", tmp_path / "s")
    assert code == 0, err
    assert torch.load(tmp_path / "s" / "samples.pt").shape[0] == 3


@pytest.mark.parametrize("cmd", ["sample", "eval"])
def test_an_output_holding_another_run_is_refused(capsys, tmp_path, run, trained, cmd):
    other = tmp_path / "other"
    shutil.copytree(trained / "cond", other)
    before = digest(other)
    code, _, err = cli_run(capsys, cmd, run, "--out", other, "--n", "2")
    assert code == 2 and f"--out {other} holds another run (last.pt)" in err and "Traceback" not in err, err
    assert digest(other) == before


@pytest.mark.parametrize("cmd", [["run", "toy", "--out"], ["sample", "RUN", "--out"], ["eval", "RUN", "--out"],
                                 ["export", "RUN"]])
def test_an_empty_output_path_is_an_argument_error(capsys, run, cmd):
    with pytest.raises(SystemExit) as e:
        cli.main([str(run) if a == "RUN" else a for a in cmd] + [""])
    assert e.value.code == 2 and "expected a directory, got an empty string" in capsys.readouterr().err


def test_an_export_into_a_file_says_it_is_a_file(capsys, tmp_path, run):
    target = write(tmp_path / "notes.txt", "the user's")
    code, _, err = cli_run(capsys, "export", run, target)
    assert code == 2 and err.strip() == (f"catdiff: error: cannot write the export into {target}: {target} is a file, "
                                         f"not a directory; pass another DIR"), err
    assert target.read_text() == "the user's"


def test_a_run_into_an_export_is_refused_and_the_export_kept(capsys, tmp_path, run):
    assert cli_run(capsys, "export", run, tmp_path / "exp")[0] == 0
    before = digest(tmp_path / "exp")
    code, _, err = cli_run(capsys, "run", "toy", "--out", tmp_path / "exp", "--steps", "1")
    assert code == 2 and "holds a catdiff export (model.safetensors)" in err, err
    assert digest(tmp_path / "exp") == before


def test_a_run_moves_aside_the_run_files_of_a_directory_without_a_checkpoint(capsys, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    write(out / "config.json", '{"lr": 0.1}')  # the user's own config file, meant for --config
    write(out / "notes.md", "kept in place")
    code, _, err = cli_run(capsys, "run", "toy", "--out", out, "--steps", "1", "--set", "n_samples=2",
                           "--set", "sample_steps=2", "--set", "threads=1")
    assert code == 0, err
    assert "no last.pt here: moved the files a run would overwrite to" in err
    (aside,) = out.glob("previous-*")
    assert (aside / "config.json").read_text() == '{"lr": 0.1}' and (out / "notes.md").read_text() == "kept in place"
