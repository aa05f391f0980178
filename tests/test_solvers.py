"""CATDM's probability-flow ODE solvers (DDIM, DPM-Solver++(2M), Heun) and the sampling grids."""
import math

import pytest
import torch

from catdiff.api.errors import UserError
from catdiff.methods.catdm import CATDM
from catdiff.methods.catdm.sampler import SAMPLERS, SOLVERS, sample, time_grid
from catdiff.methods.catdm.schedule import ShiftedCosineSchedule
from catdiff.nn.model import Codebook
from catdiff.run.config import make as Config
from test_sampler import ExactPosterior, perturbed

ODE = ("ddim", "dpmpp_2m", "heun")


def gaussian_case(sch, mu=0.7, c=0.5):
    """Data x ~ N(mu, c^2) per dimension: E[x | z_t] is linear in z_t, and the ODE's flow from t = 1
    to 0 is known: z_0 = alpha_0 mu + (z_1 - alpha_1 mu) std_0 / std_1, std_t^2 = alpha_t^2 c^2 + sigma_t^2
    (in one dimension the flow is the monotone map between two Gaussians)."""
    def alpha_std(t):
        a, s = sch.alpha_sigma(t)
        return a, (a**2 * c**2 + s**2).sqrt()

    def denoise(z, t):
        a, s = sch.alpha_sigma(t)
        return z, mu + a * c**2 / (a**2 * c**2 + s**2) * (z - a * mu)

    z1 = torch.linspace(-3, 3, 7, dtype=torch.float64)
    (a1, s1), (a0, s0) = alpha_std(torch.tensor(1.0, dtype=torch.float64)), alpha_std(torch.tensor(0.0, dtype=torch.float64))
    return denoise, z1, a0 * mu + (z1 - a1 * mu) * s0 / s1


@pytest.mark.parametrize("kind", ["t", "logsnr"])
@pytest.mark.parametrize("name,order", [("ddim", 1), ("dpmpp_2m", 2), ("heun", 2)])
def test_order_of_accuracy_on_gaussian_data(name, order, kind):
    sch = ShiftedCosineSchedule(-3.0)
    denoise, z1, exact = gaussian_case(sch)
    errs = [(SOLVERS[name](denoise, z1.clone(), time_grid(sch, n, kind).double(), sch) - exact).abs().max().item()
            for n in (64, 128, 256)]
    rates = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]  # halving h divides the error by 2^order
    assert all(abs(r - order) < 0.25 for r in rates), (errs, rates)


def exact_denoiser(sch, n_data=12, seq=6, vocab=5, dim=8):
    torch.manual_seed(0)
    oracle = ExactPosterior(torch.randint(vocab, (n_data, seq)), Codebook(vocab, dim), sch)
    e = oracle.codebook.data

    def denoise(z, t):
        return z, oracle.logits(z, t.expand(len(z))).exp() @ e

    return oracle, denoise


def test_every_solver_converges_to_ddims_end_point():
    """The same ODE from the same z_1 (one generator): each solver's z_0 approaches a fine DDIM's."""
    sch = ShiftedCosineSchedule(-3.0)
    _, denoise = exact_denoiser(sch)
    z1 = torch.randn(16, 6, 8, generator=torch.Generator().manual_seed(3))
    ref = SOLVERS["ddim"](denoise, z1.clone(), time_grid(sch, 4000), sch)
    for name in ODE:
        gaps = [(SOLVERS[name](denoise, z1.clone(), time_grid(sch, n), sch) - ref).norm().item() / ref.norm().item()
                for n in (8, 64, 512)]
        assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 0.02, (name, gaps)


@pytest.mark.parametrize("method", ODE)
def test_exact_posterior_solvers_reproduce_the_data(method):
    sch = ShiftedCosineSchedule(shift=-3.0)
    oracle, _ = exact_denoiser(sch)
    out = sample(oracle, sch, 24, 6, steps=40, method=method, generator=torch.Generator().manual_seed(1))
    assert (out[:, None] == oracle.data[None]).all(-1).any(-1).all()


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("method", SAMPLERS)
def test_one_and_two_steps_are_well_defined(method, steps):
    model = perturbed(num_classes=3)
    calls = []
    logits = model.logits
    model.logits = lambda z, t, cond=None, *a: calls.append(t) or logits(z, t, cond, *a)
    out = sample(model, ShiftedCosineSchedule(-3.0), 4, 12, steps=steps, method=method, cond=torch.tensor([0, 1, 2, 0]),
                 guidance=1.5, null_id=3, generator=torch.Generator().manual_seed(0))
    assert out.shape == (4, 12) and 0 <= out.min() and out.max() < 7
    nfe = 2 * steps if method == "heun" else steps + 1  # Heun: a correction on every step but the last
    assert len(calls) == nfe
    assert float(calls[0][0]) == 1.0 and float(calls[-1][0]) == 0.0


