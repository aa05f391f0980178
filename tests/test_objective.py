import pytest
import torch

from catdiff.methods.catdm.network import CATDMDenoiser
from catdiff.methods.catdm.objective import CATDMObjective, ddim_point, drop_mask, kl_categorical, likelihood_bound
from catdiff.methods.catdm.schedule import ShiftedCosineSchedule
from catdiff.nn.backbones import build_encoder
from catdiff.nn.model import Codebook, ema_copy
from catdiff.run.config import make as Config


def tiny(vocab=7, seq=12, num_classes=0, **kw):
    cfg = Config(layers=1, heads=2, width=32, embed_dim=16, **kw)
    net = build_encoder(cfg, vocab_size=vocab, seq_len=seq, num_classes=num_classes)
    return cfg, CATDMDenoiser(Codebook(vocab, cfg.embed_dim), net, self_cond=cfg.self_cond)


def test_kl_nonnegative_and_zero_for_equal():
    logp = torch.log_softmax(torch.randn(50, 9), -1)
    logq = torch.log_softmax(torch.randn(50, 9), -1)
    assert (kl_categorical(logp, logq) >= -1e-6).all()
    assert kl_categorical(logp, logp).abs().max() < 1e-6


def test_ddim_point_equals_forward_sample_when_prediction_exact():
    sch = ShiftedCosineSchedule(-2.0)
    x0 = torch.randn(4, 5, 3)
    eps = torch.randn_like(x0)
    t = torch.tensor([0.9, 0.5, 0.3, 0.99])
    s = t * torch.tensor([0.1, 0.5, 0.9, 0.0])
    a_t, s_t = sch.alpha_sigma(t)
    a_s, s_s = sch.alpha_sigma(s)
    z_t = a_t[:, None, None] * x0 + s_t[:, None, None] * eps
    z_s = ddim_point(z_t, x0, a_t, s_t, a_s, s_s)
    torch.testing.assert_close(z_s, a_s[:, None, None] * x0 + s_s[:, None, None] * eps)


def test_no_gradient_reaches_the_ema_model():
    cfg, model = tiny()
    teacher = ema_copy(model)
    teacher.requires_grad_(True)  # even if someone forgets to freeze it, L_CM must not touch it
    obj = CATDMObjective(cfg, ShiftedCosineSchedule(cfg.shift))
    x = torch.randint(0, 7, (8, 12))
    loss, logs = obj(model, teacher, x)
    assert "l_cm" in logs and logs["l_cm"] > 0
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert model.codebook.weight.grad is not None and model.codebook.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("objective", ["catdm", "csdm", "csdm_l2", "ce"])
def test_every_objective_is_finite_and_differentiable(objective):
    cfg, model = tiny(objective=objective)
    obj = CATDMObjective(cfg, ShiftedCosineSchedule(cfg.shift))
    loss, logs = obj(model, ema_copy(model), torch.randint(0, 7, (8, 12)))
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(model.codebook.weight.grad).all()


def test_fixed_codebook_gets_no_gradient():
    cfg, _ = tiny()
    model = CATDMDenoiser(Codebook(7, 16, fixed=True), build_encoder(cfg, vocab_size=7, seq_len=12, num_classes=0))
    loss, _ = CATDMObjective(cfg, ShiftedCosineSchedule(0.0))(model, ema_copy(model), torch.randint(0, 7, (4, 12)))
    loss.backward()
    assert model.codebook.weight.grad is None


def test_drop_mask_strategies():
    x = torch.zeros(4000, 50, dtype=torch.long)
    t = torch.rand(4000)
    assert abs(drop_mask(x, t, "rand", 0.2).float().mean().item() - 0.2) < 0.01
    assert not drop_mask(x, t, "none", 0.2).any()
    lin = drop_mask(x, t, "linear", 0.5).float().mean(1)
    assert lin[t < 0.1].mean() < 0.06 and lin[t > 0.9].mean() > 0.44
    assert abs(drop_mask(x, t, "rand_ratio", 0.4).float().mean().item() - 0.2) < 0.02
    with pytest.raises(ValueError, match="unknown drop strategy"):
        drop_mask(x, t, "sometimes", 0.2)


