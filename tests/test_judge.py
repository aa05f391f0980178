"""catdiff.run.judge: unigram entropy, generative perplexity under an AR judge (the AR's own exact
likelihood), ``catdiff eval --judge`` and its one-line errors, benchmarks.text_quality --quick."""
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from catdiff import Engine, cli
from catdiff.api.errors import UserError
from catdiff.methods.ar import Stream
from catdiff.run.judge import Judge, unigram_entropies, unigram_entropy

GPL3 = Path("/usr/share/common-licenses/GPL-3")
TINY = dict(layers=1, heads=2, width=32, embed_dim=16, batch_size=16, warmup=5, lr=3e-3, n_samples=4,
            sample_steps=4, eval_batches=1, threads=1, log_every=100, ckpt_every=1000, seq_len=64, path=str(GPL3))

needs_gpl = pytest.mark.skipif(not GPL3.is_file(), reason="needs Debian's /usr/share/common-licenses")


# ----------------------------------------------------------------- unigram entropy
def test_unigram_entropy_of_known_sequences():
    assert unigram_entropy(torch.tensor([[0, 1, 2, 3, 3, 2, 1, 0]]), 4) == pytest.approx(2.0)  # uniform over 4
    assert unigram_entropy(torch.full((3, 9), 5), 8) == 0.0  # constant
    assert unigram_entropy(torch.tensor([[0, 0, 0, 1]]), 2) == pytest.approx(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))
    # per sample, then averaged: rows of 1 bit and 0 bits give 0.5 (the pooled distribution would give 0.811)
    rows = torch.tensor([[0, 1, 0, 1], [0, 0, 0, 0]])
    assert unigram_entropies(rows, 2).tolist() == [1.0, 0.0] and unigram_entropy(rows, 2) == 0.5
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        unigram_entropy(torch.tensor([[0, 4]]), 4)


