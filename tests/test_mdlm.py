"""MDLM (catdiff.methods.mdlm): the NELBO weight against hand computations, SUBS invariants,
cached == uncached sampling, the bound against an enumerated exact likelihood, every task kind."""
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from catdiff import Engine
from catdiff.api.errors import UserError
from catdiff.api.method import SampleRequest
from catdiff.api.task import Task, TokenData
from catdiff.cli import main as cli_main
from catdiff.methods.mdlm import alpha, corrupt, denoise, inverse_cdf, subs, weight
from catdiff.nn.model import Codebook, DenoiserOutput
from toytask import ToyCondTask, ToyTask

TINY = dict(layers=1, heads=2, width=32, embed_dim=16, batch_size=8, steps=3, warmup=1, n_samples=4,
            sample_steps=4, eval_batches=1, threads=1, log_every=100, ckpt_every=100)


class Stub(nn.Module):
    """A Denoiser stand-in with fixed logits ``table`` [M, K]; records its inputs."""

    def __init__(self, table):
        super().__init__()
        self.codebook = Codebook(table.shape[-1], 4)
        self.table, self.seen = table, []

    def forward(self, tokens, alpha=None, sigma=None, noise=None, t=None, cond=None, targets=None):
        self.seen.append((tokens.clone(), t.clone()))
        return DenoiserOutput(self.table.expand(len(tokens), -1, -1), None, None, None, None)


class Spy:
    """Wraps a Denoiser for the sampler: records every token input, counts network calls and rows."""

    def __init__(self, model):
        self.model, self.inputs, self.times, self.calls, self.rows = model, [], [], 0, 0
        self.codebook = self  # the sampler reads codebook.mask_id / vocab_size and embeds through codebook()
        self.mask_id, self.vocab_size = model.codebook.mask_id, model.codebook.vocab_size

    def __call__(self, tokens):
        self.inputs.append(tokens.clone())
        return self.model.codebook(tokens)

    def logits(self, z, t, cond=None):
        self.calls, self.rows = self.calls + 1, self.rows + len(z)
        self.times.append(t.clone())
        return self.model.logits(z, t, cond)


def toy_engine(**kw):
    return Engine(ToyCondTask(), method="mdlm", **{"threads": 1, **kw})


