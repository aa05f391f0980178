"""The autoregressive method (catdiff.methods.ar): causal backbones and their KV cache against
full recomputation, the exact likelihood against an independent computation, the samplers'
invariants (beam 1 = top-k 1 = greedy, nucleus, temperature), infilling, every kind of task."""
import itertools
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from catdiff import Engine
from catdiff.api.task import TokenData
from catdiff.cli import main as cli_main
from catdiff.methods.ar import filtered_log_probs, shift_right
from catdiff.nn.backbones.encoder import EncoderTransformer, KVCache
from catdiff.run.config import make as Config
from toytask import ToyCondTask, ToyTask, progressions

TINY = dict(layers=2, heads=2, width=32, embed_dim=16, threads=1)


def perturb(model, std=0.1, seed=1):
    """Give every weight (the zero-initialised AdaLN too) a random nudge, so nothing is trivially 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model


def incremental(net, z, t, cond, chunks):
    """Logits of ``net`` fed through one KV cache in pieces of the given sizes (summing to M),
    with the rows reversed after the first piece (as beam search reorders them)."""
    cache, out, lo = KVCache(z.shape[1]), [], 0
    for i, m in enumerate(chunks):
        out.append(net(z[:, lo : lo + m], t, cond, cache=cache))
        lo += m
        if i == 0:
            rev = torch.arange(len(z) - 1, -1, -1)
            cache.reorder(rev)
            z, t, cond, out = z[rev], t[rev], None if cond is None else cond[rev], [o[rev] for o in out]
    return torch.cat(out, 1), z, t, cond


ENCODERS = {
    "sinusoidal": {},
    "rotary": dict(positions="rotary"),
    "conv-grid": dict(conv_kernel=3, token_grid="3x4"),
    "conv-seq": dict(conv_kernel=3),
    "conv5-grid-rotary": dict(conv_kernel=5, token_grid="3x4", positions="rotary"),
}


@pytest.mark.parametrize("kind", list(ENCODERS))
def test_encoder_kv_cache_equals_full_recomputation(kind):
    """Token by token (and a 3-token prompt first) the cached logits equal those of one full causal
    pass, and the full pass is causal: changing input j moves positions >= j only."""
    torch.manual_seed(0)
    net = perturb(EncoderTransformer(Config(**TINY, **ENCODERS[kind]), 11, 12, 3, causal=True).eval())
    g = torch.Generator().manual_seed(0)
    z, t, cond = torch.randn(3, 12, 16, generator=g), torch.rand(3, generator=g), torch.tensor([0, 2, 3])
    with torch.no_grad():
        full = net(z, t, cond)
        for chunks in ([1] * 12, [3] + [1] * 9, [5, 2, 5]):
            inc, _, _, _ = incremental(net, z, t, cond, chunks)
            torch.testing.assert_close(inc, full.flip(0), atol=1e-5, rtol=1e-5)
        bumped = z.clone()
        bumped[:, 6] += 1.0
        moved = (net(bumped, t, cond) - full).abs().amax((0, 2))
    assert (moved[:6] == 0).all() and (moved[6:] > 1e-4).all(), moved
    with pytest.raises(ValueError, match="exceed the model's seq_len"):
        cache = KVCache(12)
        cache.length = 11
        net(z[:, :2], t, cond, cache=cache)


def test_causal_is_a_constructor_argument_and_off_by_default():
    off = EncoderTransformer(Config(**TINY), 11, 12)
    on = EncoderTransformer(Config(**TINY), 11, 12, causal=True)
    assert not off.causal and on.causal and on.local is None
    on.load_state_dict(off.state_dict())  # same parameters: causality is a mask, not a weight
    z, t = torch.randn(2, 12, 16), torch.rand(2)
    assert not torch.allclose(off(z, t)[:, 0], on(z, t)[:, 0])  # position 0 of the bidirectional one sees the rest
    with pytest.raises(ValueError, match="needs a causal EncoderTransformer"):
        off(z, t, cache=KVCache(12))


def test_encdec_kv_cache_equals_full_recomputation():
    pytest.importorskip("catdiff_translate")
    from catdiff_translate.backbone import EncoderDecoder

    for positions in ("sinusoidal", "rotary"):
        cfg = SimpleNamespace(layers=2, heads=2, width=32, mlp_ratio=2.0, dropout=0.0, embed_dim=8, positions=positions,
                              pos_scale=1.0, task_options={})
        torch.manual_seed(0)
        net = perturb(EncoderDecoder(cfg, 11, 6, 13, 0, causal=True).eval())
        assert net.causal
        z, t = torch.randn(3, 6, 8), torch.zeros(3)
        src = torch.tensor([[3, 4, 5, 0], [6, 0, 0, 0], [7, 8, 9, 10]])
        with torch.no_grad():
            full = net(z, t, src)
            for chunks in ([1] * 6, [2, 1, 3]):
                inc, _, _, _ = incremental(net, z, t, src, chunks)
                torch.testing.assert_close(inc, full.flip(0), atol=1e-5, rtol=1e-5)
            bumped = z.clone()
            bumped[:, 3] += 1.0
            moved = (net(bumped, t, src) - full).abs().amax((0, 2))
        assert (moved[:3] == 0).all() and (moved[3:] > 1e-4).all(), moved
        bidirectional = EncoderDecoder(cfg, 11, 6, 13, 0)
        assert not bidirectional.causal


@pytest.fixture(scope="module")
def trained():
    """toy-cond after 40 AR steps (about a second)."""
    torch.manual_seed(0)
    return Engine(ToyCondTask(), method="ar", steps=40, **TINY).fit()


def test_nll_is_the_summed_cross_entropy_of_every_prefix(trained):
    """nll_bound = -sum_i log p(x_i | x_<i, y), each term computed here from a separate forward pass
    over the prefix alone (start token + x_<i), so no future token exists for it to see."""
    eng = trained
    model, K = eng.ema_eval, eng.task.vocab_size
    x, cond = eng.data("test").tokens[:8], eng.data("test").labels[:8]
    exact = torch.zeros(8, dtype=torch.float64)
    with torch.no_grad():
        for i in range(x.shape[1]):
            z = model.codebook(shift_right(x, model.codebook.mask_id)[:, : i + 1])
            logp = F.log_softmax(model.net(z, torch.zeros(8), cond)[:, -1].double(), -1)
            exact -= logp.gather(1, x[:, i : i + 1]).squeeze(1)
    for t in (torch.zeros(8), torch.rand(8)):  # t is ignored
        torch.testing.assert_close(eng.method.nll_bound(model, x, cond, t)["total"], exact, atol=1e-4, rtol=1e-5)
    # the engine's bound is that exact NLL per token, and 40 steps have learnt part of the data
    lik = eng.likelihood(batches=1, batch_size=8)
    assert lik["nll_bound_nats_per_token"] == pytest.approx(exact.mean().item() / x.shape[1], rel=1e-5)
    assert lik["nll_bound_nats_per_token"] < math.log(K) - 0.4


def test_beam_size_1_and_top_k_1_equal_greedy(trained):
    eng, n, M = trained, 8, ToyCondTask.seq_len
    opts = eng.cfg.task_options
    labels = torch.arange(n) % 3
    known = torch.randint(ToyCondTask.vocab_size, (n, M), generator=torch.Generator().manual_seed(3))
    mask = torch.rand(n, M, generator=torch.Generator().manual_seed(4)) < 0.3
    mask[:, :2] = True  # a prompt
    for kw in (dict(), dict(guidance=1.5), dict(known=known, known_mask=mask)):
        greedy = eng.sample(n, sampler="greedy", labels=labels, **kw)
        opts["beam_size"] = 1
        assert torch.equal(eng.sample(n, sampler="beam", labels=labels, **kw), greedy)
        opts.update(top_k=1, temperature=3.0)
        assert torch.equal(eng.sample(n, sampler="sample", labels=labels, seed=5, **kw), greedy)
        opts.update(top_k=0, top_p=1e-6)  # the nucleus of the smallest mass is the top token
        assert torch.equal(eng.sample(n, sampler="sample", labels=labels, seed=6, **kw), greedy)
        opts.update(top_k=0, top_p=1.0, temperature=1.0, beam_size=4)
    # greedy is the argmax of the full (uncached) recomputation at every free position
    model, x = eng.ema_eval, greedy
    with torch.no_grad():
        logits = model.logits(model.codebook(shift_right(x, model.codebook.mask_id)), torch.zeros(n), labels)
    assert torch.equal(logits.argmax(-1)[~mask], x[~mask]) and torch.equal(x[mask], known[mask])
    plain = eng.sample(n, sampler="sample", labels=labels, seed=7)
    assert not torch.equal(plain, eng.sample(n, sampler="greedy", labels=labels))  # sampling does sample


class Tiny(ToyTask):
    name = "toy-tiny"
    vocab_size, seq_len = 3, 3

    def load(self, split):
        return progressions(64, self.seq_len, self.vocab_size, 0)


def test_beam_search_finds_the_most_likely_sequence():
    """K = 3, M = 3 and 9 beams keep every prefix, so beam search is exhaustive: its output must be
    the argmax of the exact likelihood over all 27 sequences, or over those that agree with the
    known tokens when some are forced."""
    torch.manual_seed(0)
    eng = Engine(Tiny(), method="ar", beam_size=9, **TINY)
    perturb(eng.ema_eval, std=0.3)
    every = torch.tensor(list(itertools.product(range(3), repeat=3)))
    nll = eng.method.nll_bound(eng.ema_eval, every, None, torch.zeros(27))["total"]
    assert torch.allclose(nll.neg().exp().sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-5)  # normalised
    best = eng.sample(2, sampler="beam")
    assert torch.equal(best, every[nll.argmin()].expand(2, -1))
    known = torch.tensor([[0, 2, 0], [0, 0, 1]])
    mask = torch.tensor([[False, True, False], [False, False, True]])
    forced = eng.sample(2, sampler="beam", known=known, known_mask=mask)
    for row in range(2):
        agree = (every[:, mask[row]] == known[row, mask[row]]).all(1)
        assert torch.equal(forced[row], every[agree][nll[agree].argmin()])


def test_filtered_log_probs_top_k_top_p_and_temperature():
    logp = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    kept = lambda out: (out > -math.inf).tolist()  # noqa: E731
    assert kept(filtered_log_probs(logp, 1.0, 2, 1.0)) == [True, True, False, False]
    out = filtered_log_probs(logp, 1.0, 0, 0.7)
    assert kept(out) == [True, True, False, False] and torch.allclose(out.exp()[:2], torch.tensor([0.625, 0.375]))
    assert kept(filtered_log_probs(logp, 1.0, 0, 0.81)) == [True, True, True, False]
    assert kept(filtered_log_probs(logp, 1.0, 0, 0.3)) == [True, False, False, False]
    assert kept(filtered_log_probs(logp, 1.0, 3, 0.81)) == [True, True, True, False]
    hot = filtered_log_probs(logp, 0.5, 0, 1.0).exp()  # p^2, renormalised
    assert torch.allclose(hot, logp.exp() ** 2 / (logp.exp() ** 2).sum())


def test_sampled_first_tokens_follow_the_filtered_distribution():
    """4000 draws of x_0 (temperature 0.7, top-k 4) against the filtered model distribution."""
    torch.manual_seed(0)
    eng = Engine(ToyTask(), method="ar", temperature=0.7, top_k=4, **TINY)
    perturb(eng.ema_eval, std=0.3)
    model, n = eng.ema_eval, 4000
    with torch.no_grad():
        start = model.codebook(torch.full((1, 1), model.codebook.mask_id))
        p = filtered_log_probs(F.log_softmax(model.net(start, torch.zeros(1))[0, 0], -1), 0.7, 4, 1.0).exp()
    freq = torch.bincount(eng.sample(n, sampler="sample", batch_size=n)[:, 0], minlength=7).double() / n
    assert ((p == 0) <= (freq == 0)).all() and (p > 0).sum() == 4
    assert ((freq - p).abs() <= 4 * (p * (1 - p) / n).sqrt() + 1e-9).all(), (freq, p)


@pytest.mark.parametrize("sampler", ["sample", "greedy", "beam"])
def test_infill_keeps_known_tokens(trained, sampler):
    eng, n, M = trained, 6, ToyCondTask.seq_len
    g = torch.Generator().manual_seed(0)
    known = torch.randint(ToyCondTask.vocab_size, (n, M), generator=g)
    mask = torch.rand(n, M, generator=g) < 0.4
    mask[:3, :4] = True  # prompts of different lengths
    out = eng.sample(n, sampler=sampler, known=known, known_mask=mask, guidance=1.0)
    assert out.shape == (n, M) and torch.equal(out[mask], known[mask]) and out.max() < ToyCondTask.vocab_size
    everything = eng.sample(n, sampler=sampler, known=known, known_mask=torch.ones(n, M, dtype=torch.bool))
    assert torch.equal(everything, known)


def test_options_and_errors():
    eng = Engine(ToyTask(), method="ar", **TINY)
    assert eng.method.samplers == ("sample", "greedy", "beam") and eng.method.has_bound
    assert "causal" not in eng.cfg.task_options  # asked for through Method.backbone_options, not the config
    assert eng.model.net.causal and eng.ema_eval.net.causal
    assert not Engine(ToyTask(), **TINY).model.net.causal
    for bad in (dict(temperature=0.0), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-1), dict(beam_size=0)):
        with pytest.raises(ValueError, match=f"config {next(iter(bad))}="):
            Engine(ToyTask(), method="ar", **bad, **TINY)
    with pytest.raises(ValueError, match="has samplers"):
        eng.sample(2, sampler="ddim")
    with pytest.raises(ValueError, match="config key 'top_k' is a setting of method 'ar', which this run .method 'maskgit'"):
        Engine(ToyTask(), method="maskgit", top_k=3)  # the settings belong to ar
    catdm = Engine(ToyTask(), **TINY)  # a bidirectional backbone cannot serve ar
    with pytest.raises(ValueError, match="needs a causal backbone"):
        eng.method.nll_bound(catdm.ema_eval, torch.zeros(2, 12, dtype=torch.long), None, torch.zeros(2))


def test_catdiff_list_lists_ar(capsys):
    assert cli_main(["list"]) == 0
    methods = capsys.readouterr().out.split("methods:")[1].split("tokenizers:")[0]
    assert any(line.split()[:3] == ["ar", "from", "catdiff"] for line in methods.splitlines())


# ----------------------------------------------------------------- every kind of task
class Grid(ToyCondTask):
    """fashion-mnist-cond's shape without its data: 7x7 tokens of 32 codes, 10 classes, causal 3x3 conv."""
    name = "toy-grid"
    vocab_size, seq_len, num_classes = 32, 49, 10
    defaults = dict(ToyTask.defaults, conv_kernel=3, token_grid="7x7", guidance=1.0)

    def load(self, split):
        g = torch.Generator().manual_seed(int(split == "test"))
        return TokenData(torch.randint(32, (64, 49), generator=g), torch.randint(10, (64,), generator=g))


