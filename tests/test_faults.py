"""Faults during a run: signals mid-training and mid-write, two runs on one directory, a full
disk, killed writes, a stalled DDP peer. Each must lose no work and resume bit-identically."""
import csv
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from catdiff.run import checkpoint

from catdiff import cli
from catdiff.api.errors import Aborted, TrainingInterrupted, UserError
from catdiff.api.hooks import Component, registry
from catdiff.run.engine import Engine
from catdiff.run.runlock import RunLock
from catdiff.run.trainlog import CSVLog
from test_bad_inputs import mount_tmpfs
from test_engine import same_weights
from toytask import ToyTask

TOYCLI = str(Path(__file__).with_name("toycli.py"))
ENV = dict(os.environ, OMP_NUM_THREADS="1")
RUN = ["--set", "threads=1", "--set", "ckpt_every=100000", "--set", "n_samples=4", "--set", "sample_steps=2"]


def toycli(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, TOYCLI, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, **kw)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.05)


def weights(path: Path) -> dict:
    payload = torch.load(path, weights_only=True)
    return {**{f"model.{k}": v for k, v in payload["model"].items()},
            **{f"ema.{k}": v for k, v in payload["ema_eval"].items()}, "step": payload["step"]}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)


def test_sigterm_mid_training_checkpoints_and_resumes_bit_identically(tmp_path):
    steps = 600
    full = toycli("run", "toy", "--out", tmp_path / "full", "--steps", steps, *RUN)
    cut = toycli("run", "toy", "--out", tmp_path / "cut", "--steps", steps, *RUN)
    wait_for(tmp_path / "cut" / "train_log.csv", cut)  # training has started
    cut.send_signal(signal.SIGTERM)
    _, err = cut.communicate(timeout=120)
    assert cut.returncode == 143, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("catdiff: interrupted by SIGTERM at step ") and "rerun the same command to resume" in line
    stopped = int(line.split("at step ")[1].split(";")[0])
    assert not (tmp_path / "cut" / ".catdiff.lock").exists()  # an interrupted run removes its lock too
    assert 0 < stopped < steps and torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["step"] == stopped
    resumed = toycli("run", "toy", "--out", tmp_path / "cut", "--steps", steps, *RUN)
    assert resumed.wait(timeout=300) == 0 and full.wait(timeout=300) == 0, resumed.communicate()
    assert same(weights(tmp_path / "cut" / "last.pt"), weights(tmp_path / "full" / "last.pt"))


def sigint_set_to(handler):
    """SIGINT's handler set to ``handler`` for one test, then put back as it was: the suite may be
    started with SIGINT ignored (a background job of a script, some CI runners) or handled."""
    old = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


@pytest.fixture
def sigint_handled():
    yield from sigint_set_to(signal.default_int_handler)


@pytest.fixture
def sigint_ignored():
    yield from sigint_set_to(signal.SIG_IGN)


def signal_during_write(monkeypatch, engine: Engine, at_step: int, signum: int, times: int):
    """Send ``signum`` to this process from inside the checkpoint writes made at ``at_step``
    (after serialising, before the bytes reach the disk): the worst moment. ``times`` signals."""
    real = checkpoint.write_atomic
    sent = []

    def write(data, path, what="file"):
        if what == "checkpoint" and engine.step == at_step and len(sent) < times:
            sent.append(signum)
            os.kill(os.getpid(), signum)
        return real(data, path, what)

    monkeypatch.setattr(checkpoint, "write_atomic", write)
    return sent


