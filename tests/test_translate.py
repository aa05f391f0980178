"""catdiff-translate: encdec backbone, length beam, BPE, BLEU, fairseq data-bin, mt-ding."""
import copy
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("catdiff_translate")
from catdiff_translate.backbone import EncoderDecoder, build_encdec  # noqa: E402
from catdiff_translate.bleu import bleu, bleu_metric  # noqa: E402
from catdiff_translate.data import DING_FILE, pad_rows  # noqa: E402
from catdiff_translate.vocab import FairseqDictionary, SentencePieceVocab, remove_bpe_markers, train_sentencepiece  # noqa: E402

K, M, SRC_V, PAD = 11, 6, 13, 0


def small_cfg(**kw):
    cfg = dict(layers=2, heads=2, width=32, mlp_ratio=2.0, dropout=0.0, embed_dim=8, positions="sinusoidal",
               pos_scale=1.0, task_options={"src_vocab": SRC_V, "pad_id": PAD})
    cfg.update(kw)
    return SimpleNamespace(**cfg)


def net():
    torch.manual_seed(0)
    return EncoderDecoder(small_cfg(), K, M, SRC_V, PAD).eval()


def test_encdec_shapes_and_aux_loss():
    model = net()
    z, t = torch.randn(3, M, 8), torch.rand(3)
    src = torch.tensor([[3, 4, 5, 0, 0], [6, 0, 0, 0, 0], [7, 8, 9, 10, 11]])
    assert model(z, t, src).shape == (3, M, K)
    assert model.length_logits(src).shape == (3, M)
    targets = torch.tensor([[1, 2, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]])
    aux = model.aux_loss(src, targets)
    assert aux.shape == (3,) and torch.isfinite(aux).all()
    # lengths 2, 6 and (all PAD) clamped to 1 are the classes 1, 5, 0
    expected = torch.nn.functional.cross_entropy(model.length_logits(src), torch.tensor([1, 5, 0]), reduction="none")
    torch.testing.assert_close(aux, expected)


@pytest.mark.parametrize("positions", ["sinusoidal", "rotary"])
def test_source_padding_never_leaks(positions):
    torch.manual_seed(0)
    model = EncoderDecoder(small_cfg(positions=positions), K, M, SRC_V, PAD).eval()
    z, t = torch.randn(2, M, 8), torch.rand(2)
    src = torch.tensor([[3, 4, 0, 0], [5, 0, 0, 0]])
    longer = torch.cat([src, torch.zeros(2, 3, dtype=torch.long)], 1)  # more padding
    out, lens = model(z, t, src), model.length_logits(src)
    torch.testing.assert_close(model(z, t, longer), out)
    torch.testing.assert_close(model.length_logits(longer), lens)
    # real tokens do matter
    assert not torch.allclose(model(z, t, torch.tensor([[3, 9, 0, 0], [5, 0, 0, 0]])), out)
    # an all-pad source stays finite
    assert torch.isfinite(model(z, t, torch.zeros(2, 4, dtype=torch.long))).all()


def test_rotary_decoder_has_no_absolute_positions():
    """Identical target inputs give identical outputs at every position with rotary decoder
    positions (attention sees relative offsets only), not with sinusoids added to the input."""
    z, t, src = torch.randn(1, 1, 8).expand(2, M, 8), torch.rand(2), torch.tensor([[3, 4, 0], [5, 6, 7]])
    for positions, same in (("rotary", True), ("sinusoidal", False)):
        torch.manual_seed(0)
        out = EncoderDecoder(small_cfg(positions=positions), K, M, SRC_V, PAD).eval()(z, t, src)
        assert torch.allclose(out, out[:, :1].expand_as(out), atol=1e-5) == same
    with pytest.raises(ValueError, match="unknown positions"):
        EncoderDecoder(small_cfg(positions="alibi"), K, M, SRC_V, PAD)


def test_encoder_cache_follows_the_condition_tensor():
    model = net()
    z, t = torch.randn(1, M, 8), torch.rand(1)
    src = torch.tensor([[3, 4, 0]])
    first = model(z, t, src)
    src[0, 1] = 9  # in place: the cache must notice
    assert not torch.allclose(model(z, t, src), first)
    assert model._cache is not None and copy.deepcopy(model)._cache is None