def check_engine(eng, samplers=("sample", "greedy", "beam")):
    eng.fit()
    K, M = eng.task.vocab_size, eng.task.seq_len
    for sampler in samplers:
        x = eng.sample(3, sampler=sampler)
        assert x.shape == (3, M) and 0 <= x.min() and x.max() < K
    lik = eng.likelihood(batches=1, batch_size=8)
    assert 0 < lik["nll_bound_nats_per_token"] < 2 * math.log(K)


@pytest.mark.parametrize("task", [ToyTask, ToyCondTask, Grid])
def test_ar_runs_on_synthetic_tasks(task):
    check_engine(Engine(task(), method="ar", steps=2, **TINY))


@pytest.mark.parametrize("name", ["digits", "digits-cond"])
def test_ar_runs_on_digits(name):
    """Digits' defaults include the 3x3 convolution over the 8x8 grid (made causal here)."""
    pytest.importorskip("catdiff_vision")
    eng = Engine(task=name, method="ar", steps=2, batch_size=8, **TINY)
    assert eng.cfg.conv_kernel == 3 and eng.model.net.local[0].mask is not None
    check_engine(eng, samplers=("sample",))


def test_ar_reports_exact_bpc_on_text():
    pytest.importorskip("catdiff_text")
    from catdiff_text.tasks import TextTask

    class SmallText(TextTask):
        name = "small-text-ar"
        seq_len = 32
        defaults = dict(TINY, batch_size=8, steps=2, n_samples=2, eval_batches=1)

        def corpus_text(self):
            g = torch.Generator().manual_seed(1)
            words = "the of and to in a is that for it".split()
            return " " + " ".join(words[i] for i in torch.randint(len(words), (3000,), generator=g).tolist())

    eng = Engine(task=SmallText(), method="ar", bpc_draws=1)
    check_engine(eng, samplers=("sample",))
    m = eng.evaluate()
    assert 0 < m["bpc"] < math.log2(27) + 1 and m["bpc_draws"] == 1
    known, mask = eng.task.parse_prompt("the end is")  # a prompt continues
    out = eng.sample(2, known=known.expand(2, -1), known_mask=mask.expand(2, -1))
    assert (out[:, mask] == known[mask]).all()


