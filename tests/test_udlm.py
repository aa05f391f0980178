"""UDLM (catdiff.methods.udlm): the continuous-time ELBO against the discrete-time sum of KL terms
and against exact likelihoods, its estimator, the sampler against the chain the bound is about, and
the method end to end through the Engine (training, sampling, infilling, guidance, resume)."""
import itertools
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from catdiff import Engine
from catdiff.api.errors import UserError
from catdiff.api.method import SampleRequest
from catdiff.cli import main as cli_main
from catdiff.methods.discrete import MaskReplace, kl
from catdiff.methods.shared import draw_times
from catdiff.methods.udlm import UDLM, alpha, alpha_rate, corrupt, integrand, posterior, reconstruction
from catdiff.nn.model import DenoiserOutput
from helpers import fit_until_killed
from toytask import ToyCondTask, ToyTask

TINY = dict(layers=1, heads=2, width=32, embed_dim=16, batch_size=8, steps=3, warmup=1, n_samples=4,
            sample_steps=4, eval_batches=1, threads=1, log_every=100, ckpt_every=100)
F64 = torch.float64
SCHEDULES = ["loglinear", "cosine"]


def udlm(schedule="loglinear", eps=1e-3):
    return UDLM(SimpleNamespace(udlm_schedule=schedule, udlm_eps=eps))


class OneHot:
    """A codebook stand-in: token ids -> one-hot rows."""

    def __init__(self, K):
        self.vocab_size, self.mask_id = K, K

    def __call__(self, tokens):
        return F.one_hot(tokens, self.vocab_size).double()


class Net(nn.Module):
    """A fixed "network": logits linear in the one-hot z_t of every position plus a term in t, or a
    constant ``table`` [M, K]. Records the times it is given."""

    def __init__(self, K, M, seed=0, table=None):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.codebook = OneHot(K)
        self.W = torch.randn(M, K, M, K, generator=g, dtype=F64) * 1.5
        self.c = torch.randn(M, K, generator=g, dtype=F64)
        self.table, self.times = table, []

    def logits(self, z, t, cond=None):
        self.times.append(t.clone())
        if self.table is not None:
            return self.table.double().expand(len(z), -1, -1)
        return torch.einsum("smk,mknj->snj", z.double(), self.W) + t.double()[:, None, None] * self.c

    def forward(self, tokens, t=None, cond=None, targets=None):
        return DenoiserOutput(self.logits(self.codebook(tokens), t), None, None, None, None)

    def log_probs(self, z, t):
        """log x_theta [S, M, K] at token states z [S, M] and times t [S]."""
        return F.log_softmax(self.logits(self.codebook(z), t), -1)


def states(K, M):
    return torch.tensor(list(itertools.product(range(K), repeat=M)))


def q_states(Z, x, a, K):
    """q(z_t = Z_s | x) [T, S] for every state of ``Z`` [S, M] at the alphas ``a`` [T]."""
    a = a[:, None, None]
    return (a * (Z[None] == x) + (1 - a) / K).prod(-1)


def exact_bound(net, X, K, schedule, eps, U=2000):
    """Eq. (L) for each sequence of ``X`` [n, M] with every expectation over z exact (all K^M states):
    the integral over [eps, 1] by the midpoint rule in log t, plus the reconstruction term at eps.
    Returns (total, integral, reconstruction), each [n]."""
    Z = states(K, X.shape[1])
    S = len(Z)
    u = torch.linspace(math.log(eps), 0, U + 1, dtype=F64)
    t = ((u[1:] + u[:-1]) / 2).exp()
    tt, zz = t.repeat_interleave(S), Z.repeat(U, 1)
    a, rate, logp = alpha(schedule, tt), alpha_rate(schedule, tt), net.log_probs(zz, tt)
    a_eps = alpha(schedule, torch.full((S,), eps, dtype=F64))
    logp_eps = net.log_probs(Z, torch.full((S,), eps, dtype=F64))
    out = []
    for x in X:
        G = integrand(logp, x.expand(len(zz), -1), zz, a, rate).sum(1).view(U, S)
        diff = ((G * q_states(Z, x, alpha(schedule, t), K)).sum(1) * t).sum() * (u[1] - u[0])
        rec = reconstruction(logp_eps, x.expand(S, -1), Z, a_eps).sum(1)
        rec = (rec * q_states(Z, x, a_eps[:1], K)[0]).sum()
        out.append(torch.stack([diff + rec, diff, rec]))
    return torch.stack(out).T


