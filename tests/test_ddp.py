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
