"""catdiff-text: tokenizer, corpora and splits, the BPC estimator, prompts and infilling."""
import math
import struct
import zipfile
import zlib
from pathlib import Path

import pytest
import torch

from catdiff import Engine
from catdiff.api.hooks import registry
from catdiff.cli import main as cli_main
from catdiff_text import ALPHABET, CharTokenizer, clean_text
from catdiff_text import corpus
from catdiff_text.tasks import DEFAULT_SWORD_DIR, TdavidTask, Text8Task, TextTask

TINY = dict(layers=1, heads=2, width=32, embed_dim=16, batch_size=16, steps=40, warmup=5, lr=3e-3,
            log_every=100, ckpt_every=100, sample_steps=4, n_samples=4, eval_batches=1, threads=1)
WORDS = "the of and to in a is that for it as with was on be by he his which".split()


def fake_text(n_words: int, seed: int = 0) -> str:
    g = torch.Generator().manual_seed(seed)
    return " " + " ".join(WORDS[i] for i in torch.randint(len(WORDS), (n_words,), generator=g).tolist())


@pytest.fixture
def text8_file(tmp_path):
    path = tmp_path / "text8"
    path.write_text(fake_text(8000))
    return path


# ----------------------------------------------------------------- tokenizer
def test_tokenizer_round_trip_and_ids():
    tok = CharTokenizer()
    assert tok.vocab_size == 27 and ALPHABET[26] == " " and tok.space_id == 26
    text = "the quick brown fox jumps over the lazy dog "
    ids = tok.encode(text)
    assert ids.dtype == torch.long and ids.tolist()[:3] == [19, 7, 4]
    assert tok.decode(ids) == text
    assert tok.decode(torch.arange(27)) == ALPHABET


def test_tokenizer_rejects_unclean_text_naming_the_character():
    tok = CharTokenizer()
    with pytest.raises(ValueError, match=r"character 'T' at position 0 .*clean=True"):
        tok.encode("The end")
    with pytest.raises(ValueError, match=r"'é' at position 2"):
        tok.encode("caé")
    with pytest.raises(ValueError, match="token id 27"):
        tok.decode([0, 27])


def test_clean_text_mapping():
    assert clean_text("Héllo,  World!!\n42 Æon—x") == "hello world on x"
    assert CharTokenizer().decode(CharTokenizer().encode("A-B", clean=True)) == "a b"
    assert clean_text("  --  ") == " "


def test_plugin_registers_tasks_and_tokenizer():
    reg = registry()
    assert reg.get("tokenizers", "text8-chars").factory().vocab_size == 27
    assert reg.get("tasks", "text8").factory is Text8Task
    assert reg.get("tasks", "text-tdavid").factory is TdavidTask


# ----------------------------------------------------------------- splits and corpora
def test_split_is_contiguous_deterministic_and_proportional():
    text = "".join(ALPHABET[i % 27] for i in range(1000))
    parts = corpus.split_text(text)
    assert [len(parts[k]) for k in corpus.SPLITS] == [900, 50, 50]
    assert parts["train"] + parts["valid"] + parts["test"] == text
    assert corpus.split_text(text) == parts
    # text8 has exactly 10^8 characters: the same fractions give 90M / 5M / 5M
    a, b = round(0.9 * 10**8), round(0.95 * 10**8)
    assert (a, b - a, 10**8 - b) == (90_000_000, 5_000_000, 5_000_000)
    with pytest.raises(ValueError, match="summing to 1"):
        corpus.split_text(text, (0.9, 0.2, 0.1))


def test_chunks_drop_the_remainder():
    ids = torch.arange(600)
    chunks = corpus.chunk(ids, 256)
    assert chunks.shape == (2, 256) and chunks[1, 0] == 256
    with pytest.raises(ValueError, match="shorter than one chunk"):
        corpus.chunk(torch.arange(10), 256)