def discrete_bound(net, X, K, schedule, N):
    """The N-step ELBO of each sequence of ``X`` [n, M] by brute force, with the posteriors of the D3PM
    machinery (MaskReplace, code independent of udlm.posterior): sum_j E_{z_{t_j} ~ q} KL(q(z_{t_{j-1}} |
    z_{t_j}, x) || p_theta) over t_j = j / N, the j = 1 term being -log p_theta(x | z_{1/N}); the prior
    term is 0 (alpha_1 = 0)."""
    Z = states(K, X.shape[1])
    S = len(Z)
    ab = alpha(schedule, torch.linspace(0, 1, N + 1, dtype=F64))
    q = MaskReplace(ab, torch.zeros_like(ab), K)
    j, zz = torch.arange(1, N + 1).repeat_interleave(S), Z.repeat(N, 1)
    p_theta = q.posterior(zz, net.log_probs(zz, j / N).exp(), j, j - 1, False)
    out = []
    for x in X:
        q_true = q.posterior(zz, F.one_hot(x, K).expand(len(zz), -1, -1), j, j - 1, False)
        out.append((kl(q_true, p_theta).sum(-1).view(N, S) * q_states(Z, x, ab[1:], K)).sum())
    return torch.stack(out)


def chain_probs(net, K, M, schedule, N):
    """p_N(x) [K^M] of the N-step ancestral sampler (final = sample), exactly: the sampler as a
    Markov chain on the K^M states, from the uniform z_1."""
    Z = states(K, M)
    S = len(Z)
    times = torch.linspace(1, 0, N + 1, dtype=F64)
    ab = alpha(schedule, times)
    zz = Z.repeat(N, 1)
    steps = posterior(net.log_probs(zz, times[:-1].repeat_interleave(S)).exp(), zz,
                      ab[:-1].repeat_interleave(S), ab[1:].repeat_interleave(S)).view(N, S, M, K)
    T = torch.ones(N, S, S, dtype=F64)
    for pos in range(M):
        T = T * steps[:, :, pos][..., Z[:, pos]]
    p = torch.full((S,), 1 / S, dtype=F64)
    for j in range(N):
        p = p @ T[j]
    return p


def frequencies(tokens, K):
    """Empirical distribution over the K^M states (in the order of ``states``)."""
    code = (tokens * K ** torch.arange(tokens.shape[1] - 1, -1, -1)).sum(1)
    return torch.bincount(code, minlength=K ** tokens.shape[1]).double() / len(tokens)


def run_sampler(net, n, M, steps, schedule="loglinear", final="sample", seed=0, **kw):
    return udlm(schedule).sample(net, SampleRequest(n, M, steps=steps, sampler="ancestral", final=final,
                                                    generator=torch.Generator().manual_seed(seed), **kw))


