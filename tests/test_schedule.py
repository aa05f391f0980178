import math

import pytest
import torch

from catdiff.methods.catdm.schedule import ShiftedCosineSchedule, draw_times


@pytest.mark.parametrize("shift", [0.0, -2.0, 3.0])
def test_variance_preserving_and_monotone(shift):
    sch = ShiftedCosineSchedule(shift, -12.0, 9.0)
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    a, s = sch.alpha_sigma(t)
    torch.testing.assert_close(a**2 + s**2, torch.ones_like(t))
    lam = sch.logsnr(t)
    assert (lam[1:] < lam[:-1]).all(), "log-SNR must decrease strictly in t"
    assert (sch.dsnr_dt(t) < 0).all()


def test_clipping_hits_the_bounds_exactly():
    sch = ShiftedCosineSchedule(-2.0, -15.0, 15.0)
    ends = sch.logsnr(torch.tensor([0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(ends, torch.tensor([15.0, -15.0], dtype=torch.float64))
    lam = sch.logsnr(torch.rand(1000, dtype=torch.float64))
    assert lam.min() >= -15.0 and lam.max() <= 15.0


def test_unclipped_middle_matches_paper_formula():
    # lambda(t) = -2 log tan(pi t / 2) + s, up to the time truncation; wide clip -> almost exact
    sch = ShiftedCosineSchedule(1.5, -60.0, 60.0)
    t = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    paper = -2 * torch.log(torch.tan(math.pi * t / 2)) + 1.5
    torch.testing.assert_close(sch.logsnr(t), paper, atol=1e-9, rtol=0)


def test_derivative_matches_finite_difference():
    sch = ShiftedCosineSchedule(-1.0, -10.0, 10.0)
    t = torch.tensor([0.1, 0.4, 0.9], dtype=torch.float64)
    h = 1e-6
    fd = (sch.logsnr(t + h) - sch.logsnr(t - h)) / (2 * h)
    torch.testing.assert_close(sch.dlogsnr_dt(t), fd, rtol=1e-6, atol=1e-6)


def test_bad_bounds():
    with pytest.raises(ValueError, match="logsnr_min"):
        ShiftedCosineSchedule(0.0, 5.0, -5.0)


def test_stratified_times_cover_the_axis_one_per_interval():
    torch.manual_seed(0)
    for n in (1, 7, 64):
        t = draw_times(n, "cpu", "stratified")
        assert t.shape == (n,) and ((t >= 0) & (t < 1)).all()
        assert torch.equal((t * n).floor().long().sort().values, torch.arange(n))  # one in each [i/n, (i+1)/n)
    # yet each row's t is U(0, 1) over draws (the loss's expectation is unchanged)
    first = torch.stack([draw_times(4, "cpu", "stratified")[0] for _ in range(4000)])
    assert first.mean().item() == pytest.approx(0.5, abs=0.02) and first.std().item() == pytest.approx(12**-0.5, abs=0.02)
    # the batch mean of stratified draws varies far less than of iid ones (the point of it)
    means = {how: torch.stack([draw_times(32, "cpu", how).mean() for _ in range(500)]).std().item()
             for how in ("iid", "stratified")}
    assert means["stratified"] < means["iid"] / 4


def test_iid_times_are_the_old_draw_and_unknown_names_fail():
    torch.manual_seed(3)
    want = torch.rand(16)
    torch.manual_seed(3)
    assert torch.equal(draw_times(16, "cpu", "iid"), want)  # the default leaves earlier runs reproducible
    with pytest.raises(ValueError, match="unknown t_draw 'sobol'"):
        draw_times(4, "cpu", "sobol")