def test_build_encdec_reads_the_data_spec():
    from catdiff.api.task import DataSpec

    with pytest.raises(ValueError, match="src_vocab"):
        build_encdec(small_cfg(task_options={}), vocab_size=K, seq_len=M)
    spec = DataSpec(K, M, conditional=True, extras={"src_vocab": SRC_V + 2, "pad_id": PAD})
    net = build_encdec(small_cfg(task_options={}), vocab_size=K, seq_len=M, spec=spec)
    assert (net.src_vocab, net.pad_id) == (SRC_V + 2, PAD)


def test_length_beam_infills_padding_and_reranks():
    """generate: top-k lengths x noise draws; positions past each length are PAD; best kept."""
    from catdiff_translate.task import TranslationTask

    class Fake(TranslationTask):
        name = "fake"
        options = {"max_len": M, "length_beam": 2, "noise_beam": 2, "rerank_draws": 1}

    task = Fake()
    src = torch.tensor([[3, 4, 0], [5, 6, 7]])
    model = net()
    with torch.no_grad():  # make lengths 2 and 4 the two most likely for every source
        model.length_head.bias.copy_(torch.tensor([0.0, 9.0, 0.0, 8.0, 0.0, 0.0]))
        model.length_head.weight.zero_()
    seen = {}

    def sample(n, labels=None, known=None, known_mask=None):
        seen.update(n=n, mask=known_mask)
        x = torch.randint(1, K, (n, M))
        return torch.where(known_mask, known, x)

    from catdiff.api.context import RunContext
    from catdiff.api.method import Method
    from catdiff.api.task import TokenData

    class Bounded(Method):
        def nll_bound(self, m, x, cond, t):  # prefers shorter candidates
            return {"total": (x != PAD).sum(1).double()}

    test = TokenData(torch.tensor([[1, 1, 0, 0, 0, 0]] * 2), src)  # reference length 2
    engine = SimpleNamespace(data=lambda split: test, ema_eval=SimpleNamespace(net=model),
                             autocast=torch.autocast("cpu", enabled=False), sample=sample, method=Bounded(None),
                             device=torch.device("cpu"), cfg=SimpleNamespace(seed=0))
    out, cond = task.generate(RunContext(engine), 5)
    assert seen["n"] == 2 * 2 * 2
    assert seen["mask"].sum(1).tolist() == [4, 4, 2, 2] * 2  # lengths 2, 2, 4, 4 per source
    assert out.shape == (2, M) and torch.equal(cond, src)
    assert ((out != PAD).sum(1) == 2).all() and (out[:, 2:] == PAD).all()
    assert task._stats["length_accuracy"] == 1.0

    # a method without a bound (e.g. maskgit) cannot rerank: one draw per source at the top-1 length
    engine.method = Method(None)
    out, _ = task.generate(RunContext(engine), 5)
    assert seen["n"] == 2 and seen["mask"].sum(1).tolist() == [4, 4]
    assert ((out != PAD).sum(1) == 2).all() and task._stats["length_top2_accuracy"] == 1.0


def test_pad_rows_truncates_and_pads():
    out = pad_rows([[1, 2, 3], [4], np.array([5, 6, 7, 8, 9])], 4, 0)
    assert out.tolist() == [[1, 2, 3, 0], [4, 0, 0, 0], [5, 6, 7, 8]]


def test_sentencepiece_round_trip(tmp_path):
    lines = ["Das ist ein kleines Haus.", "This is a small house.", "Wir gehen heute nach Hause.",
             "We are going home today.", "Ärger über Straßen!"] * 20
    path = train_sentencepiece(lines, tmp_path / "spm", vocab_size=60)
    v = SentencePieceVocab(path)
    assert v.pad_id == 0 and v.size <= 60
    for line in lines[:5] + ["Wir sind ein Haus."]:
        ids = v.encode(line)
        assert PAD not in ids and v.decode(ids + [0, 0]) == line