def test_signal_mid_write_finishes_the_write_then_stops(tmp_path, toy, monkeypatch, sigint_handled):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    full = Engine(toy, steps=20, threads=1).fit()
    eng = Engine(toy, out=tmp_path, steps=20, ckpt_every=5, threads=1)
    signal_during_write(monkeypatch, eng, at_step=10, signum=signal.SIGINT, times=1)
    with pytest.raises(TrainingInterrupted) as info:
        eng.fit()
    assert info.value.step == 11 and info.value.checkpoint == tmp_path / "last.pt"  # one more step, then saved
    assert checkpoint.load(tmp_path / "last.pt")["step"] == 11 and not list(tmp_path.glob("*.tmp"))
    monkeypatch.undo()
    resumed = Engine(toy, out=tmp_path, steps=20, threads=1).fit()
    assert same_weights(full, resumed)
    assert {s: signal.getsignal(s) for s in before} == before  # handlers restored as they were


def test_with_sigint_ignored_sigterm_still_saves_and_sigint_stays_ignored(tmp_path, toy, monkeypatch, sigint_ignored):
    term = signal.getsignal(signal.SIGTERM)
    eng = Engine(toy, out=tmp_path, steps=8, ckpt_every=4, threads=1)
    real = eng.method.loss

    def signals_at(*args):
        if eng.step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # ignored: training goes on
        if eng.step == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args)

    monkeypatch.setattr(eng.method, "loss", signals_at)
    with pytest.raises(TrainingInterrupted) as info:
        eng.fit()
    assert info.value.signum == signal.SIGTERM and info.value.step == 6
    assert checkpoint.load(tmp_path / "last.pt")["step"] == 6
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is term


def test_second_signal_aborts_at_once_and_keeps_the_previous_checkpoint(tmp_path, toy, monkeypatch):
    full = Engine(toy, steps=20, threads=1).fit()
    eng = Engine(toy, out=tmp_path, steps=20, ckpt_every=4, threads=1)
    real = eng.method.loss

    def first_sigterm_at_6(*args):
        if eng.step == 6:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args)

    monkeypatch.setattr(eng.method, "loss", first_sigterm_at_6)
    signal_during_write(monkeypatch, eng, at_step=7, signum=signal.SIGTERM, times=1)  # the second, mid-write
    with pytest.raises(Aborted):
        eng.fit()
    assert checkpoint.load(tmp_path / "last.pt")["step"] == 4 and not list(tmp_path.glob("*.tmp"))
    monkeypatch.undo()
    resumed = Engine(toy, out=tmp_path, steps=20, threads=1).fit()
    assert same_weights(full, resumed)


def test_two_runs_on_one_directory_and_a_dead_holders_lock(tmp_path, toy, monkeypatch, capsys):
    monkeypatch.setitem(registry().components["tasks"], "toy", Component("tasks", "toy", ToyTask, "tests"))
    Engine(toy, out=tmp_path, steps=2, threads=1).fit()
    first = toycli("run", "toy", "--out", tmp_path, "--steps", 10**6, *RUN)  # resumes, then trains on
    try:
        lock = tmp_path / ".catdiff.lock"
        while f'"pid": {first.pid},' not in (lock.read_text() if lock.exists() else ""):
            assert first.poll() is None, first.communicate()
            time.sleep(0.05)
        before = (tmp_path / "last.pt").read_bytes()
        code = cli.main(["run", "toy", "--out", str(tmp_path), "--steps", "3"])
        err = capsys.readouterr().err
        assert code == 2 and f"in use by another catdiff run (pid {first.pid} on " in err, err
        assert "another --out" in err and (tmp_path / "last.pt").read_bytes() == before
        assert cli.main(["sample", str(tmp_path / "last.pt"), "--n", "2", "--steps", "2",
                         "--out", str(tmp_path / "s")]) == 0  # readers take no lock
    finally:
        first.kill()  # kill -9 leaves its lock file behind
        first.wait()
    assert (tmp_path / ".catdiff.lock").exists()
    assert cli.main(["run", "toy", "--out", str(tmp_path), "--steps", "3", "--set", "n_samples=2",
                     "--set", "sample_steps=2"]) == 0  # the dead holder's lock is taken over
    assert not (tmp_path / ".catdiff.lock").exists()  # and removed when the run ends