def test_drop_ratio_of_the_z0_pass():
    x = torch.zeros(4000, 50, dtype=torch.long)
    t = torch.cat([torch.zeros(2000), torch.rand(2000).clamp_min(1e-3)])  # [z_0 rows ; z_t rows]
    for strategy, rest in (("rand", 0.2), ("linear", 0.1)):
        frac = drop_mask(x, t, strategy, 0.2, ratio_at_0=0.5).float()
        assert abs(frac[:2000].mean().item() - 0.5) < 0.01   # z_0 rows: drop_l0
        assert abs(frac[2000:].mean().item() - rest) < 0.01  # z_t rows: the strategy's own
    assert drop_mask(x, t, "linear", 0.2)[:2000].sum() == 0    # default: linear never drops at t = 0
    assert not drop_mask(x, t, "none", 0.2, ratio_at_0=0.5).any()  # "none" (w/o RD) drops nothing


def test_unknown_objective_is_rejected():
    with pytest.raises(ValueError, match=r"config objective='vlb2': must be catdm \| csdm \| csdm_l2 \| ce"):
        Config(objective="vlb2")


def test_likelihood_bound_terms_are_finite_and_nonnegative():
    cfg, model = tiny()
    b = likelihood_bound(model, torch.randint(0, 7, (16, 12)), ShiftedCosineSchedule(cfg.shift))
    for v in b.values():
        assert v.shape == (16,) and torch.isfinite(v).all()
    assert (b["prior"] >= 0).all() and (b["l0"] >= 0).all() and (b["l_inf"] >= 0).all()


def test_self_conditioning_starts_as_the_plain_model_and_reads_its_estimate():
    """prev_proj is zero at init (same logits with or without an estimate); once trained away
    from zero the estimate changes the prediction, and posterior_logits is the two-pass one."""
    torch.manual_seed(0)
    cfg, model = tiny(self_cond=True)
    z, t = torch.randn(3, 12, 16), torch.rand(3)
    prev = torch.randn(3, 12, 16)
    torch.testing.assert_close(model.logits(z, t, None, prev), model.logits(z, t))
    torch.nn.init.normal_(model.prev_proj.weight)
    assert not torch.allclose(model.logits(z, t, None, prev), model.logits(z, t))
    first = torch.softmax(model.logits(z, t), -1) @ model.codebook.data
    torch.testing.assert_close(model.posterior_logits(z, t), model.logits(z, t, None, first))


def test_self_conditioned_objective_trains_the_estimate_map_and_not_the_teacher():
    torch.manual_seed(0)
    cfg, model = tiny(self_cond=True)
    torch.nn.init.normal_(model.prev_proj.weight, std=0.1)
    teacher = ema_copy(model)
    teacher.requires_grad_(True)
    loss, logs = CATDMObjective(cfg, ShiftedCosineSchedule(cfg.shift))(model, teacher, torch.randint(0, 7, (16, 12)))
    loss.backward()
    assert torch.isfinite(loss) and logs["l_cm"] > 0
    assert model.prev_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