# ----------------------------------------------------------------- forward process and loss
def test_loss_weight_is_one_over_t_by_hand():
    """nll_bound and loss against a hand computation on fixed logits: w(t) = 1/t (log-linear)
    times the cross-entropy summed over the masked positions; the network sees z_t and t = 0."""
    K, M, B = 5, 6, 8
    table = torch.randn(M, K)
    logp = F.log_softmax(table, -1)
    method = toy_engine().method
    assert method.schedule == "loglinear" and method.eps == 1e-3
    x = torch.randint(K, (B, M), generator=torch.Generator().manual_seed(1))
    t = torch.tensor([1e-4, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
    stub = Stub(table)
    torch.manual_seed(0)
    got = method.nll_bound(stub, x, None, t)["total"]
    torch.manual_seed(0)
    masked = torch.rand(B, M, dtype=torch.float64) < t.double().clamp_min(1e-3)[:, None]
    ce = -logp[torch.arange(M), x]  # [B, M]
    by_hand = torch.stack([ce[b][masked[b]].double().sum() / max(t[b].item(), 1e-3) for b in range(B)])
    torch.testing.assert_close(got, by_hand, rtol=1e-6, atol=1e-6)
    tokens, t_in = stub.seen[-1]
    assert torch.equal(tokens, torch.where(masked, K, x)) and torch.equal(t_in, torch.zeros(B))
    assert masked[-1].all() and masked.sum() > 0

    torch.manual_seed(3)  # loss(): stratified t = (u + b/B) mod 1 from one offset, clamped, then the masks
    loss, logs = method.loss(stub, x, None)
    torch.manual_seed(3)
    t = ((torch.rand(1) + torch.arange(B) / B) % 1.0).double().clamp_min(1e-3)
    assert (t.sort().values.diff() > 0.1).all()  # one time per stratum
    masked = torch.rand(B, M, dtype=torch.float64) < t[:, None]
    by_hand = torch.stack([ce[b][masked[b]].double().sum() / t[b] for b in range(B)]).mean() / M
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert logs["l_nelbo"].item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert logs["mask_frac"].item() == pytest.approx(masked.double().mean().item())


@pytest.mark.parametrize("schedule", ["loglinear", "cosine"])
def test_schedules_masking_rate_and_weight(schedule):
    t = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    a = alpha(schedule, t)
    h = 1e-6
    deriv = (alpha(schedule, t + h) - alpha(schedule, t - h)) / (2 * h)
    torch.testing.assert_close(weight(schedule, t), -deriv / (1 - a), rtol=1e-6, atol=0)
    ends = alpha(schedule, torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert ends[0] == 1 and abs(ends[1]) < 1e-12 and (a.diff() < 0).all()
    if schedule == "loglinear":
        torch.testing.assert_close(weight(schedule, t), 1 / t)
    # q(z_t | x): each token masked independently with probability 1 - alpha_t
    N, M = 4000, 10
    times = torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64).repeat_interleave(N)
    x = torch.randint(7, (len(times), M))
    z, masked = corrupt(x, alpha(schedule, times), 7, torch.Generator().manual_seed(0))
    assert torch.equal(z == 7, masked) and torch.equal(z[~masked], x[~masked])
    rate = masked.double().view(3, -1).mean(1)
    expect = 1 - alpha(schedule, torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64))
    assert ((rate - expect).abs() < 4 * (expect * (1 - expect) / (N * M)).sqrt()).all()


def test_cosine_schedule_and_bad_options():
    eng = toy_engine(mdlm_schedule="cosine", mdlm_eps=0.01, steps=2)
    assert eng.method.schedule == "cosine" and eng.method.eps == 0.01
    eng.fit()
    assert eng.sample(2, steps=5).shape == (2, ToyCondTask.seq_len)
    with pytest.raises(UserError, match=r"config mdlm_schedule='linear': must be loglinear \| cosine"):
        toy_engine(mdlm_schedule="linear")
    with pytest.raises(UserError, match=r"config mdlm_eps=0.0: must be in \(0, 0.5\]"):
        toy_engine(mdlm_eps=0.0)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        eng.method.sample(eng.ema_eval, SampleRequest(2, 12, steps=0, sampler="cached", generator=torch.Generator()))
    with pytest.raises(ValueError, match="has samplers"):
        eng.sample(2, sampler="purity")


# ----------------------------------------------------------------- SUBS
def test_subs_zero_mask_mass_and_carry_over():
    eng = toy_engine()
    model, K = eng.ema_eval, ToyCondTask.vocab_size
    assert model.codebook.mask_id == K  # [mask] is row K: the K logit columns leave it no mass
    x = torch.randint(K, (4, 12))
    z, masked = corrupt(x, torch.full((4,), 0.5), K, torch.Generator().manual_seed(0))
    logp, aux = denoise(model, z, torch.tensor([0, 1, 2, 0]))
    assert logp.shape == (4, 12, K) and aux is None
    sub = subs(logp, z, K)
    torch.testing.assert_close(sub.exp().sum(-1), torch.ones(4, 12))
    assert torch.equal(sub[masked], logp[masked])
    assert torch.equal(sub[~masked].argmax(-1), z[~masked]) and (sub[~masked].max(-1).values == 0).all()
    assert torch.equal(inverse_cdf(sub, torch.rand(4, 12))[~masked], z[~masked])  # copied, whatever the draw
    # inverse CDF: right frequencies, never a zero-probability token
    lp = torch.log(torch.tensor([0.5, 0.0, 0.3, 0.2]))
    draws = inverse_cdf(lp.expand(20000, -1), torch.rand(20000, generator=torch.Generator().manual_seed(0)))
    freq = torch.bincount(draws, minlength=4).double() / 20000
    assert freq[1] == 0 and torch.allclose(freq, lp.exp().double(), atol=0.02)


@pytest.mark.parametrize("final", ["sample", "argmax"])
def test_sampling_never_changes_a_revealed_or_known_position(final):
    eng = toy_engine(steps=4)
    eng.fit()
    n, M, K = 6, ToyCondTask.seq_len, ToyCondTask.vocab_size
    g = torch.Generator().manual_seed(0)
    known = torch.randint(K, (n, M), generator=g)
    known_mask = torch.rand(n, M, generator=g) < 0.3
    spy = Spy(eng.ema_eval)
    out = eng.method.sample(spy, SampleRequest(n, M, steps=20, sampler="ancestral", final=final,
                                               cond=torch.tensor([0, 1, 2] * 2), guidance=1.0, null_id=3, known=known,
                                               known_mask=known_mask, generator=torch.Generator().manual_seed(1)))
    states = [s for s in spy.inputs] + [out]
    assert len(spy.inputs) == spy.calls >= 2 and all(len(s) == n for s in spy.inputs)
    assert all((t == 0).all() for t in spy.times)  # no time input
    assert (states[0] == K).sum() == (~known_mask).sum()  # start: all [mask] but the known positions
    for prev, nxt in zip(states[:-1], states[1:]):
        shown = prev != K
        assert torch.equal(nxt[shown], prev[shown])  # carry-over: never changed once unmasked
        assert ((prev == K) | (nxt != K)).all()  # never masked again
    for s in states:
        assert torch.equal(s[known_mask], known[known_mask])
    assert out.min() >= 0 and out.max() < K  # everything revealed, never [mask]


# ----------------------------------------------------------------- cached sampler
@pytest.mark.parametrize("final", ["sample", "argmax"])
def test_cached_sampler_equals_uncached_with_fewer_calls(final):
    """Same samples for the same generator; the cached sampler runs the network exactly on the
    rows that changed at the previous step (all rows at the first), read off the uncached trace."""
    eng = toy_engine(steps=60)
    eng.fit()
    n, M, K = 8, ToyCondTask.seq_len, ToyCondTask.vocab_size
    known = torch.randint(K, (n, M))
    known_mask = torch.rand(n, M) < 0.25
    for args in (dict(cond=torch.arange(n) % 3, guidance=2.0, null_id=3, known=None, known_mask=None),
                 dict(cond=torch.arange(n) % 3, guidance=0.0, null_id=3, known=known, known_mask=known_mask)):
        spies, outs = {}, {}
        for sampler in ("ancestral", "cached"):
            spies[sampler] = spy = Spy(eng.ema_eval)
            outs[sampler] = eng.method.sample(spy, SampleRequest(n, M, steps=50, sampler=sampler, final=final, **args,
                                                                 generator=torch.Generator().manual_seed(7)))
        assert torch.equal(outs["ancestral"], outs["cached"])
        trace = spies["ancestral"].inputs  # the state at every step that still had a [mask]
        changed = [(b != a).any(1).sum().item() for a, b in zip(trace[:-1], trace[1:])]
        per_row = 2 if args["guidance"] else 1  # guidance runs conditional and null rows together
        cached = spies["cached"]
        assert cached.calls == 1 + sum(c > 0 for c in changed) < spies["ancestral"].calls == len(trace)
        assert cached.rows == per_row * (n + sum(changed)) < spies["ancestral"].rows / 2
    # through the engine: cached is the default sampler, same samples as ancestral for the same seed
    assert eng.method.samplers[0] == "cached"
    torch.testing.assert_close(eng.sample(5, steps=30, seed=3, guidance=1.0),
                               eng.sample(5, steps=30, seed=3, guidance=1.0, sampler="ancestral"))


# ----------------------------------------------------------------- the bound against an exact likelihood
K2, M3 = 2, 3
ALL = torch.tensor(list(itertools.product(range(K2), repeat=M3)))
P = torch.tensor([0.30, 0.02, 0.08, 0.15, 0.05, 0.10, 0.10, 0.20], dtype=torch.float64)


class ExactTask(Task):
    """Sequences of 3 binary tokens from the fixed distribution P (8 sequences)."""

    name = "mdlm-exact"
    vocab_size, seq_len = K2, M3
    defaults = dict(layers=2, heads=2, width=32, embed_dim=16, batch_size=64, steps=300, warmup=10, lr=3e-3,
                    log_every=1000, ckpt_every=1000, eval_batches=1, ema_eval=0.99, threads=1)

    def load(self, split):
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        return TokenData(ALL[torch.multinomial(P.float(), 4096, True, generator=g)])

    def evaluate(self, tokens, labels, out_dir):
        return {}


def any_order_log_probs(model, x):
    """log prod_i x_theta(x_sigma(i) | x_sigma(<i)) [N, M!] for every ordering sigma: the
    continuous-time sampler reveals the positions in a uniformly random order."""
    orders = list(itertools.permutations(range(x.shape[1])))
    out = torch.zeros(len(x), len(orders), dtype=torch.float64)
    for o, sigma in enumerate(orders):
        z = torch.full_like(x, model.codebook.mask_id)
        for i in sigma:
            logp, _ = denoise(model, z, None)
            out[:, o] += logp[:, i].gather(-1, x[:, i : i + 1]).squeeze(-1).double()
            z[:, i] = x[:, i]
    return out


def test_bound_against_the_enumerated_likelihood():
    """After training on P: the Monte-Carlo NELBO of every sequence matches the exact any-order
    loss mean_sigma -log prod (which MDLM's continuous-time NELBO equals), is >= the exact
    -log p_theta(x) (Jensen), and its mean under P is close to the entropy of P; samples follow
    p_theta."""
    torch.manual_seed(0)
    eng = Engine(ExactTask(), method="mdlm")
    eng.fit()
    model = eng.ema_eval
    with torch.no_grad():
        logq = any_order_log_probs(model, ALL)
    any_order = -logq.mean(1)
    nll = -logq.exp().mean(1).log()  # -log p_theta(x), p_theta = mean over orderings of the products
    assert nll.neg().exp().sum().item() == pytest.approx(1.0, abs=1e-6)  # a distribution over the 8 sequences
    assert (any_order >= nll - 1e-12).all()
    R = 4096
    t = ((torch.arange(R) + torch.rand(R)) / R).repeat(len(ALL))
    bound = eng.method.nll_bound(model, ALL.repeat_interleave(R, 0), None, t)["total"].view(len(ALL), R)
    mc, se = bound.mean(1), bound.std(1) / math.sqrt(R)
    assert ((mc - any_order).abs() < 4 * se + 1e-3).all(), (mc, any_order, se)
    assert (mc >= nll - 4 * se).all()
    entropy = -(P * P.log()).sum().item()
    assert entropy <= (P * nll).sum().item() <= (P * mc).sum().item() + 4 * se.max().item()
    assert (P * mc).sum().item() - entropy < 0.1  # nats per sequence of 3 tokens
    lik = eng.likelihood(batches=1)
    assert abs(lik["nll_bound_nats_per_token"] * M3 - entropy) < 0.15
    samples = eng.sample(4000, steps=100, final="sample", seed=0)
    freq = torch.bincount((samples * torch.tensor([4, 2, 1])).sum(1), minlength=8).double() / len(samples)
    assert 0.5 * (freq - nll.neg().exp()).abs().sum() < 0.04


# ----------------------------------------------------------------- every kind of task
def text_task():
    from catdiff_text.tasks import TextTask

    words = "the of and to in a is that for it as with was on be by he his which".split()
    g = torch.Generator().manual_seed(0)

    class SmallText(TextTask):
        name = "small-text"
        seq_len = 32

        def corpus_text(self):
            return " " + " ".join(words[i] for i in torch.randint(len(words), (3000,), generator=g).tolist())

    return SmallText()


def tokens_task(tmp_path):
    from catdiff_tokens.task import TokensTask

    rng = np.random.default_rng(0)
    start, step = rng.integers(0, 9, (120, 1)), rng.integers(1, 3, (120, 1))
    np.save(tmp_path / "x.npy", ((start + step * np.arange(12)) % 9).astype(np.int32))
    np.save(tmp_path / "y.npy", (step[:, 0] - 1).astype(np.int16))
    return TokensTask(), dict(path=str(tmp_path / "x.npy"), labels=str(tmp_path / "y.npy"))


def translation_files(tmp_path, monkeypatch):
    monkeypatch.setenv("CATDIFF_CACHE", str(tmp_path / "cache"))
    for split in ("train", "valid", "test"):
        (tmp_path / f"{split}.de").write_text("das ist gu@@ t .\nwir gehen .\n")
        (tmp_path / f"{split}.en").write_text("that is go@@ od .\nwe go .\n")
    return "mt-iwslt14", dict(data_dir=str(tmp_path), embed_dim=8, width=16, max_len=8, batch_size=2,
                              sample_steps=2)


@pytest.mark.parametrize("kind", ["toy-cond", "digits", "text", "tokens", "translation"])
def test_trains_samples_and_bounds_on_every_task_kind(kind, tmp_path, monkeypatch):
    """One task per plugin and backbone: encoder (images, text, token arrays; conditional and
    not) and the translate plugin's encoder-decoder with its length head (aux loss)."""
    task, opts = {"toy-cond": lambda: (ToyCondTask(), {}), "digits": lambda: ("digits", {}),
                  "text": lambda: (text_task(), {}), "tokens": lambda: tokens_task(tmp_path),
                  "translation": lambda: translation_files(tmp_path, monkeypatch)}[kind]()
    eng = Engine(task, method="mdlm", **{**TINY, **opts})
    eng.fit()
    assert eng.method.collapse_report(eng.model, None, None) is None and eng.method.has_bound and eng.step == 3
    if kind in ("text", "translation"):
        metrics = eng.evaluate(out=tmp_path / "out")
        assert math.isfinite(metrics["nll_bound_bits_per_token"]) and metrics["nll_bound_bits_per_token"] > 0
        if kind == "text":
            assert math.isfinite(metrics["bpc"]) and metrics["bpc_se"] > 0  # bits per character from the bound
        else:
            assert "rerank_changed_frac" in metrics and metrics["bleu_tokenized"] >= 0
            assert (tmp_path / "out" / "translations.txt").read_text().count("H-") == 2
            x, cond = eng.rows(eng.data("train"), slice(0, 2), "train")
            _, logs = eng.method.loss(eng.model, x, cond)
            assert "aux" in logs  # the length head's loss is trained
        return
    b = eng.likelihood(batches=1)
    assert math.isfinite(b["nll_bound_nats_per_token"]) and b["nll_bound_nats_per_token"] > 0
    n, M, K = 4, eng.task.seq_len, eng.task.vocab_size
    guidance = 1.0 if eng.task.num_classes else 0.0
    known = torch.randint(K, (n, M))
    known_mask = torch.rand(n, M) < 0.5
    for sampler in eng.method.samplers:
        x = eng.sample(n, steps=6, sampler=sampler, guidance=guidance)
        assert x.shape == (n, M) and x.min() >= 0 and x.max() < K
        filled = eng.sample(n, steps=6, sampler=sampler, known=known, known_mask=known_mask)
        assert torch.equal(filled[known_mask], known[known_mask]) and filled.max() < K


def test_listed_and_rejects_nothing_it_should_accept(capsys):
    assert cli_main(["list"]) == 0
    assert any(line.split()[:1] == ["mdlm"] for line in capsys.readouterr().out.splitlines())
    eng = Engine(ToyTask(), method="mdlm", threads=1, sampler="ancestral")
    assert eng.method.has_bound and eng.sample(2, steps=1).max() < ToyTask.vocab_size  # one step reveals all