def test_a_finished_or_failed_run_removes_its_lock_and_a_removed_lock_is_not_shared(tmp_path, monkeypatch):
    monkeypatch.setitem(registry().components["tasks"], "toy", Component("tasks", "toy", ToyTask, "tests"))
    assert cli.main(["run", "toy", "--out", str(tmp_path), "--steps", "2", *RUN]) == 0
    assert (tmp_path / "last.pt").exists() and not (tmp_path / ".catdiff.lock").exists()
    def bad_data(self, split):
        raise UserError("bad data")

    monkeypatch.setattr(ToyTask, "load", bad_data)  # fails inside the lock
    assert cli.main(["run", "toy", "--out", str(tmp_path), "--steps", "3", *RUN]) == 2
    assert not (tmp_path / ".catdiff.lock").exists()
    # a run that opened the lock file just before its holder removed it locks a file no one
    # else sees: it must take the lock on the file now at that path instead
    first, second = RunLock(tmp_path), RunLock(tmp_path)
    real_open = os.open

    def open_then_holder_ends(path, *a):
        fd = real_open(path, *a)
        if first._fd is not None:
            first.__exit__(None, None, None)
        return fd

    with first:
        monkeypatch.setattr(os, "open", open_then_holder_ends)
        with second:
            monkeypatch.undo()
            assert os.fstat(second._fd).st_ino == os.stat(tmp_path / ".catdiff.lock").st_ino
            with pytest.raises(UserError, match="in use by another catdiff run"):
                RunLock(tmp_path).__enter__()
    assert not (tmp_path / ".catdiff.lock").exists()


def test_stale_temp_files_of_killed_writes_are_removed(tmp_path, toy):
    Engine(toy, out=tmp_path, steps=2, threads=1).fit()
    stale = [tmp_path / "last.pt.abc123.tmp", tmp_path / "config.json.x1.tmp"]
    for p in stale:
        p.write_bytes(b"half a checkpoint")
    (tmp_path / "notes.tmp").write_text("the user's")
    Engine(toy, out=tmp_path, steps=3, threads=1).fit()
    assert not any(p.exists() for p in stale) and (tmp_path / "notes.tmp").exists()


def test_disk_full_keeps_the_previous_checkpoint(tmp_path, toy, capsys, monkeypatch):
    size = len(Path(Engine(toy, out=tmp_path / "probe", steps=1, threads=1).fit().out / "last.pt").read_bytes())
    disk = tmp_path / "disk"
    disk.mkdir()
    if not mount_tmpfs(disk, f"size={size + size // 2 + 65536}"):
        pytest.skip("needs root and mount for a small tmpfs")
    try:
        eng = Engine(toy, out=disk, steps=10, ckpt_every=2, threads=1)
        with pytest.raises(UserError) as info:
            eng.fit()  # the step-2 checkpoint fits, the step-4 one does not
        msg = str(info.value)
        assert "cannot write checkpoint" in msg and "No space left on device" in msg, msg
        assert f"the previous checkpoint {disk / 'last.pt'} is intact" in msg
        assert checkpoint.load(disk / "last.pt")["step"] == 2 and not list(disk.glob("*.tmp"))
    finally:
        subprocess.run(["umount", str(disk)])


def test_injected_enospc_through_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(registry().components["tasks"], "toy", Component("tasks", "toy", ToyTask, "tests"))
    assert cli.main(["run", "toy", "--out", str(tmp_path), "--steps", "2", *RUN]) == 0
    before = (tmp_path / "last.pt").read_bytes()
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    capsys.readouterr()
    code = cli.main(["run", "toy", "--out", str(tmp_path), "--steps", "4", *RUN])
    err = capsys.readouterr().err
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert code == 2 and "No space left on device" in err and "is intact" in err and "Traceback" not in err, err
    assert (tmp_path / "last.pt").read_bytes() == before and not list(tmp_path.glob("*.tmp"))


