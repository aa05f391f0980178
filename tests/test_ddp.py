"""Two CPU processes under torchrun (gloo): the replicas must stay identical."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent('''
    import json, sys
    import torch, torch.distributed as dist
    sys.path.insert(0, {tests!r})
    from toytask import ToyTask
    from catdiff.engine import Engine

    eng = Engine(ToyTask(), steps=6, batch_size=8, threads=1)
    assert dist.is_initialized() and dist.get_world_size() == 2
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
    eng.leave_group()
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