# ----------------------------------------------------------------- the judge
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A judge (AR, 60 steps on GPL-3's characters, seq_len 64), a model to judge (MDLM, 3 steps)
    and the judges that must be refused, saved once."""
    if not GPL3.is_file():
        pytest.skip("needs Debian's /usr/share/common-licenses")
    root = tmp_path_factory.mktemp("judge")
    judge = Engine("text-file", method="ar", steps=60, **TINY)
    judge.fit()
    judge.save(root / "judge.pt")
    model = Engine("text-file", method="mdlm", steps=3, **TINY)
    model.fit()
    model.save(root / "model.pt")
    k = judge.task.vocab_size
    (root / "corrupt.pt").write_bytes(os.urandom(2048))
    Engine("text-file", method="ar", steps=0, **dict(TINY, alphabet="text8")).save(root / "other-vocab-size.pt")
    Engine("text-file", method="ar", steps=0, **dict(TINY, seq_len=32)).save(root / "short.pt")
    # as many characters, one of them another: 'q' -> 'é' (the ids from 'q' on shift)
    (root / "q.txt").write_text(GPL3.read_text().replace("q", "\u00e9"))
    Engine("text-file", method="ar", steps=0, **dict(TINY, path=str(root / "q.txt"))).save(root / "other-vocab.pt")
    np.save(root / "tokens.npy", np.random.default_rng(0).integers(0, k, (64, 64)))
    Engine("tokens", method="ar", steps=0, path=str(root / "tokens.npy"), vocab_size=k,
           **{key: v for key, v in TINY.items() if key not in ("path", "seq_len")}).save(root / "other-task.pt")
    return root, judge, model


def test_gen_ppl_is_the_ar_exact_likelihood(runs):
    """Judge.score = exp of the AR's own NLL: Engine.likelihood (teacher forcing, nll_bound) on the
    same rows, and token by token through the KV cache (the sampling path), agree."""
    root, eng, _ = runs
    judge = Judge.load(root / "judge.pt", expect_task="text-file", vocab_size=eng.task.vocab_size, seq_len=64)
    x = eng.data("test").tokens[:16].cpu()
    s = judge.score(x)
    nats = eng.likelihood("test", batches=1, batch_size=16)["nll_bound_nats_per_token"]
    assert s["judge_nats_per_token"] == pytest.approx(nats, rel=1e-6)
    assert s["judge_gen_ppl"] == pytest.approx(math.exp(nats), rel=1e-6)
    assert s["judge_bits_per_token"] == pytest.approx(nats / math.log(2), rel=1e-6)
    model = judge.eng.ema_eval
    stream = Stream(model, len(x), 64, None, 0.0, None, torch.device("cpu"))
    logp = stream(torch.full((len(x), 1), model.codebook.mask_id))[:, -1]
    total = torch.zeros(len(x), dtype=torch.float64)
    for i in range(x.shape[1]):
        total -= logp.gather(1, x[:, i:i + 1])[:, 0].double()
        if i + 1 < x.shape[1]:
            logp = stream(x[:, i:i + 1])[:, -1]
    assert total.mean().item() / 64 == pytest.approx(s["judge_nats_per_token"], rel=1e-5)
    # a shorter sequence is scored as a prefix: the first positions' terms, unchanged (causal)
    torch.testing.assert_close(judge.token_nll(x[:, :20]), judge.token_nll(x)[:, :20], rtol=1e-5, atol=1e-5)


def test_real_text_scores_better_than_random_tokens(runs):
    root, eng, _ = runs
    judge = Judge.for_engine(root / "judge.pt", eng)
    real = eng.data("test").tokens.cpu()
    noise = torch.randint(eng.task.vocab_size, real.shape, generator=torch.Generator().manual_seed(0))
    m = judge.metrics(noise, real=real)
    assert m["judge_gen_ppl_real_test"] < 0.25 * m["judge_gen_ppl"]  # ~22 against ~470 after 60 steps
    assert m["judge_gen_ppl"] > eng.task.vocab_size  # worse than a uniform guess: the judge expects text
    assert m["unigram_entropy_bits_real_test"] < m["unigram_entropy_bits"] <= math.log2(64)


def cli_run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_with_a_judge_prints_and_saves_the_metrics(capsys, runs, tmp_path):
    root, _, _ = runs
    code, out, err = cli_run(capsys, "eval", root / "model.pt", "--judge", root / "judge.pt", "--n", "4",
                             "--out", tmp_path)
    assert code == 0, err
    saved = json.loads((tmp_path / "metrics.json").read_text())
    keys = ["judge_gen_ppl", "judge_bits_per_token", "unigram_entropy_bits"]
    for key in keys + [f"{k}_real_test" for k in keys]:
        assert key in saved and f"  {key} " in out, key
    assert saved["judge_bits_per_token"] == pytest.approx(math.log2(saved["judge_gen_ppl"]))
    assert "bpc" in saved  # the task's own metrics are kept


@pytest.mark.parametrize("case, message", [
    ("missing.pt", "judge checkpoint {root}/missing.pt does not exist; train one with `catdiff run TASK --set method=ar"),
    ("corrupt.pt", "judge: checkpoint {root}/corrupt.pt is corrupt or not a torch file"),
    ("other-task.pt", "was trained on task 'tokens', not 'text-file'"),
    ("other-vocab-size.pt", "has vocab_size=28, the samples 76"),
    ("other-vocab.pt", "has another vocabulary of the same size: id 65 is 'r' for the judge, 'q' for the samples"),
    ("short.pt", "was trained on seq_len=32, shorter than the samples' 64"),
    ("model.pt", "was trained with method 'mdlm'; a judge must be autoregressive"),
])
def test_a_bad_judge_is_one_line(capsys, runs, tmp_path, case, message):
    root, _, _ = runs
    code, out, err = cli_run(capsys, "eval", root / "model.pt", "--judge", root / case, "--out", tmp_path / "out")
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("catdiff: error: ") and message.format(root=root) in err, err
    assert not (tmp_path / "out").exists()  # refused before anything was sampled or written


def test_score_refuses_tokens_the_judge_cannot_read(runs):
    root, eng, _ = runs
    judge = Judge.load(root / "judge.pt")
    with pytest.raises(UserError, match=r"0 < M <= 64"):
        judge.score(torch.zeros(2, 65, dtype=torch.long))
    with pytest.raises(UserError, match=r"must lie in \[0, 75\]"):
        judge.score(torch.full((2, 8), 76))


# ----------------------------------------------------------------- the benchmark
@needs_gpl
def test_text_quality_quick_runs_and_reruns_nothing(tmp_path, capsys):
    from benchmarks import text_quality

    path = tmp_path / "tq.json"
    assert text_quality.main(["--quick", "--threads", "1", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    data = json.loads(path.read_text())
    rows = {(r["method"], r["sampler"]) for r in data["records"]}
    eng = Engine("text-file", method="vqdiffusion", **TINY)
    assert {s for m, s in rows if m == "vqdiffusion"} == set(eng.method.samplers)  # every sampler it declares
    assert all(r["sample_steps"] == 2 and r["judge_gen_ppl"] > 1 and r["unigram_entropy_bits"] >= 0
               for r in data["records"])
    assert "| real test data |" in out and "| VQ-Diffusion |" in out
    assert text_quality.main(["--quick", "--threads", "1", "--json", str(path)]) == 0  # all skipped
    out = capsys.readouterr().out
    assert "trained" not in out and out.count("every record is in") == 2
    assert json.loads(path.read_text())["records"] == data["records"]