def test_a_full_disk_under_the_train_log_names_it(tmp_path):
    log = CSVLog(tmp_path / "train_log.csv")
    log.write({"step": 1, "loss": 2.0})

    class Full:
        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        flush = close = lambda self: None

    log.file, log.writer = Full(), csv.DictWriter(Full(), fieldnames=["step", "loss"])
    with pytest.raises(OSError) as e:
        log.write({"step": 2, "loss": 1.0})
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "train_log.csv")
    assert (tmp_path / "train_log.csv").read_text().splitlines() == ["step,loss", "1,2.0"]


class FailingRender(ToyTask):
    name = "toy-render"

    def save_samples(self, tokens, labels, out_dir):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out_dir / "samples.png"))


def test_a_failing_image_write_loses_no_metrics(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(registry().components["tasks"], "toy-render",
                        Component("tasks", "toy-render", FailingRender, "tests"))
    code = cli.main(["run", "toy-render", "--out", str(tmp_path), "--steps", "2", *RUN])
    out, err = capsys.readouterr()
    assert code == 2 and "samples.png: No space left on device" in err and "Traceback" not in err
    assert "progression_frac" in (tmp_path / "metrics.json").read_text() and "progression_frac" in out


STALL = '''
import os, signal, sys
sys.path.insert(0, {tests!r})
from toytask import ToyTask
from catdiff.api.errors import UserError
from catdiff.run.engine import Engine
eng = Engine(ToyTask(), steps=10_000, batch_size=8, threads=1, dist_timeout={timeout})
real = eng.method.loss
def loss(*a):
    if eng.rank == 1 and eng.step == 3:
        os.kill(os.getpid(), signal.SIGSTOP)  # a stalled peer
    return real(*a)
eng.method.loss = loss
try:
    eng.fit()
except UserError as e:
    print(f"catdiff: error: {{e}}", file=sys.stderr)
    sys.exit(2)
'''


def start_ranks(tmp_path, script_text: str, port_offset: int = 0) -> list[subprocess.Popen]:
    """Two ranks of ``script_text`` on this machine (gloo over localhost)."""
    script = tmp_path / "ranks.py"
    script.write_text(script_text)
    port = 29500 + (os.getpid() + port_offset) % 1000
    env = dict(ENV, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2")
    return [subprocess.Popen([sys.executable, str(script)], env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                             stderr=subprocess.PIPE, text=True) for r in (0, 1)]


def test_a_stalled_ddp_peer_ends_the_others_within_the_timeout(tmp_path):
    ranks = start_ranks(tmp_path, STALL.format(tests=str(Path(__file__).parent), timeout=3))
    try:
        _, err = ranks[0].communicate(timeout=120)
        assert ranks[0].returncode == 2, err
        assert "rank 0: rank 1 (silent for " in err and "stopped answering (stopped, killed or cut off) at step 3" in err, err
        assert "No checkpoint was written yet; rerun the same command to resume" in err, err  # no --out
        assert "Traceback" not in err
    finally:
        for p in ranks:
            p.kill()
            p.wait()


HANG = STALL.replace("os.kill(os.getpid(), signal.SIGSTOP)  # a stalled peer",
                     "import time; time.sleep(120)  # a hung peer: alive, its heartbeat beats")


def test_a_hung_but_alive_ddp_peer_is_named_with_where_it_hangs(tmp_path):
    ranks = start_ranks(tmp_path, HANG.format(tests=str(Path(__file__).parent), timeout=3), port_offset=2)
    try:
        _, err = ranks[0].communicate(timeout=120)
        assert ranks[0].returncode == 2, err
        assert "rank 0: rank 1 is alive but has been in step 3's forward for " in err, err
        assert "while this rank waits in step 3's backward (hung: a deadlock" in err, err
        assert "Traceback" not in err
    finally:
        for p in ranks:
            p.kill()
            p.wait()


def test_a_full_disk_while_sampling_names_the_file_and_what_was_kept(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(registry().components["tasks"], "toy", Component("tasks", "toy", ToyTask, "tests"))
    assert cli.main(["run", "toy", "--out", str(tmp_path / "run"), "--steps", "2", *RUN]) == 0
    before = (tmp_path / "run" / "last.pt").read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    capsys.readouterr()
    code = cli.main(["sample", str(tmp_path / "run"), "--n", "2", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.splitlines()[-1] == (
        f"catdiff: error: cannot write sample file {tmp_path / 's' / 'samples.pt'}: No space left on device; no "
        f"sample file was written. Free space or pass a writable --out directory"), err
    assert not list((tmp_path / "s").iterdir()) and (tmp_path / "run" / "last.pt").read_bytes() == before


class BareFullDisk(ToyTask):
    name = "toy-full"

    def save_samples(self, tokens, labels, out_dir):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as file.write() raises it: no file name


def test_a_full_disk_under_a_task_write_names_the_directory_and_what_was_kept(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(registry().components["tasks"], "toy-full", Component("tasks", "toy-full", BareFullDisk, "t"))
    code = cli.main(["run", "toy-full", "--out", str(tmp_path), "--steps", "2", *RUN])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    line = err.splitlines()[-1]
    assert line.startswith(f"catdiff: error: {tmp_path}: No space left on device. That write may be incomplete; "
                           f"the files written before it are complete (checkpoints"), line
    assert line.endswith("Free space or pass another --out, then rerun")
    assert checkpoint.load(tmp_path / "last.pt")["step"] == 2 and (tmp_path / "metrics.json").exists()

BUSY = """
import sys, time
sys.path.insert(0, {tests!r})
from toytask import ToyTask
from catdiff.run.engine import Engine
eng = Engine(ToyTask(), steps=4, batch_size=8, threads=1, eval_every=2, eval_samples=2, dist_timeout=2)
real = eng.task.evaluate
def evaluate(*a):
    time.sleep(3 * 2)  # rank 0 evaluates for longer than dist_timeout, alive all the while
    return real(*a)
eng.task.evaluate = evaluate
eng.fit()
"""


def test_ddp_peers_wait_for_a_busy_rank_0_longer_than_the_timeout(tmp_path):
    ranks = start_ranks(tmp_path, BUSY.format(tests=str(Path(__file__).parent)), port_offset=1)
    try:
        for p in ranks:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err
    finally:
        for p in ranks:
            p.kill()
            p.wait()


def test_the_signal_tests_pass_in_a_process_started_with_sigint_ignored():
    """`make test` as a background job of a script, under nohup or some CI runners: SIGINT is
    ignored from the start (inherited across exec), and the in-process signal tests still pass."""
    tests = [f"{__file__}::{t.__name__}" for t in (test_signal_mid_write_finishes_the_write_then_stops,
             test_with_sigint_ignored_sigterm_still_saves_and_sigint_stays_ignored,
             test_second_signal_aborts_at_once_and_keeps_the_previous_checkpoint)]  # by name: never this test
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN), capture_output=True,
                         text=True, timeout=600, env=ENV, cwd=Path(__file__).parents[1])
    assert res.returncode == 0 and "3 passed" in res.stdout, res.stdout[-3000:] + res.stderr[-3000:]


def test_a_disk_already_full_leaves_no_empty_lock_and_names_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(registry().components["tasks"], "toy", Component("tasks", "toy", ToyTask, "tests"))

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full)  # the lock's record is the run's first write
    code = cli.main(["run", "toy", "--out", str(tmp_path / "r"), "--steps", "2", *RUN])
    err = capsys.readouterr().err
    monkeypatch.undo()
    assert code == 2 and "Traceback" not in err, err
    assert f"{tmp_path / 'r' / '.catdiff.lock'}: No space left on device" in err, err
    assert not (tmp_path / "r" / ".catdiff.lock").exists()