def test_marked_bpe_dictionary(tmp_path):
    assert remove_bpe_markers("auf@@ gaben sind sch@@ wer") == "aufgaben sind schwer"
    d, entries = FairseqDictionary.build(["auf@@ gaben sind", "sind gut"])
    assert d.symbols[:5] == ["<s>", "<pad>", "</s>", "<unk>", "sind"] and d.pad_id == 1
    FairseqDictionary.save(entries, tmp_path / "dict.txt")
    again = FairseqDictionary.load(tmp_path / "dict.txt")
    assert again.symbols == d.symbols
    ids = again.encode("auf@@ gaben gut neu")
    assert ids[-1] == again.unk_id and again.decode(ids[:3] + [1, 1]) == "aufgaben gut"
    (tmp_path / "bad.txt").write_text("word notanumber\n")
    with pytest.raises(ValueError, match="symbol count"):
        FairseqDictionary.load(tmp_path / "bad.txt")


def test_bleu_hand_checked():
    # hyp "the cat sat on mat" vs ref "the cat sat on the mat":
    # precisions 5/5, 3/4, 2/3, 1/2; BP = exp(1 - 6/5)
    # BLEU = BP * (1 * 3/4 * 2/3 * 1/2) ** (1/4) = exp(-0.2) * 0.25 ** 0.25 = 0.81873 * 0.70711 = 0.57893
    hyp, ref = "the cat sat on mat", "the cat sat on the mat"
    scores = bleu([hyp], [ref], [hyp], [ref])
    assert scores["bleu_tokenized"] == pytest.approx(57.8930, abs=1e-3)
    assert scores["sacrebleu"] == pytest.approx(57.8930, abs=1e-3)
    # punctuation: tokenized BLEU counts "mat ." as two tokens, raw text is Moses-tokenized first
    raw = bleu_metric(["The cat sat on mat."], ["The cat sat on the mat."], "en", tokenized=False)
    tok = bleu_metric(["The cat sat on mat ."], ["The cat sat on the mat ."], "en", tokenized=True)
    assert raw["bleu_tokenized"] == pytest.approx(tok["bleu_tokenized"]) and raw["sacrebleu"] == pytest.approx(tok["sacrebleu"])
    assert bleu([hyp], [hyp], [hyp], [hyp])["bleu_tokenized"] == pytest.approx(100.0)


def test_missing_corpus_error_names_the_layout(monkeypatch):
    from catdiff.run.engine import Engine

    monkeypatch.delenv("CATDIFF_IWSLT14", raising=False)
    with pytest.raises(FileNotFoundError, match=r"train\.de, train\.en.*prepare-iwslt14\.sh"):
        Engine(task="mt-iwslt14", threads=1)


def test_iwslt_text_dir_with_markers(tmp_path, monkeypatch):
    monkeypatch.setenv("CATDIFF_CACHE", str(tmp_path / "cache"))
    de = ["das ist gu@@ t .", "wir gehen ."] * 3
    en = ["that is go@@ od .", "we go ."] * 3
    for split in ("train", "valid", "test"):
        (tmp_path / f"{split}.de").write_text("\n".join(de) + "\n")
        (tmp_path / f"{split}.en").write_text("\n".join(en) + "\n")
    from catdiff.run.engine import Engine

    eng = Engine(task="mt-iwslt14", data_dir=str(tmp_path), layers=1, width=16, heads=2, embed_dim=8, threads=1)
    assert eng.spec.extras == {"pad_id": 1, "src_vocab": eng.task.vocab_size} and eng.spec.conditional
    assert "pad_id" not in eng.cfg.task_options  # a data spec, not a message through the config
    assert (eng.model.net.src_vocab, eng.model.net.pad_id) == (eng.task.vocab_size, 1)
    test = eng.data("test")
    assert test.tokens.shape == (6, 128) and eng.task._refs["test"][0] == "that is good ."
    assert eng.task.hypotheses(test.tokens[:1]) == ["that is good ."]



