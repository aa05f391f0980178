"""Discrete-state methods (catdiff.methods): forward processes against their closed forms,
posteriors against brute-force Bayes, guidance and purity behaviour, engine round trips."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from catdiff import Engine

from catdiff.run import config

from catdiff.api import hooks
from catdiff.api.method import Method
from catdiff.methods import CATDM
from catdiff.methods.d3pm import cosine_abar
from catdiff.methods.discrete import MaskReplace, time_grid, x0_log_probs
from catdiff.methods.maskgit import mask_inputs
from catdiff.methods.vqdiffusion import linear_schedule, reveal
from catdiff.nn.model import Codebook, DenoiserOutput
from toytask import ToyCondTask, ToyTask


def step_matrices(abar, gbar, K):
    """Q_1..Q_T of eq. 2 ([K+1, K+1], Q[i, j] = q(x_t = i | x_{t-1} = j)) from the per-step
    alpha_t, gamma_t, beta_t implied by the cumulative schedule, written out entry by entry."""
    mats = [None]
    for t in range(1, len(abar)):
        a = abar[t] / abar[t - 1]
        g = 1 - (1 - gbar[t]) / (1 - gbar[t - 1])
        b = (1 - a - g) / K
        Q = torch.zeros(K + 1, K + 1, dtype=torch.float64)
        Q[:K, :K] = b
        Q[:K, :K] += a * torch.eye(K, dtype=torch.float64)
        Q[K, :K] = g
        Q[K, K] = 1.0
        mats.append(Q)
    return mats


def chain(mats, t, s=0):
    """Q_t Q_{t-1} ... Q_{s+1} (identity when t == s)."""
    out = torch.eye(mats[1].shape[0], dtype=torch.float64)
    for i in range(s + 1, t + 1):
        out = mats[i] @ out
    return out


PROCESSES = {
    "d3pm": lambda T: (cosine_abar(T), torch.zeros(T + 1, dtype=torch.float64)),
    "vqdiffusion": linear_schedule,
}


@pytest.mark.parametrize("kind", list(PROCESSES))
def test_forward_marginals_match_closed_form(kind):
    T, K = 8, 3
    abar, gbar = PROCESSES[kind](T)
    q = MaskReplace(abar, gbar, K)
    mats = step_matrices(abar, gbar, K)
    N = 20000
    g = torch.Generator().manual_seed(0)
    x = torch.full((N,), 1, dtype=torch.long)
    for t in range(1, T + 1):
        x = torch.multinomial(mats[t][:, x].T, 1, generator=g).squeeze(1)  # simulate the Markov chain
        closed = q.marginal(F.one_hot(torch.tensor([[1]]), K), torch.tensor([t]))[0, 0]
        assert torch.allclose(closed, chain(mats, t)[:, 1], atol=1e-12)  # eq. 4 = product of eq. 2 matrices
        empirical = torch.bincount(x, minlength=K + 1).double() / N
        tol = 5 * (closed * (1 - closed) / N).sqrt() + 1e-9
        assert ((empirical - closed).abs() <= tol).all(), (t, empirical, closed)
    if kind == "d3pm":
        assert torch.allclose(closed, torch.tensor([1 / K] * K + [0.0], dtype=torch.float64), atol=1e-9)  # x_T uniform
    else:
        assert closed[K] > 0.9999  # x_T is [mask]


@pytest.mark.parametrize("kind", list(PROCESSES))
@pytest.mark.parametrize("gap", [1, 3])
def test_posterior_matches_bayes(kind, gap):
    T, K, t = 8, 3, 6
    s = t - gap
    abar, gbar = PROCESSES[kind](T)
    q = MaskReplace(abar, gbar, K)
    mats = step_matrices(abar, gbar, K)
    fwd, marg_s = chain(mats, t, s), chain(mats, s)
    states = K + 1 if kind == "vqdiffusion" else K
    p0 = torch.softmax(torch.randn(K, dtype=torch.float64), 0)
    for x_t in range(states):
        brute = []
        for x0 in range(K):
            joint = fwd[x_t, :] * marg_s[:, x0]  # q(x_t | x_s) q(x_s | x_0) over x_s
            brute.append(joint / joint.sum())  # eq. 3 by Bayes
            ours = q.posterior(torch.tensor([[x_t]]), F.one_hot(torch.tensor([[x0]]), K),
                               torch.tensor([t]), torch.tensor([s]), reweight=kind == "vqdiffusion")[0, 0]
            assert torch.allclose(ours, brute[-1], atol=1e-12)
        # x0-parameterisations: VQ-Diffusion eq. 5 averages the posteriors; D3PM (Austin eq. 4) the joints
        args = (torch.tensor([[x_t]]), p0[None, None], torch.tensor([t]), torch.tensor([s]))
        vq = sum(p0[k] * brute[k] for k in range(K))
        assert torch.allclose(q.posterior(*args, reweight=True)[0, 0], vq, atol=1e-12)
        joint = sum(p0[k] * fwd[x_t, :] * marg_s[:, k] for k in range(K))
        assert torch.allclose(q.posterior(*args, reweight=False)[0, 0], joint / joint.sum(), atol=1e-12)


def test_maskgit_mask_counts_follow_cosine_schedule():
    M, N = 8, 40000
    x = torch.zeros(N, M, dtype=torch.long)
    x_in, masked, frac = mask_inputs(x, mask_id=99, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x_in == 99, masked) and torch.allclose(frac, masked.float().mean(1))
    counts = torch.bincount(masked.sum(1), minlength=M + 1).double() / N
    n = torch.arange(1, M + 1, dtype=torch.float64)
    closed = (2 / math.pi) * (torch.acos((n - 1) / M) - torch.acos(n / M))  # P(ceil(cos(pi r/2) M) = n)
    assert counts[0] == 0
    assert ((counts[1:] - closed).abs() <= 5 * (closed * (1 - closed) / N).sqrt()).all()
    per_position = masked.double().mean(0)  # positions chosen uniformly
    assert (per_position - per_position.mean()).abs().max() < 0.02


def test_time_grid():
    assert time_grid(1000, 5) == [1000, 800, 600, 400, 200, 0]
    assert time_grid(4, 50) == [4, 3, 2, 1, 0]
    with pytest.raises(ValueError, match="steps must be >= 1"):
        time_grid(10, 0)


class Stub(nn.Module):
    """A Denoiser stand-in: fixed logits [M, K] (plus ``shift`` for conditioned rows)."""

    def __init__(self, logits, shift=None):
        super().__init__()
        self.codebook = Codebook(logits.shape[-1], 4)
        self.table, self.shift = logits, shift

    def logits(self, z, t, cond=None):
        out = self.table.expand(z.shape[0], -1, -1).clone()
        if self.shift is not None and cond is not None:
            out = out + (cond != 3).float()[:, None, None] * self.shift
        return out

    def forward(self, tokens, alpha=None, sigma=None, noise=None, t=None, cond=None, targets=None):
        return DenoiserOutput(self.logits(self.codebook(tokens), t, cond), None, None, None, None)


@pytest.mark.parametrize("method", ["d3pm", "vqdiffusion"])
def test_elbo_is_exact_for_an_oracle_and_bounds_a_uniform_model(method):
    """An oracle x0 prediction of the only data point makes every KL term vanish (bound ~0); a
    uniform prediction makes the reverse chain generate independent uniform tokens,
    -log p = M log K, which the bound (prior + T * L_{t-1}, one t per row) must not undercut."""
    K, M, B = 3, 2, 4000
    eng = Engine(ToyTask(), method=method, discrete_steps=10, threads=1)
    x = torch.ones(B, M, dtype=torch.long)
    t = (torch.arange(B) + 0.5) / B
    oracle = Stub(F.one_hot(x[0], K).float() * 60.0)
    exact = eng.method.nll_bound(oracle, x, None, t)
    assert exact["diffusion"].abs().max() < 1e-6
    assert exact["prior"].max() < 1e-4  # vqdiffusion: abar_T = 9e-6 leaves a trace of x_0 at T
    torch.manual_seed(0)
    total = eng.method.nll_bound(Stub(torch.zeros(M, K)), x, None, t)["total"]
    se = total.std().item() / math.sqrt(B)
    assert total.mean().item() > M * math.log(K) - 3 * se
    if method == "d3pm":  # Austin's form with a uniform p~ is the exact reverse of uniform data: nearly tight
        assert total.mean().item() < M * math.log(K) + 1.0


def test_guidance_zero_is_the_plain_model_and_eq7():
    K, M = 5, 6
    table, shift = torch.randn(M, K), torch.randn(M, K)
    model = Stub(table, shift)
    x, t, cond = torch.randint(K, (2, M)), torch.rand(2), torch.tensor([0, 1])
    plain = F.log_softmax(table + shift, -1).expand(2, -1, -1)
    assert torch.allclose(x0_log_probs(model, x, t, cond, 0.0, None), plain, atol=1e-6)
    s = 2.0
    uncond = F.log_softmax(table, -1)
    eq7 = F.log_softmax(uncond + (s + 1) * (plain - uncond), -1)
    assert torch.allclose(x0_log_probs(model, x, t, cond, s, null_id=3), eq7, atol=1e-5)
    blind = Stub(table)  # ignores the condition: guidance changes nothing
    assert torch.allclose(x0_log_probs(blind, x, t, cond, s, null_id=3), F.log_softmax(table, -1).expand(2, -1, -1),
                          atol=1e-5)


def test_purity_reveals_the_most_confident_positions_first():
    K, M, B = 200, 12, 400
    confident = torch.tensor([2, 5, 7, 11])
    logits = torch.zeros(B, M, K, dtype=torch.float64)
    logits[:, confident, 0] = 12.0  # purity ~0.97 there, 1/K elsewhere (eq. 8)
    logp0 = F.log_softmax(logits, -1)
    masked = torch.ones(B, M, dtype=torch.bool)
    delta = torch.full((B,), 4)
    target = torch.zeros(M, dtype=torch.bool)
    target[confident] = True
    g = torch.Generator().manual_seed(0)
    pick, sharp = reveal(logp0, masked, delta, True, 1.0, g)
    assert (pick.sum(1) == 4).all()
    # importance sampling without replacement with weights = purity: P(all four confident first)
    w = logp0[0].exp().max(-1).values
    wc, wu = w[confident[0]].item(), w[0].item()
    exact = math.prod(k * wc / (k * wc + 8 * wu) for k in (4, 3, 2, 1))
    freq = (pick == target).all(1).double().mean().item()
    assert exact > 0.9 and abs(freq - exact) < 4 * math.sqrt(exact * (1 - exact) / B)
    assert (sharp.max(-1).values >= logp0.max(-1).values - 1e-12).all()  # eq. 11 sharpens
    rand_pick, same = reveal(logp0, masked, delta, False, 1.0, g)
    assert (rand_pick == target).all(1).float().mean() < 0.05 and torch.equal(same, logp0)
    masked[:, confident] = False  # only masked positions are eligible
    pick, _ = reveal(logp0, masked, delta, True, 1.0, g)
    assert not (pick & ~masked).any()


@pytest.mark.parametrize("method", ["d3pm", "vqdiffusion", "maskgit"])
def test_method_trains_samples_and_infills(method):
    eng = Engine(ToyCondTask(), method=method, steps=6, threads=1)
    assert eng.method.networks() == {}  # no teacher: the checkpoint holds the model and its sampling EMA
    eng.fit()
    n, M, K = 6, ToyCondTask.seq_len, ToyCondTask.vocab_size
    known = torch.randint(K, (n, M))
    known_mask = torch.rand(n, M) < 0.5
    for sampler in eng.method.samplers:
        x = eng.sample(n, steps=4, sampler=sampler, guidance=1.0)
        assert x.shape == (n, M) and x.min() >= 0 and x.max() < K
        filled = eng.sample(n, steps=4, sampler=sampler, known=known, known_mask=known_mask)
        assert torch.equal(filled[known_mask], known[known_mask]) and filled.max() < K
    if method != "maskgit":
        b = eng.likelihood(batches=1)
        assert math.isfinite(b["nll_bound_nats_per_token"]) and b["nll_bound_nats_per_token"] > 0
    with pytest.raises(ValueError, match="has samplers"):
        eng.sample(2, sampler="ddim")


def test_discrete_methods_reject_bad_settings():
    with pytest.raises(ValueError, match="discrete_steps"):
        Engine(ToyTask(), method="d3pm", discrete_steps=-1)
    eng = Engine(ToyTask(), method="vqdiffusion", threads=1)
    assert eng.method.T == 100 and eng.method.hybrid == 0.0005
    with pytest.raises(ValueError, match="final"):
        eng.sample(2, final="mode")
    with pytest.raises(KeyError, match="Known methods: ar, catdm, d3pm, maskgit, mdlm, udlm, vqdiffusion"):
        Engine(ToyTask(), method="nope")


class SteppedCATDM(CATDM):
    name = "stepped"
    options = {"my_steps": 3, "my_flag": False, "my_label": "x"}


class DefaultsTask(ToyTask):
    name = "toy-stepped"
    defaults = {**ToyTask.defaults, "method": "stepped"}
    options = {"data_dir": ""}


@pytest.fixture
def stepped_registry(monkeypatch):
    reg = hooks.build_registry(entry_points=[])
    reg.components["methods"]["stepped"] = hooks.Component("methods", "stepped", SteppedCATDM, "tests")
    monkeypatch.setattr(hooks, "_REGISTRY", reg)
    return reg


def test_method_options_follow_the_resolved_method_key(tmp_path, stepped_registry):
    cfg = config.for_task(DefaultsTask(), overrides={"my_steps": "5", "my_flag": "yes"})  # method from task defaults
    mine = ("data_dir", "my_steps", "my_flag", "my_label")
    assert cfg.method == "stepped" and {k: cfg.options[k] for k in mine} == {"data_dir": "", "my_steps": 5,
                                                                            "my_flag": True, "my_label": "x"}
    # the run's settings: the method's (its own and CATDM's, inherited), the backbone's, the task's
    from catdiff.nn.backbones import build_encoder
    from catdiff.methods.catdm import SETTINGS
    assert set(cfg.options) == {s.name for s in SETTINGS + build_encoder.settings} | set(mine)
    assert cfg.my_steps == 5 and cfg.shift == SteppedCATDM.settings[4].default
    method = SteppedCATDM(cfg)
    assert method.option("my_steps") == 5 and method.option("my_label") == "x"
    file = tmp_path / "run.json"
    file.write_text('{"method": "stepped", "my_steps": 7}')
    assert config.for_task(ToyTask(), file).task_options["my_steps"] == 7  # method from the config file
    with pytest.raises(ValueError, match="config key 'my_steps' is a setting of method 'stepped', which this run .method 'catdm'"):
        config.for_task(DefaultsTask(), file, {"method": "catdm"})  # overrides win: catdm has no my_steps
    with pytest.raises(ValueError, match="unknown config key 'steps_'.*my_flag, my_label, my_steps"):
        config.for_task(DefaultsTask(), overrides={"steps_": 1})
    with pytest.raises(KeyError, match="unknown method 'nope'. Known methods: ar, catdm, d3pm, maskgit, mdlm, stepped"):
        config.for_task(ToyTask(), overrides={"method": "nope"})
    # a config saved before the method had settings still resolves, with their defaults
    old = {k: v for k, v in cfg.to_dict().items() if k not in (*mine, "task")}
    again = config.for_task(DefaultsTask(), overrides=old)
    assert again.my_steps == 3 and SteppedCATDM(again).option("my_flag") is False
    assert Method.settings == () and Method(config.Config()).cfg.options == {}


def test_method_options_must_not_shadow_core_keys(stepped_registry, monkeypatch):
    monkeypatch.setattr(SteppedCATDM, "options", {"lr": 0.1})
    with pytest.raises(ValueError, match=r"config key 'lr' is declared by the core \(a run-level key\) and by method 'stepped'"):
        config.for_task(ToyTask(), overrides={"method": "stepped"})
