"""Two CPU processes under torchrun (gloo): the replicas must stay identical; a stopped rank
ends the job within dist_timeout, named, with the last checkpoint kept."""
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from catdiff.run import checkpoint

SCRIPT = textwrap.dedent('''
    import json, sys
    import torch, torch.distributed as dist
    sys.path.insert(0, {tests!r})
    from toytask import ToyTask
    from catdiff.run.engine import Engine

    dist.init_process_group("gloo")  # a group of the script's own: the engine trains in it and leaves it open
    eng = Engine(ToyTask(), steps=6, batch_size=8, threads=1)
    assert eng.world == 2
    start = torch.cat([p.detach().flatten() for p in eng.model.parameters()])
    eng.fit()
    assert eng.step == 6
    flat = torch.cat([p.detach().flatten() for p in eng.model.parameters()])
    ema = torch.cat([p.detach().flatten() for p in eng.ema_eval.parameters()])
    both = [torch.zeros_like(flat) for _ in range(2)]
    dist.all_gather(both, flat)
    emas = [torch.zeros_like(ema) for _ in range(2)]
    dist.all_gather(emas, ema)
    if dist.get_rank() == 0:
        json.dump({{"max_diff": (both[0] - both[1]).abs().max().item(),
                    "ema_diff": (emas[0] - emas[1]).abs().max().item(),
                    "moved": (flat - start).abs().max().item()}},
                  open({out!r}, "w"))
    dist.destroy_process_group()
''')


@pytest.mark.slow
def test_two_process_ddp_keeps_replicas_identical(tmp_path):
    out = tmp_path / "result.json"
    script = tmp_path / "ddp.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent), out=str(out)))
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", str(script)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["moved"] > 0  # training happened, each rank on its own data and noise
    assert result["max_diff"] == 0.0 and result["ema_diff"] == 0.0


@pytest.mark.slow
def test_cli_run_under_torchrun_evaluates_once_and_writes_from_rank_0(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    toycli = Path(__file__).with_name("toycli.py")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", str(toycli), "run", "toy", "--out", str(tmp_path),
           "--steps", "6", "--set", "batch_size=8", "--set", "threads=1", "--set", "n_samples=4"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.count("progression_frac") == 1 and res.stdout.count("run directory:") == 1
    assert json.loads((tmp_path / "metrics.json").read_text())["step"] == 6.0
    assert (tmp_path / "train_log.csv").read_text().count("\n") == 2  # header + one row (log_every 10), one writer


def rank_pid(parent: int, rank: int) -> int | None:
    """The pid of torchrun worker ``rank`` (a child of ``parent`` with RANK=rank), or None."""
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                if f"RANK={rank}".encode() in (d / "environ").read_bytes().split(b"\0"):
                    return int(d.name)
        except (OSError, ValueError, IndexError):  # the process ended meanwhile
            continue
    return None


@pytest.mark.slow
def test_a_stopped_rank_ends_the_job_naming_it_and_keeps_the_checkpoint(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    toycli = Path(__file__).with_name("toycli.py")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", str(toycli), "run", "toy", "--out", str(tmp_path),
           "--steps", "1000000", "--set", "batch_size=8", "--set", "threads=1", "--set", "ckpt_every=20",
           "--set", "dist_timeout=15"]
    job = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           env=dict(os.environ, OMP_NUM_THREADS="1"))
    stopped = None
    try:
        t0 = time.monotonic()
        while not (tmp_path / "last.pt").exists():  # training is under way
            assert job.poll() is None, job.communicate()[1][-3000:]
            assert time.monotonic() - t0 < 300, "no checkpoint within 300 s"
            time.sleep(0.1)
        stopped = rank_pid(job.pid, 1)
        assert stopped is not None
        os.kill(stopped, signal.SIGSTOP)
        _, err = job.communicate(timeout=300)  # a generous bound: dist_timeout, then torchrun ends rank 1
        assert job.returncode != 0
        line = next((x for x in err.splitlines() if x.startswith("catdiff: error: rank 0: ")), err[-3000:])
        assert "rank 1 (silent for " in line and "stopped answering" in line and "check that process" in line, line
        assert f"The last checkpoint, {tmp_path / 'last.pt'}, is intact; rerun the same command to resume" in line
        payload = checkpoint.load(tmp_path / "last.pt")
        assert payload["step"] > 0 and payload["step"] % 20 == 0
    finally:
        if stopped is not None:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(stopped, sig)
        job.kill()
        job.wait()
