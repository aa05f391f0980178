"""CATDM's efficiency levers (issue 28): time warping, normalised embeddings, the L0 share set by
the terms' spread, the self-conditioning rate. Each is one catdm setting."""
import math

import pytest
import torch

from catdiff import Engine
from catdiff.methods.catdm.schedule import TimeWarp
from test_engine import same_weights


def fitted_warp(bins: int = 16) -> TimeWarp:
    """A warp that has seen a CE curve rising steeply around t = 0.6."""
    warp = TimeWarp(bins=bins)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        t = torch.rand(1024, generator=gen)
        warp.update(t, 3 * torch.sigmoid((t - 0.6) * 20))
    return warp


def test_the_warped_cdf_is_monotone_and_its_inverse_draws_the_learned_density():
    warp = TimeWarp(bins=16)
    assert not warp.warm and torch.equal(*warp.knots())  # uniform until every bin was seen
    warp = fitted_warp()
    t, F = warp.knots()
    assert warp.warm and F[0] == 0 and F[-1] == 1 and (F.diff() >= 0).all() and (t.diff() > 0).all()
    draws = warp.sample(200_000, "cpu", torch.Generator().manual_seed(1))
    assert 0 <= draws.min() and draws.max() < 1
    # the share of draws in each interval equals F's increase over it (inverse-CDF sampling)
    edges = torch.linspace(0, 1, 11)
    for a, b in zip(edges[:-1], edges[1:]):
        inside = ((draws >= a) & (draws < b)).float().mean()
        expect = float(warp_cdf(warp, b) - warp_cdf(warp, a))
        assert inside == pytest.approx(expect, abs=0.005)
    # most draws sit where the loss changes, every interval keeps at least the uniform floor
    assert ((draws > 0.45) & (draws < 0.75)).float().mean() > 0.6
    assert min(float(warp_cdf(warp, b) - warp_cdf(warp, a)) for a, b in zip(edges[:-1], edges[1:])) >= 0.1 * warp.floor


def warp_cdf(warp: TimeWarp, x: float) -> float:
    t, F = warp.knots()
    return float(torch.from_numpy(__import__("numpy").interp([x], t.numpy(), F.numpy())))


def test_density_is_the_cdfs_slope_and_importance_weights_keep_an_integral():
    warp = fitted_warp()
    grid = torch.linspace(0, 1, 20_001)
    f = warp.density(grid)
    assert float(torch.trapezoid(f, grid)) == pytest.approx(1.0, abs=1e-3) and f.min() >= warp.floor - 1e-6
    g = lambda t: torch.cos(3 * t) + 2  # noqa: E731 - any integrand, e.g. a row's L_inf at t
    draws = warp.sample(400_000, "cpu", torch.Generator().manual_seed(2))
    exact = (math.sin(3) / 3) + 2  # int_0^1 cos(3t) + 2 dt
    assert float((g(draws) / warp.density(draws)).mean()) == pytest.approx(exact, rel=2e-3)  # csdm stays unbiased
    steps = warp.grid(10, "cpu")
    assert steps[0] == 0 and steps[-1] == 1 and (steps.diff() > 0).all()
    assert (steps[1:-1] > 0.3).all()  # the sampling grid crowds where the loss changes


def test_time_warp_trains_resumes_exactly_and_travels_with_checkpoints_and_exports(tmp_path, toy):
    kw = dict(time_warp="sample", steps=12, threads=1, batch_size=32, t_draw="stratified")
    full = Engine(toy, **kw).fit()
    warp = full.method.objective.warp
    assert warp.warm and warp.loss.max() > 0  # every bin seen: the later steps drew warped times
    Engine(toy, out=tmp_path / "run", **kw).fit(until=7)
    resumed = Engine(toy, out=tmp_path / "run", **kw).fit()
    assert same_weights(full, resumed)
    assert torch.equal(resumed.method.objective.warp.loss, warp.loss)
    resumed.export(tmp_path / "exp")
    back = Engine.from_pretrained(tmp_path / "exp", task=toy)
    assert torch.allclose(back.method.objective.warp.loss, warp.loss)
    torch.testing.assert_close(back.sample(3, steps=4, seed=0), resumed.sample(3, steps=4, seed=0))


def test_normalised_embeddings_keep_the_set_norm_after_every_step(toy):
    eng = Engine(toy, embed_norm=4.0, steps=5, threads=1, lr=0.05)
    for _ in range(5):
        eng.fit(until=eng.step + 1)
        for model in (eng.model, eng.ema_eval):
            torch.testing.assert_close(model.codebook.table().norm(dim=-1), torch.full((toy.vocab_size + 2,), 4.0))
    assert eng.model.codebook.weight.norm(dim=-1).std() > 0  # the parameters stay free; the rows used are normalised
    free = Engine(toy, steps=5, threads=1, lr=0.05).fit()
    assert free.model.codebook.data.norm(dim=-1).std() > 1e-3


def test_l0_share_follows_the_spread_of_the_terms(toy):
    eng = Engine(toy, l0_rows="auto", steps=6, log_every=3, threads=1, batch_size=16)
    obj = eng.method.objective
    assert obj.l0_share() == 1.0  # nothing measured yet
    shares = []
    for _ in range(6):
        eng.fit(until=eng.step + 1)
        shares.append(obj.l0_share())
    sd0, sdr = obj.spread.tolist()
    assert sd0 > 0 and sdr > 0 and obj.l0_share() == pytest.approx(min(1.0, sd0 / sdr))
    assert shares[:2] == [1.0, 1.0] and shares[3:5] == [shares[2]] * 2  # read back every log_every=3 updates
    obj.spread, obj.updates = torch.tensor([1.0, 8.0], dtype=torch.float64), 8
    obj.track_spread(torch.tensor([1.0, 1.0]), torch.tensor([0.0, 16.0]), rate=1.0)  # update 9: read back
    assert obj.l0_share() == 0.125
    back = Engine(toy, l0_rows="auto", steps=6, log_every=3, threads=1, batch_size=16)
    back.method.load_state_dict(eng.method.state_dict())
    assert back.method.objective.l0_share() == 0.125 and torch.equal(back.method.objective.spread, obj.spread)
    vlb = Engine(toy, objective="csdm", l0_rows="auto", steps=3, threads=1, batch_size=16).fit()
    assert vlb.method.objective.spread is not None  # the VLB objectives share rows by the spread too
    with pytest.raises(ValueError, match=r"config l0_rows=0.0: must be in \(0, 1\], or auto"):
        Engine(toy, l0_rows=0.0)


def test_self_conditioning_rate_sets_the_share_of_rows_with_an_estimate(toy):
    eng = Engine(toy, self_cond=True, self_cond_rate=1.0, threads=1)
    x = toy.load("train").tokens[:8]
    noise = torch.randn(8, x.shape[1], eng.cfg.embed_dim)
    a, s = torch.full((8,), 0.8), torch.full((8,), 0.6)
    prev = eng.method.objective.self_condition(eng.model, x, a, s, noise, torch.full((8,), 0.3), None, rate=1.0)
    assert (prev.flatten(1).abs().sum(-1) > 0).all()  # every row got an estimate
    prev = eng.method.objective.self_condition(eng.model, x, a, s, noise, torch.full((8,), 0.3), None, rate=1e-9)
    assert prev.abs().sum() == 0
