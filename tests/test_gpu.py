"""What only a CUDA device can check (skipped without one; benchmarks/gpu_check.sh runs them):
device auto-detection, bf16 autocast that really computes in bf16, checkpoints that move between
devices, and samplers that agree with their CPU results in shape and range."""
import pytest
import torch

from catdiff import Engine
from toytask import ToyCondTask, ToyTask

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_auto_picks_cuda_and_bf16_and_the_matmuls_run_in_bf16():
    eng = Engine(ToyTask(), steps=3)
    assert eng.device.type == "cuda"
    assert eng.precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    reduced = {"bf16": torch.bfloat16, "fp16": torch.float16}[eng.precision]
    seen = set()
    hooks = [m.register_forward_hook(lambda m, i, out: seen.add(out.dtype))
             for m in eng.model.net.modules() if isinstance(m, torch.nn.Linear)]
    x = eng.data("train").tokens[:4].to(eng.device)
    with eng.autocast:
        logits = eng.model.net(torch.randn(4, x.shape[1], eng.cfg.embed_dim, device=eng.device),
                               torch.rand(4, device=eng.device), None)
    assert seen == {reduced}  # every Linear of the backbone ran at reduced precision
    assert logits.dtype == torch.float32  # logits come back in fp32 for the losses
    seen.clear()
    eng.fit()
    assert eng.step == 3 and seen == {reduced}  # and so did the training steps'
    for h in hooks:
        h.remove()


@pytest.mark.parametrize("method", ["catdm", "mdlm", "ar", "d3pm"])
def test_every_method_trains_and_samples_on_cuda(method):
    eng = Engine(ToyCondTask(), method=method, steps=4, guidance=1.0)
    eng.fit()
    x = eng.sample(8, steps=4, seed=0)
    assert x.shape == (8, ToyCondTask.seq_len) and 0 <= int(x.min()) and int(x.max()) < ToyCondTask.vocab_size
    lik = eng.likelihood(batches=1)
    assert torch.isfinite(torch.tensor(lik["nll_bound_nats_per_token"]))


def test_a_cuda_checkpoint_loads_on_the_cpu_and_back(tmp_path):
    eng = Engine(ToyTask(), out=tmp_path, steps=3).fit()
    cpu = Engine.from_checkpoint(tmp_path / "last.pt", task=ToyTask(), device="cpu")
    for k, v in eng.ema_eval.state_dict().items():
        torch.testing.assert_close(cpu.ema_eval.state_dict()[k], v.cpu())
    again = Engine.from_checkpoint(tmp_path / "last.pt", task=ToyTask(), device="cuda")
    torch.testing.assert_close(again.sample(4, steps=3, seed=0), eng.sample(4, steps=3, seed=0))


def test_compiled_training_runs_on_cuda():
    eng = Engine(ToyTask(), steps=3, compile=True)
    eng.fit()
    assert eng.step == 3