@pytest.mark.parametrize("method", ["catdm", "maskgit", "vqdiffusion", "d3pm"])
def test_every_method_translates(tmp_path, monkeypatch, method):
    """Train 2 steps and evaluate; methods without a likelihood bound (maskgit) skip reranking."""
    monkeypatch.setenv("CATDIFF_CACHE", str(tmp_path / "cache"))
    for split in ("train", "valid", "test"):
        (tmp_path / f"{split}.de").write_text("das ist gu@@ t .\nwir gehen .\n")
        (tmp_path / f"{split}.en").write_text("that is go@@ od .\nwe go .\n")
    from catdiff.run.engine import Engine

    eng = Engine(task="mt-iwslt14", data_dir=str(tmp_path), method=method, layers=1, width=16, heads=2,
                 embed_dim=8, threads=1, max_len=8, steps=2, batch_size=2, sample_steps=2, eval_batches=1)
    metrics = eng.fit().evaluate(out=tmp_path / "out")
    assert metrics["bleu_tokenized"] >= 0 and metrics["length_top3_accuracy"] >= metrics["length_accuracy"]
    assert ("nll_bound_nats_per_token" in metrics) == (method != "maskgit")
    assert ("rerank_changed_frac" in metrics) == (method != "maskgit")
    assert (tmp_path / "out" / "translations.txt").read_text().count("H-") == 2


# our own toy sentences (word-level, no BPE): a check that the whole pipeline can learn
MEMO_PAIRS = [("ich habe einen hund .", "i have a dog ."), ("wir gehen nach hause .", "we go home ."),
              ("das haus ist klein .", "the house is small ."), ("er trinkt kalten tee .", "he drinks cold tea ."),
              ("sie liest ein buch .", "she reads a book ."), ("der zug kommt spaet .", "the train is late ."),
              ("mein bruder schlaeft .", "my brother sleeps ."), ("es regnet heute .", "it rains today ."),
              ("wo ist der bahnhof ?", "where is the station ?"), ("ich mag keinen kaffee .", "i do not like coffee ."),
              ("die katze ist schwarz .", "the cat is black ."), ("wir essen brot .", "we eat bread ."),
              ("du bist mein freund .", "you are my friend ."), ("das wasser ist kalt .", "the water is cold ."),
              ("er kauft einen apfel .", "he buys an apple ."), ("sie singt laut .", "she sings loudly .")]


@pytest.mark.slow
def test_catdm_memorises_a_small_corpus(tmp_path, monkeypatch):
    """End to end (encoder conditioning, length head, PAD infilling, reranking, detokenised
    BLEU): trained on 16 pairs, CATDM must translate those same pairs (~10 s on one thread).
    After 300 steps it reproduces all 16 (BLEU 100); the source must matter, since every
    target differs."""
    monkeypatch.setenv("CATDIFF_CACHE", str(tmp_path / "cache"))
    for split in ("train", "valid", "test"):
        (tmp_path / f"{split}.de").write_text("\n".join(de for de, _ in MEMO_PAIRS) + "\n")
        (tmp_path / f"{split}.en").write_text("\n".join(en for _, en in MEMO_PAIRS) + "\n")
    from catdiff.run.engine import Engine

    eng = Engine(task="mt-iwslt14", data_dir=str(tmp_path), bpe="marked", layers=1, width=64, heads=4, embed_dim=16,
                 max_len=8, steps=300, batch_size=16, lr=3e-3, warmup=20, ema_cm=0.9, dropout=0.0, sample_steps=10,
                 threads=1)
    m = eng.fit().evaluate()
    assert m["length_accuracy"] >= 0.9 and m["bleu_tokenized"] > 80 and m["sacrebleu"] > 80, m


@pytest.mark.interop
@pytest.mark.skipif(importlib.util.find_spec("fairseq") is None,
                    reason="fairseq not installed (extra 'fairseq'; make test-interop installs it)")
def test_fairseq_data_bin(tmp_path):
    """Binarize with fairseq's own writer, read back with the native reader (the data_bin path;
    tests/test_fairseq_bin.py has the rest of the fairseq comparison)."""
    from fairseq.data import Dictionary, indexed_dataset

    from catdiff_translate.data import read_data_bin

    sents = {"de": ["hallo welt", "guten tag welt"], "en": ["hello world", "good day world"]}
    for lang, lines in sents.items():
        d = Dictionary()
        for line in lines:
            for w in line.split():
                d.add_symbol(w)
        d.save(str(tmp_path / f"dict.{lang}.txt"))
        builder = indexed_dataset.make_builder(str(tmp_path / f"test.de-en.{lang}.bin"), impl="mmap", vocab_size=len(d))
        for line in lines:
            builder.add_item(d.encode_line(line, add_if_not_exist=False))
        builder.finalize(str(tmp_path / f"test.de-en.{lang}.idx"))
    ours = FairseqDictionary.load(tmp_path / "dict.en.txt")
    theirs = Dictionary.load(str(tmp_path / "dict.en.txt"))
    assert ours.symbols == theirs.symbols
    src, tgt = read_data_bin(tmp_path, "test", "de", "en")
    assert [ours.decode(s) for s in tgt] == sents["en"] and tgt[0][-1] == ours.eos_id