# ----------------------------------------------------------------- forward process and posterior
def test_forward_noise_and_posterior():
    """q(z_t | x) keeps x with probability alpha_t + (1 - alpha_t)/K; the posterior (P) equals the D3PM
    machinery's (MaskReplace with gamma = 0) for soft and one-hot x, and UDLM's closed form for one-hot x."""
    K, n = 5, 20000
    a = torch.tensor([0.8, 0.3], dtype=F64).repeat_interleave(n)
    x = torch.randint(K, (2 * n, 4), generator=torch.Generator().manual_seed(0))
    z = corrupt(x, a, K, torch.Generator().manual_seed(1))
    keep = (z == x).double().view(2, -1).mean(1)
    expect = torch.tensor([0.8, 0.3], dtype=F64) + torch.tensor([0.2, 0.7], dtype=F64) / K
    assert ((keep - expect).abs() < 4 * (expect * (1 - expect) / (4 * n)).sqrt()).all()
    assert frequencies(z[n:][(z != x)[n:]][:, None], K).min() > 0.15  # the replacements are uniform over K

    ab = torch.tensor([1.0, 0.9, 0.5, 0.2, 0.0], dtype=F64)
    q = MaskReplace(ab, torch.zeros_like(ab), K)
    g = torch.Generator().manual_seed(2)
    p = torch.softmax(torch.randn(3, 6, K, generator=g, dtype=F64), -1)
    y = torch.randint(K, (3, 6), generator=g)
    z = torch.randint(K, (3, 6), generator=g)
    for t, s in [(4, 3), (3, 1), (2, 0), (4, 0), (1, 0)]:
        ts, ss = torch.full((3,), t), torch.full((3,), s)
        for x0 in (p, F.one_hot(y, K).double()):
            ref = q.posterior(z, x0, ts, ss, False)
            assert ref[..., K].abs().max() == 0
            torch.testing.assert_close(posterior(x0, z, ab[t], ab[s]), ref[..., :K], rtol=1e-12, atol=1e-12)
        # UDLM's form: (K a_t z*x + (a_{t|s} - a_t) z + (a_s - a_t) x + (1 - a_{t|s})(1 - a_s)/K)
        #              / (K a_t <z, x> + 1 - a_t)
        a_t, a_s = ab[t], ab[s]
        zo, xo = F.one_hot(z, K).double(), F.one_hot(y, K).double()
        num = K * a_t * zo * xo + (a_t / a_s - a_t) * zo + (a_s - a_t) * xo + (1 - a_t / a_s) * (1 - a_s) / K
        den = K * a_t * (zo * xo).sum(-1, keepdim=True) + 1 - a_t
        torch.testing.assert_close(posterior(xo, z, a_t, a_s), num / den)


# ----------------------------------------------------------------- the continuous-time ELBO
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_integrand_is_the_limit_of_one_discrete_kl_term(schedule):
    """E_z KL(q(z_s | z_t, x) || p_theta(z_s | z_t)) / (s - t) -> E_z sum_l G as s -> t (eq. (G)), for a
    network that depends on every position of z_t and on t; G >= 0, and G = 0 where x_theta = x."""
    K, M, dt = 4, 2, 1e-6
    net, Z = Net(K, M, seed=1), states(K, M)
    S = len(Z)
    for t in (0.01, 0.3, 0.7, 0.99):
        tt, ss = torch.full((S,), t, dtype=F64), torch.full((S,), t - dt, dtype=F64)
        a_t, a_s = alpha(schedule, tt[:1]), alpha(schedule, ss[:1])
        logp = net.log_probs(Z, tt)
        for x in Z[[0, 5, 11]]:
            w = q_states(Z, x, a_t, K)[0]
            step = (kl(posterior(F.one_hot(x, K).expand(S, -1, -1), Z, a_t, a_s), posterior(logp.exp(), Z, a_t, a_s))
                    .sum(-1) * w).sum() / dt
            G = integrand(logp, x.expand(S, -1), Z, alpha(schedule, tt), alpha_rate(schedule, tt))
            assert (G >= 0).all()
            assert (G.sum(1) * w).sum().item() == pytest.approx(step.item(), rel=2e-4)
            perfect = F.one_hot(x, K).double().expand(S, -1, -1).clamp_min(1e-300).log()
            zero = integrand(perfect, x.expand(S, -1), Z, alpha(schedule, tt), alpha_rate(schedule, tt))
            assert zero.abs().max() < 1e-12


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_continuous_bound_is_the_limit_of_the_discrete_elbo(schedule):
    """Eq. (L) with eps = 1/N against the N-step discrete ELBO summed by brute force (its last step is
    the same reconstruction term): within 1e-3 relative at N = 2000 for every x, and the gap shrinks
    like 1/N (so it is a limit, not a coincidence at one N)."""
    K, M = 3, 2
    net = Net(K, M, seed=0)
    X = states(K, M)
    gaps = {N: (exact_bound(net, X, K, schedule, 1 / N)[0] / discrete_bound(net, X, K, schedule, N) - 1).abs().max()
            for N in (250, 2000)}
    assert gaps[2000] < 1e-3, gaps
    assert 4 < gaps[250] / gaps[2000] < 16, gaps


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_bound_is_exact_for_the_exact_reverse_model(schedule):
    """One position (M = 1), x_theta = P for every z_t: p_theta(z_s | z_t) is then the exact reverse of
    the forward marginals (the plug-in posterior (P) mixes the joints), so every N-step sampler draws
    exactly P, the model's path posterior is q's and the ELBO is tight: the bound equals -log P(x)."""
    K = 3
    P = torch.tensor([0.6, 0.3, 0.1], dtype=F64)
    net = Net(K, 1, table=P.log()[None])
    total, diff, rec = exact_bound(net, states(K, 1), K, schedule, 1e-3)
    torch.testing.assert_close(total, -P.log(), rtol=0, atol=1e-5)
    assert (rec > 0).all() and (diff > 0).all()
    for N in (1, 2, 7):
        torch.testing.assert_close(chain_probs(net, K, 1, schedule, N), P)
    freq = frequencies(run_sampler(net, 20000, 1, steps=2, schedule=schedule), K)
    assert 0.5 * (freq - P).abs().sum() < 0.015