def test_text8_task_reads_file_zip_and_env(text8_file, tmp_path, monkeypatch):
    task = Text8Task()
    assert (task.defaults["layers"], task.defaults["heads"], task.defaults["width"],
            task.defaults["embed_dim"], task.seq_len) == (12, 12, 768, 256, 256)
    eng_opts = dict(text8_path=str(text8_file), **TINY)
    text = text8_file.read_text()
    train = Engine(task=Text8Task(), **eng_opts).task.load("train").tokens
    assert train.shape == (int(0.9 * len(text)) // 256, 256)
    assert CharTokenizer().decode(train[0]) == text[:256]
    zpath = tmp_path / "text8.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        z.write(text8_file, "text8")
    monkeypatch.setenv("CATDIFF_TEXT8", str(zpath))
    task = Text8Task()
    task.setup(Engine(task=Text8Task(), **TINY).cfg)
    assert torch.equal(task.load("train").tokens, train)
    assert task.load("test").tokens.shape[0] == round(0.05 * len(text)) // 256


def test_text8_missing_file_error_names_file_and_source(tmp_path, monkeypatch):
    monkeypatch.delenv("CATDIFF_TEXT8", raising=False)
    with pytest.raises(FileNotFoundError, match=r"text8.*mattmahoney.net/dc/text8.zip"):
        Engine(task="text8", text8_path=str(tmp_path / "nope" / "text8.zip"), **TINY).task.load("train")
    with pytest.raises(FileNotFoundError, match="CATDIFF_TEXT8"):
        Text8Task().load("train")
    bad = tmp_path / "text8"
    bad.write_text("Not Text8")
    with pytest.raises(ValueError, match="not text8"):
        corpus.read_text8(bad)


def test_sword_reader_on_a_synthetic_module(tmp_path, capsys):
    blocks = ['<div sID="a"/>Blessed <hi type="italic">is</hi> the MAN', "<title>Verse 1.</title> &amp; café—x"]
    index, blob = b"", b""
    for text in blocks:
        z = zlib.compress(text.encode()) + b"\0" * 16  # SWORD pads blocks after the stream end
        index += struct.pack("<III", len(blob), len(z), len(text.encode()))
        blob += z
    (tmp_path / "ot.czs").write_bytes(index)
    (tmp_path / "ot.czz").write_bytes(blob)
    assert corpus.read_sword_blocks(tmp_path) == "".join(blocks)
    cache = tmp_path / "cache"
    capsys.readouterr()
    assert corpus.tdavid_text(tmp_path, cache) == "blessed is the man verse cafe x"
    assert "building the Treasury of David text" in capsys.readouterr().err  # the slow first read says so
    assert len(list(cache.glob("tdavid-*.txt"))) == 1
    assert corpus.tdavid_text(tmp_path, cache) == "blessed is the man verse cafe x"  # from the cache
    assert capsys.readouterr().err == ""  # quietly


needs_tdavid = pytest.mark.skipif(not (Path(DEFAULT_SWORD_DIR) / "ot.czs").is_file(),
                                  reason="install Debian package sword-comm-tdavid (make data)")


@needs_tdavid
def test_tdavid_corpus_is_clean_and_split_deterministically():
    task = TdavidTask()
    parts = task.split_texts()
    total = sum(len(p) for p in parts.values())
    assert total > 10_000_000 and abs(len(parts["test"]) / total - 0.05) < 1e-6
    assert set(parts["test"]) == set(ALPHABET) and "  " not in parts["test"]
    test = task.load("test").tokens
    assert test.shape == (len(parts["test"]) // 256, 256)
    assert torch.equal(TdavidTask().load("test").tokens, test)


def test_tdavid_missing_module_error(tmp_path):
    task = TdavidTask()
    task.setup(Engine(task=TdavidTask(), sword_dir=str(tmp_path), **TINY).cfg)
    with pytest.raises(FileNotFoundError, match="sword-comm-tdavid"):
        task.load("train")


# ----------------------------------------------------------------- BPC estimator
class SmallText(TextTask):
    name = "small-text"
    seq_len = 32
    defaults = TINY

    def corpus_text(self):
        return fake_text(4000, seed=1)


def test_bpc_estimator_matches_brute_force_monte_carlo():
    """Engine.likelihood (stratified t, several draws per chunk) against many independent
    uniform-t draws on the same chunks: same mean within a few standard errors, and its
    variance is no larger than that of an i.i.d.-t estimator of the same cost.

    log-SNR is clipped to [-6, 6] here: at +-15 the integrand -SNR'(t)/2 ||EMB - EMB_hat||^2 of
    a barely trained model is so heavy-tailed near t = 0 that 24 repetitions cannot measure a
    variance reliably."""
    torch.manual_seed(0)
    eng = Engine(task=SmallText(), logsnr_min=-6.0, logsnr_max=6.0, **TINY).fit()
    x = eng.data("test").tokens[:16]
    n, draws, reps, brute = len(x), 4, 24, 512
    per_seq = []
    torch.manual_seed(1)
    for _ in range(brute // 64):
        xs = x.repeat_interleave(64, 0)
        b = eng.method.nll_bound(eng.ema_eval, xs, None, torch.rand(len(xs)))["total"].double()
        per_seq.append(b.view(n, 64))
    per_seq = torch.cat(per_seq, 1) / eng.task.seq_len       # [n, brute] nats per character
    bf_mean = per_seq.mean().item()
    bf_se = math.sqrt(per_seq.var(1).mean().item() / (n * brute))
    iid_var = per_seq.var(1).mean().item() / (n * draws)      # variance of the i.i.d. estimator, same cost
    est = torch.tensor([eng.likelihood(batches=1, batch_size=n, draws=draws, seed=s)["nll_bound_nats_per_token"]
                        for s in range(reps)], dtype=torch.float64)
    assert abs(est.mean().item() - bf_mean) < 4 * math.sqrt(est.var().item() / reps + bf_se**2)
    assert est.var().item() <= 1.5 * iid_var
    one = eng.likelihood(batches=1, batch_size=n, draws=draws, seed=0)
    assert one["nll_bound_bits_per_token"] == pytest.approx(one["nll_bound_nats_per_token"] / math.log(2))
    with pytest.raises(ValueError, match="draws must be >= 1"):
        eng.likelihood(draws=0)


def test_evaluate_reports_bpc_and_writes_samples(tmp_path, capsys):
    eng = Engine(task=SmallText(), out=tmp_path, bpc_draws=2, steps=5)
    eng.fit()
    m = eng.evaluate()
    direct = eng.task.bits_per_character(eng)
    assert m["bpc"] == pytest.approx(direct["bpc"]) and m["bpc_se"] > 0
    assert m["bpc_chunks"] == len(eng.data("test")) and m["bpc_draws"] == 2
    assert 0 <= m["sample_word_known_frac"] <= 1 and m["test_word_known_frac"] == 1.0
    lines = (tmp_path / "samples.txt").read_text()[:-1].split("\n\n")
    assert len(lines) == TINY["n_samples"] and all(len(s) == 32 and set(s) <= set(ALPHABET) for s in lines)
    assert "sample 0: " in capsys.readouterr().out


def test_method_without_a_bound_reports_no_bpc(tmp_path):
    eng = Engine(task=SmallText(), out=tmp_path, method="maskgit", steps=2)
    m = eng.fit().evaluate()
    assert "bpc" not in m and "nll_bound_nats_per_token" not in m and 0 <= m["sample_word_known_frac"] <= 1
    assert (tmp_path / "samples.txt").is_file()


# ----------------------------------------------------------------- prompts and infilling
def test_parse_prompt_prefix_suffix_middle():
    task = SmallText()
    known, mask = task.parse_prompt("In the")
    assert mask.tolist() == [True] * 6 + [False] * 26 and CharTokenizer().decode(known[:6]) == "in the"
    known, mask = task.parse_prompt("*the end")
    assert mask[-7:].all() and not mask[:-7].any() and CharTokenizer().decode(known[-7:]) == "the end"
    known, mask = task.parse_prompt("a _ b*c")
    assert mask.tolist()[:5] == [True, True, False, True, True] and mask[-1] and mask.sum() == 5
    with pytest.raises(ValueError, match="at most one"):
        task.parse_prompt("a*b*c")
    with pytest.raises(ValueError, match="more than seq_len=32"):
        task.parse_prompt("x" * 33)
    with pytest.raises(ValueError, match="'!'"):
        task.parse_prompt("hi!")


def test_infilling_keeps_the_given_characters():
    eng = Engine(task=SmallText(), steps=3)
    eng.fit()
    tok = CharTokenizer()
    for prompt in ("the end is", "*of the", "in ____ the * of"):
        known, mask = eng.task.parse_prompt(prompt)
        out = eng.sample(3, steps=4, known=known.expand(3, -1), known_mask=mask.expand(3, -1))
        assert out.shape == (3, 32)
        assert (out[:, mask] == known[mask]).all()
        for row in out:
            assert all(c == p for c, p, m in zip(tok.decode(row), tok.decode(known), mask) if m)


def test_cli_sample_with_prompt(text8_file, tmp_path):
    eng = Engine(task="text8", out=tmp_path / "run", text8_path=str(text8_file), **dict(TINY, steps=2))
    eng.fit()
    out = tmp_path / "samples"
    rc = cli_main(["sample", str(tmp_path / "run" / "last.pt"), "--n", "2", "--steps", "3",
                   "--prompt", "*and the end", "--out", str(out)])
    assert rc == 0
    tokens = torch.load(out / "samples.pt")
    assert tokens.shape == (2, 256)
    assert all(CharTokenizer().decode(row).endswith("and the end") for row in tokens)
    assert (out / "samples.txt").is_file()
    assert cli_main(["sample", str(tmp_path / "run" / "last.pt"), "--prompt", "a", "--infill", "0:1"]) == 2
