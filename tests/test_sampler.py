import pytest
import torch

from catdiff.methods.catdm.network import CATDMDenoiser
from catdiff.methods.catdm.sampler import SAMPLERS, sample
from catdiff.methods.catdm.schedule import ShiftedCosineSchedule
from catdiff.methods.shared import guided_log_probs
from catdiff.nn.backbones import build_encoder
from catdiff.nn.model import Codebook
from catdiff.run.config import make as Config


def perturbed(num_classes=0, self_cond=False):
    cfg = Config(layers=1, heads=2, width=32, embed_dim=16)
    model = CATDMDenoiser(Codebook(7, 16), build_encoder(cfg, vocab_size=7, seq_len=12, num_classes=num_classes),
                          self_cond=self_cond)
    torch.manual_seed(0)
    with torch.no_grad():  # move AdaLN and heads off their zero init so the condition matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_guidance_zero_equals_the_conditional_model():
    model = perturbed(num_classes=3)
    z, t, y = torch.randn(5, 12, 16), torch.rand(5), torch.tensor([0, 1, 2, 0, 1])
    plain = torch.log_softmax(model.logits(z, t, y), -1)
    torch.testing.assert_close(guided_log_probs(model, z, t, y, 0.0, null_id=3), plain)
    guided = guided_log_probs(model, z, t, y, 2.0, null_id=3)
    assert not torch.allclose(guided, plain)
    torch.testing.assert_close(guided.exp().sum(-1), torch.ones(5, 12))


def test_guidance_needs_a_conditional_model():
    with pytest.raises(ValueError, match="class-conditional"):
        guided_log_probs(perturbed(), torch.randn(2, 12, 16), torch.rand(2), torch.tensor([0, 1]), 1.0, None)


@pytest.mark.parametrize("method", SAMPLERS)
@pytest.mark.parametrize("final", ["argmax", "sample"])
@pytest.mark.parametrize("self_cond", [False, True])
def test_infilling_never_changes_given_tokens(method, final, self_cond):
    model = perturbed(self_cond=self_cond)
    known = torch.randint(0, 7, (6, 12))
    mask = torch.rand(6, 12) < 0.5
    out = sample(model, ShiftedCosineSchedule(-2.0), 6, 12, steps=4, method=method, final=final,
                 known=known, known_mask=mask, generator=torch.Generator().manual_seed(1))
    assert out.shape == (6, 12) and out.dtype == torch.long
    assert torch.equal(out[mask], known[mask])
    assert out.min() >= 0 and out.max() < 7


def test_self_conditioned_sampling_reads_the_previous_steps_estimate():
    model = perturbed(self_cond=True)
    calls = []
    plain_logits = model.logits

    def recording(z, t, cond=None, prev=None):
        out = plain_logits(z, t, cond, prev)
        calls.append((prev, torch.softmax(out.float(), -1) @ model.codebook.data))
        return out

    model.logits = recording
    sample(model, ShiftedCosineSchedule(-2.0), 4, 12, steps=5, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 6 and calls[0][0] is None  # 5 steps + the final read at t = 0
    for (_, emb_hat), (prev, _) in zip(calls, calls[1:]):
        torch.testing.assert_close(prev, emb_hat)


def test_samples_are_reproducible_with_a_generator():
    model = perturbed()
    sch = ShiftedCosineSchedule(0.0)
    a = sample(model, sch, 3, 12, steps=3, generator=torch.Generator().manual_seed(5))
    b = sample(model, sch, 3, 12, steps=3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_bad_sampler_arguments():
    model, sch = perturbed(), ShiftedCosineSchedule()
    with pytest.raises(ValueError, match="unknown sampler"):
        sample(model, sch, 2, 12, method="euler")
    with pytest.raises(ValueError, match="known"):
        sample(model, sch, 2, 12, known=torch.zeros(2, 12, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[2, 12\]"):
        sample(model, sch, 2, 12, known=torch.zeros(2, 5, dtype=torch.long), known_mask=torch.ones(2, 5, dtype=torch.bool))


class ExactPosterior(torch.nn.Module):
    """The Bayes-optimal denoiser for a finite data set: P(x | z_t) under q(z_t | x) = N(alpha_t EMB(x), sigma_t^2 I)."""

    def __init__(self, data, codebook, schedule):
        super().__init__()
        self.data, self.codebook, self.schedule = data, codebook, schedule

    def logits(self, z, t, cond=None):
        a, s = self.schedule.alpha_sigma(t)
        emb = self.codebook(self.data).flatten(1)  # [N, M*D]
        zf = z.flatten(1)
        d2 = zf.pow(2).sum(1, keepdim=True) - 2 * a[:, None] * zf @ emb.T + a[:, None] ** 2 * emb.pow(2).sum(1)
        w = torch.softmax(-d2 / (2 * s[:, None] ** 2), -1)  # posterior over the N sequences
        onehot = torch.nn.functional.one_hot(self.data, self.codebook.vocab_size).float()
        return torch.einsum("bn,nmk->bmk", w, onehot).clamp_min(1e-12).log()


@pytest.mark.parametrize("method", SAMPLERS)
def test_exact_posterior_samples_reproduce_the_data(method):
    """With the true posterior, both samplers must land on data sequences (memorised data set)."""
    torch.manual_seed(0)
    data = torch.randint(7, (20, 12))
    sch = ShiftedCosineSchedule(shift=-3.0)
    oracle = ExactPosterior(data, Codebook(7, 16), sch)
    out = sample(oracle, sch, 32, 12, steps=30, method=method, generator=torch.Generator().manual_seed(1))
    assert (out[:, None] == data[None]).all(-1).any(-1).all()
    assert len(set(map(tuple, out.tolist()))) > 5  # and not always the same one