def test_bound_is_above_the_exact_nll():
    """K = 3, two positions, a fixed network: the exact likelihood p_N of the N-step sampler by
    enumeration of the chain; the discrete ELBO and the continuous bound are both >= -log p_N(x) for
    every x. The sampler draws from exactly that chain (checked at N = 3 by frequencies)."""
    K, M, N = 3, 2, 2000
    net = Net(K, M, seed=0)
    p = chain_probs(net, K, M, "loglinear", N)
    assert p.sum().item() == pytest.approx(1.0, abs=1e-9)
    X, nll = states(K, M), -p.log()
    assert (discrete_bound(net, X, K, "loglinear", N) >= nll).all()
    assert (exact_bound(net, X, K, "loglinear", 1e-3)[0] >= nll).all()
    for final in ("sample", "argmax"):
        freq = frequencies(run_sampler(net, 20000, M, steps=3, final=final), K)
        p3 = chain_probs(net, K, M, "loglinear", 3)
        if final == "argmax":  # the last step takes the mode of (P) at s = 0: a different distribution
            assert 0.5 * (freq - p3).abs().sum() > 0.05
        else:
            assert 0.5 * (freq - p3).abs().sum() < 0.02


# ----------------------------------------------------------------- the estimator
def test_estimator_mean_is_the_bound_and_network_inputs():
    """nll_bound (one z_t and t per row; t < eps: the reconstruction divided by eps) averages to eq. (L)
    computed exactly; the network sees t clamped to >= eps and z_t; ``loss`` is the batch mean per token."""
    K, M, eps = 3, 2, 0.05  # a large eps, so that the reconstruction rows matter
    net, x = Net(K, M, seed=3), torch.tensor([1, 2])
    method = udlm(eps=eps)
    total, diff, rec = exact_bound(net, x[None], K, "loglinear", eps)[:, 0]
    R = 40000
    t = (torch.arange(R) + torch.rand(R, generator=torch.Generator().manual_seed(0))) / R
    torch.manual_seed(0)
    b = method.nll_bound(net, x.repeat(R, 1), None, t)
    assert set(b) == {"total", "diffusion", "reconstruction"} and b["total"].dtype == F64
    torch.testing.assert_close(b["total"], b["diffusion"] + b["reconstruction"])
    assert (b["reconstruction"][t >= eps] == 0).all() and (b["diffusion"][t < eps] == 0).all()
    for est, exact in ((b["total"], total), (b["diffusion"], diff), (b["reconstruction"], rec)):
        assert abs(est.mean() - exact) < 4 * est.std() / math.sqrt(R) + 1e-9, (est.mean(), exact)
    torch.testing.assert_close(net.times[-1], t.double().clamp_min(eps).float())

    B = 16
    xb = torch.randint(K, (B, M), generator=torch.Generator().manual_seed(4))
    torch.manual_seed(5)
    loss, logs = method.loss(net, xb, None)
    torch.manual_seed(5)
    tb = draw_times(B, "cpu", "stratified")
    by_hand = method.nelbo(net, xb, None, tb, K)[0].mean() / M
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert logs["l_nelbo"].item() == pytest.approx(loss.item())
    assert 0 < logs["noise_frac"] < 1 and torch.equal(net.times[-1], tb.double().clamp_min(eps).float())


