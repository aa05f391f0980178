import math

import pytest
import torch

from catdiff.schedule import ShiftedCosineSchedule


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