def test_one_heun_step_is_one_ddim_step():
    model, sch = perturbed(), ShiftedCosineSchedule(-3.0)
    a, b = (sample(model, sch, 3, 12, steps=1, method=m, final="sample", generator=torch.Generator().manual_seed(2))
            for m in ("heun", "ddim"))
    assert torch.equal(a, b)


def test_logsnr_grid_is_uniform_in_logsnr():
    sch = ShiftedCosineSchedule(-3.0, -15.0, 8.0)
    g = time_grid(sch, 10, "logsnr").double()
    assert g[0] == 0 and g[-1] == 1 and (g.diff() > 0).all()
    lam = sch.logsnr(g)
    torch.testing.assert_close(lam.diff(), torch.full((10,), -2.3, dtype=torch.float64), atol=1e-4, rtol=0)
    t = torch.rand(50, dtype=torch.float64)
    torch.testing.assert_close(sch.time_of(sch.logsnr(t)), t)
    with pytest.raises(ValueError, match="grid"):
        time_grid(sch, 4, "karras")


def test_a_warped_grid_excludes_another_sampling_grid():
    with pytest.raises(UserError, match="sample_grid"):
        CATDM(Config(time_warp="sample", sample_grid="logsnr"))
    assert CATDM(Config(sample_grid="logsnr")).cfg.sample_grid == "logsnr"


def test_a_repeated_grid_time_is_a_zero_step_for_every_solver():
    """A warp's grid may repeat a time: the step is empty (DPM-Solver++ keeps to first order after it)."""
    sch = ShiftedCosineSchedule(-3.0)
    denoise, z1, _ = gaussian_case(sch)
    grid = torch.tensor([0.0, 0.3, 0.6, 0.6, 1.0], dtype=torch.float64)
    for name in ODE:
        out = SOLVERS[name](denoise, z1.clone(), grid, sch)
        ref = SOLVERS[name](denoise, z1.clone(), grid[[0, 1, 2, 4]], sch)
        assert torch.isfinite(out).all()
        if name != "dpmpp_2m":  # its history differs after the empty step; it stays finite and close
            torch.testing.assert_close(out, ref)
        else:
            assert (out - ref).abs().max() < 0.1


@pytest.mark.parametrize("method", SAMPLERS)
def test_without_the_final_call_n_steps_cost_n_calls(method):
    """final_call=False reads the tokens from the last step's prediction (at t_1, not t = 0)."""
    model = perturbed(num_classes=3)
    calls = []
    logits = model.logits
    model.logits = lambda z, t, cond=None, *a: calls.append(float(t[0])) or logits(z, t, cond, *a)
    kw = dict(steps=4, method=method, cond=torch.tensor([0, 1, 2, 0]), guidance=1.5, null_id=3)
    sch = ShiftedCosineSchedule(-3.0)
    sample(model, sch, 4, 12, generator=torch.Generator().manual_seed(0), **kw)
    with_read = list(calls)
    calls.clear()
    out = sample(model, sch, 4, 12, final_call=False, generator=torch.Generator().manual_seed(0), **kw)
    assert out.shape == (4, 12)
    assert calls == with_read[:-1] and with_read[-1] == 0.0 and calls[-1] == 0.25


@pytest.mark.parametrize("method", SAMPLERS)
def test_exact_posterior_without_the_final_call_still_reproduces_the_data(method):
    sch = ShiftedCosineSchedule(shift=-3.0)
    oracle, _ = exact_denoiser(sch)
    out = sample(oracle, sch, 24, 6, steps=40, method=method, final_call=False,
                 generator=torch.Generator().manual_seed(1))
    assert (out[:, None] == oracle.data[None]).all(-1).any(-1).all()


@pytest.mark.parametrize("final_call,nfe", [(True, 4), (False, 3)])
def test_the_final_call_setting_reaches_the_sampler(final_call, nfe):
    from catdiff.api.method import SampleRequest
    model, calls = perturbed(), []
    logits = model.logits
    model.logits = lambda z, t, cond=None, *a: calls.append(t) or logits(z, t, cond, *a)
    req = SampleRequest(n=2, seq_len=12, steps=3, sampler="ddim", generator=torch.Generator().manual_seed(0))
    assert CATDM(Config(final_call=final_call)).sample(model, req).shape == (2, 12)
    assert len(calls) == nfe