def test_perfect_denoiser_has_zero_loss():
    """x_theta = one-hot of the true x: every KL term and the reconstruction vanish, at every t."""
    K, M = 5, 6
    x = torch.tensor([0, 4, 2, 2, 1, 3])
    net = Net(K, M, table=F.one_hot(x, K).double().log())  # log 0 = -inf off the true token
    method = udlm()
    t = torch.cat([torch.rand(32) * 1e-3, torch.rand(96)])
    for schedule in SCHEDULES:
        method.schedule = schedule
        b = method.nll_bound(net, x.repeat(len(t), 1), None, t)
        assert b["total"].abs().max() < 1e-9 and (t < 1e-3).any()
    loss, _ = method.loss(net, x.repeat(16, 1), None)
    assert abs(loss.item()) < 1e-9
    assert method.nll_bound(Net(K, M, seed=1), x.repeat(64, 1), None, torch.rand(64))["total"].min() > 0


# ----------------------------------------------------------------- the sampler
def test_sampler_steps_generator_and_infilling():
    """1 step is x_theta at t = 1; N steps see t = 1, (N-1)/N, ..., 1/N; the generator makes it
    reproducible; known positions are held in every network input and in the output."""
    K, M, n = 4, 5, 300
    net = Net(K, M, seed=2)
    one = run_sampler(net, n, M, steps=1, final="argmax")
    z1 = torch.randint(K, (n, M), generator=torch.Generator().manual_seed(0))  # the sampler's z_1
    assert torch.equal(one, net.log_probs(z1, torch.ones(n)).argmax(-1))  # (P) at t = 1, s = 0 is x_theta
    for steps in (1, 2, 5):
        net.times.clear()
        a = run_sampler(net, n, M, steps=steps, seed=3)
        assert a.shape == (n, M) and a.dtype == torch.long and 0 <= a.min() and a.max() < K
        assert [tt[0].item() for tt in net.times] == pytest.approx([1 - j / steps for j in range(steps)])
        assert torch.equal(a, run_sampler(net, n, M, steps=steps, seed=3))
        assert not torch.equal(a, run_sampler(net, n, M, steps=steps, seed=4))
    known = torch.randint(K, (n, M))
    known_mask = torch.rand(n, M) < 0.4
    seen = []
    net.logits = lambda z, t, cond=None, f=net.logits: seen.append(z.argmax(-1)) or f(z, t, cond)
    out = run_sampler(net, n, M, steps=6, known=known, known_mask=known_mask)
    assert len(seen) == 6 and torch.equal(out[known_mask], known[known_mask])
    assert all(torch.equal(s[known_mask], known[known_mask]) for s in seen)
    assert (out[~known_mask] != known[~known_mask]).any()
    with pytest.raises(ValueError, match="steps must be >= 1"):
        run_sampler(net, 2, M, steps=0)
    with pytest.raises(ValueError, match="both `known`"):
        run_sampler(net, 2, M, steps=2, known=known[:2])