@pytest.mark.parametrize("sampler", ["beam", "sample"])
def test_ar_translates(tmp_path, monkeypatch, sampler):
    """encdec made causal on the target side: 2 training steps, then the task's length beam (PAD
    forced past each length) decoded by beam search or sampling, reranked by the exact NLL."""
    pytest.importorskip("catdiff_translate")
    monkeypatch.setenv("CATDIFF_CACHE", str(tmp_path / "cache"))
    for split in ("train", "valid", "test"):
        (tmp_path / f"{split}.de").write_text("das ist gu@@ t .\nwir gehen .\n")
        (tmp_path / f"{split}.en").write_text("that is go@@ od .\nwe go .\n")
    eng = Engine(task="mt-iwslt14", data_dir=str(tmp_path), method="ar", sampler=sampler, layers=1, width=16,
                 heads=2, embed_dim=8, threads=1, max_len=8, steps=2, batch_size=2, eval_batches=1, beam_size=3)
    assert eng.model.net.causal
    metrics = eng.fit().evaluate(out=tmp_path / "out")
    assert metrics["bleu_tokenized"] >= 0 and "rerank_changed_frac" in metrics
    assert 0 < metrics["nll_bound_nats_per_token"] < 2 * math.log(eng.task.vocab_size)
    assert (tmp_path / "out" / "translations.txt").read_text().count("H-") == 2


def test_checkpoint_round_trip(tmp_path, trained):
    """A saved ar run reloads as a causal model that decodes the same sequences."""
    path = trained.save(tmp_path / "last.pt")
    again = Engine.from_checkpoint(path, task=ToyCondTask())
    assert again.cfg.method == "ar" and again.ema_eval.net.causal
    assert torch.equal(again.sample(4, sampler="greedy"), trained.sample(4, sampler="greedy"))