class ZeroNet(torch.nn.Module):
    """A backbone that knows nothing: all-zero logits (a uniform prior over K tokens)."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab

    def forward(self, z, t, cond=None):
        return torch.zeros(*z.shape[:2], self.vocab)


def test_token_evidence_is_the_exact_per_token_posterior():
    K, D = 5, 3
    sch = ShiftedCosineSchedule(-1.0)
    model = CATDMDenoiser(Codebook(K, D), ZeroNet(K), schedule=sch)
    z, t = torch.randn(4, 6, D), torch.tensor([0.05, 0.3, 0.6, 0.95])
    a, s = sch.alpha_sigma(t)
    # brute force: log N(z_i; alpha e_k, sigma^2 I) over k, normalised
    log_n = -((z[:, :, None] - a[:, None, None, None] * model.codebook.data[None, None]) ** 2).sum(-1) / (
        2 * s[:, None, None] ** 2)
    torch.testing.assert_close(torch.log_softmax(model.logits(z, t), -1), torch.log_softmax(log_n, -1))
    # dropped positions ([mask] input) get none: the zero net's uniform logits
    x = torch.randint(0, K, (4, 6))
    x_in = x.clone()
    x_in[:, 0] = model.codebook.mask_id
    logits = model(x_in, a, s, torch.randn(4, 6, D), t)[0]
    assert (logits[:, 0] == 0).all() and (logits[:, 1:].std(-1) > 0).all()


def test_token_evidence_stays_fp32_under_bf16_autocast():
    K, D = 5, 8
    sch = ShiftedCosineSchedule(0.0)
    model = CATDMDenoiser(Codebook(K, D), ZeroNet(K), schedule=sch)
    z, t = torch.randn(2, 3, D) * 3, torch.tensor([0.001, 0.5])  # t ~ 0: logits ~ e^8 ||e||^2
    ref = model.logits(z, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = model.logits(z, t)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref)


def test_bound_of_the_exact_denoiser_is_the_entropy_of_uniform_tokens():
    """With token evidence and a zero network, the denoiser is the exact posterior of i.i.d.
    uniform tokens, so the eq. 3 bound is tight: its mean over x ~ U is M log K (up to the
    prior term at logsnr_min and the L0 at logsnr_max, both tiny)."""
    K, D, M, n = 4, 2, 3, 20000
    torch.manual_seed(0)
    sch = ShiftedCosineSchedule(0.0, logsnr_min=-12.0, logsnr_max=12.0)
    cb = Codebook(K, D, init_std=1.0)
    model = CATDMDenoiser(cb, ZeroNet(K), schedule=sch)
    x = torch.randint(0, K, (n, M))
    t = (torch.arange(n) + torch.rand(n)) / n  # stratified
    total = likelihood_bound(model, x, sch, t=t)["total"]
    se = total.std() / n**0.5
    expected = M * torch.log(torch.tensor(float(K)))
    assert abs(total.mean() - expected) < 4 * se + 0.01, (total.mean().item(), expected.item(), se.item())
    # a denoiser without the evidence (the zero net alone: the prior only) pays for it
    plain = likelihood_bound(CATDMDenoiser(cb, ZeroNet(K)), x, sch, t=t)["total"].mean()
    assert plain > expected + 1.0



@pytest.mark.parametrize("objective", ["catdm", "csdm"])
def test_l0_rows_estimates_l0_on_the_first_rows_only(objective):
    """l0_rows=0.25: the student's pass sees K + B rows (K = B/4 at t = 0), and the logged L0 is
    the mean -log P(x | z_0; 0) of those K rows."""
    torch.manual_seed(0)
    _, model = tiny()
    x = torch.randint(0, 7, (8, 12))
    sizes = []
    model.net.register_forward_hook(lambda m, args, out: sizes.append(out.shape[0]))
    cfg = Config(layers=1, heads=2, width=32, embed_dim=16, objective=objective, l0_rows=0.25, drop="none")
    loss, logs = CATDMObjective(cfg, ShiftedCosineSchedule(cfg.shift))(model, ema_copy(model), x)
    assert torch.isfinite(loss) and sizes[0] == 2 + 8
    # z_0 carries noise of std e^-4, so L0 barely depends on the draw: compare with a noise-free pass
    t = torch.zeros(2)
    alpha, sigma = ShiftedCosineSchedule(cfg.shift).alpha_sigma(t)
    logits, *_ = model(x[:2], alpha, sigma, torch.zeros(2, 12, 16), t, None, targets=x[:2])
    per_row = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:2], reduction="none").sum(-1)
    torch.testing.assert_close(logs["l0"], per_row.mean(), rtol=1e-3, atol=1e-3)