ding = pytest.mark.skipif(not Path(DING_FILE).is_file(), reason=f"{DING_FILE} absent (Debian package trans-de-en)")


@ding
def test_ding_pairs_and_split():
    from catdiff_translate.data import ding_pairs, hash_split

    pairs = ding_pairs(Path(DING_FILE), 3, 12)
    assert len(pairs) > 5000
    assert all(a[-1] in ".?!" and 3 <= len(b.split()) <= 12 and "/" not in a + b for a, b in pairs)
    split = hash_split(pairs, 4)
    assert sum(map(len, split.values())) == len(pairs)
    assert 0.02 < len(split["test"]) / len(pairs) < 0.06
    assert hash_split(list(reversed(pairs)), 4)["test"] == list(reversed(split["test"]))


@ding
@pytest.mark.slow
def test_ding_end_to_end(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "CATDIFF_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "catdiff", "run", "mt-ding", "--out", str(out), "--steps", "20",
           "--set", "threads=1", "--set", "sample_steps=4", "--set", "test_percent=1", "--set", "eval_batches=1"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("bleu_tokenized", "sacrebleu", "length_accuracy", "nll_bound_bits_per_token"):
        assert key in metrics and metrics[key] == metrics[key]
    text = (out / "translations.txt").read_text()
    assert text.startswith("S-0\t") and "\nR-0\t" in text and "\nH-0\t" in text


def test_generic_translation_task_any_pair_in_one_command(tmp_path, monkeypatch, capsys):
    """`translation` with src/tgt options: en -> de on raw text, BPE trained at first use."""
    monkeypatch.setenv("CATDIFF_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "corpus"
    data.mkdir()
    for split in ("train", "valid", "test"):
        (data / f"{split}.en").write_text("\n".join(en for _, en in MEMO_PAIRS) + "\n")
        (data / f"{split}.de").write_text("\n".join(de for de, _ in MEMO_PAIRS) + "\n")
    from catdiff import cli
    from catdiff.run.engine import Engine

    args = dict(data_dir=str(data), src="en", tgt="de", text="raw", bpe_vocab=60, layers=1, width=16, heads=2,
                embed_dim=8, threads=1, max_len=24, steps=2, batch_size=4, sample_steps=2, eval_batches=1)
    eng = Engine(task="translation", **args)
    assert (eng.task.src_lang, eng.task.tgt_lang) == ("en", "de")
    test = eng.data("test")
    assert len(test) == 16 and eng.task.decode(test.tokens[:1]) == ["ich habe einen hund ."]
    metrics = eng.fit().evaluate(out=tmp_path / "out")
    assert metrics["bleu_tokenized"] >= 0
    code = cli.main(["run", "translation", "--out", str(tmp_path / "run"), "--set", "data_dir=" + str(data),
                     "--set", "src=en", "--set", "tgt=xx"])
    assert code == 2 and "lacks train.xx, test.xx" in capsys.readouterr().err
    assert cli.main(["run", "translation", "--out", str(tmp_path / "run"), "--set", f"data_dir={data}"]) == 2
    assert "needs two languages: --set src=LANG --set tgt=LANG" in capsys.readouterr().err


@pytest.mark.parametrize("task, key, value, allowed", [
    ("mt-iwslt14", "bpe", "bytes", "auto | sentencepiece | marked"), ("mt-ding", "bpe", "marked", "sentencepiece"),
    ("translation", "text", "detok", "tokenized | raw"), ("mt-ding", "test_percent", 60, r"in \[1, 50\]"),
    ("mt-wmt14", "rerank_draws", -1, ">= 0")])
def test_bad_options_are_refused_by_their_settings(task, key, value, allowed):
    from catdiff.run.config import for_task
    from catdiff.api.errors import UserError
    from catdiff.api.hooks import registry

    with pytest.raises(UserError, match=rf"config {key}={value!r}: must be {allowed}"):
        for_task(registry().get("tasks", task).factory(), None, {key: value})