# ----------------------------------------------------------------- through the Engine
def test_trains_samples_guides_and_bounds_end_to_end(tmp_path):
    """digits (the vision plugin, an unconditional image task) and a class-conditional toy task: a
    tiny training run, a finite positive bound with its parts, samples in range, infilling, guidance."""
    for task in ("digits", ToyCondTask()):
        eng = Engine(task, method="udlm", **TINY)
        eng.fit()
        assert eng.method.collapse_report(eng.model, None, None) is None and eng.method.has_bound and eng.step == 3
        b = eng.likelihood(batches=1)
        assert math.isfinite(b["nll_bound_nats_per_token"]) and b["nll_bound_nats_per_token"] > 0
        assert {"nll_bound_diffusion_per_token", "nll_bound_reconstruction_per_token"} <= set(b)
        n, M, K = 4, eng.task.seq_len, eng.task.vocab_size
        guidance = 1.0 if eng.task.num_classes else 0.0
        x = eng.sample(n, steps=3, guidance=guidance)
        assert x.shape == (n, M) and x.min() >= 0 and x.max() < K
        known, known_mask = torch.randint(K, (n, M)), torch.rand(n, M) < 0.5
        filled = eng.sample(n, steps=3, known=known, known_mask=known_mask, final="sample")
        assert torch.equal(filled[known_mask], known[known_mask]) and filled.max() < K
    assert eng.method.samplers == ("ancestral",) and eng.task.num_classes == 3
    plain, guided = (eng.sample(8, steps=4, seed=1, guidance=w) for w in (0.0, 3.0))
    assert not torch.equal(plain, guided)  # the null-class prediction enters the steps
    metrics = eng.evaluate(out=tmp_path / "eval")
    assert math.isfinite(metrics["nll_bound_bits_per_token"])


def test_checkpoint_resume_and_settings(tmp_path, monkeypatch, capsys):
    """A run cut at step 4 and resumed from its step-3 checkpoint ends with the weights of an
    uninterrupted run; the checkpoint restores the method's settings and samples identically;
    udlm_schedule / udlm_eps are checked; `catdiff list` shows the method."""
    opts = dict(method="udlm", udlm_schedule="cosine", udlm_eps=0.01, steps=6, threads=1, layers=1, width=32,
                embed_dim=16, batch_size=8, warmup=1, log_every=100)
    full = Engine(ToyTask(), **opts).fit()
    cut = Engine(ToyTask(), out=tmp_path, ckpt_every=3, **opts)
    fit_until_killed(cut, 4, monkeypatch)
    resumed = Engine(ToyTask(), out=tmp_path, ckpt_every=3, **opts)
    assert resumed.step == 3
    resumed.fit()
    for a, b in ((full.model, resumed.model), (full.ema_eval, resumed.ema_eval)):
        assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    back = Engine.from_checkpoint(tmp_path / "last.pt", task=ToyTask())
    assert back.method.schedule == "cosine" and back.method.eps == 0.01 and back.step == 6
    assert torch.equal(back.sample(4, steps=3, seed=0), resumed.sample(4, steps=3, seed=0))

    with pytest.raises(UserError, match=r"config udlm_schedule='linear': must be loglinear \| cosine"):
        Engine(ToyTask(), method="udlm", udlm_schedule="linear")
    with pytest.raises(UserError, match=r"config udlm_eps=0.0: must be in \(0, 0.5\]"):
        Engine(ToyTask(), method="udlm", udlm_eps=0.0)
    with pytest.raises(UserError, match="has samplers"):
        back.sample(2, sampler="cached")
    capsys.readouterr()
    assert cli_main(["list"]) == 0
    assert any(line.split()[:1] == ["udlm"] for line in capsys.readouterr().out.splitlines())
    assert cli_main(["list", "udlm"]) == 0
    assert "udlm_schedule" in capsys.readouterr().out
