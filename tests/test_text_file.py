"""The text-file task: sources, splits, vocabularies (characters and BPE), BPC, prompts, runs."""
import base64
from pathlib import Path

import pytest
import torch

from catdiff import Engine
from catdiff.api.errors import UserError
from catdiff.api.hooks import registry
from catdiff.cli import main as cli_main
from catdiff.run.config import for_task
from catdiff_text import ALPHABET, sources
from catdiff_text.text_file import TextFileTask
from catdiff_text.vocab import REPLACEMENT, BpeVocab, CharVocab, train_bpe

LICENSES = Path("/usr/share/common-licenses")
GPL3 = LICENSES / "GPL-3"
SMALL = dict(layers=1, heads=2, width=32, embed_dim=16, batch_size=8, steps=3, warmup=1, n_samples=4,
             sample_steps=4, eval_batches=1, threads=1, log_every=100, ckpt_every=100, seq_len=64)

pytestmark = pytest.mark.skipif(not GPL3.is_file(), reason="needs Debian's /usr/share/common-licenses")


def task_with(**opts) -> TextFileTask:
    """A set-up TextFileTask (what the engine does before building the model)."""
    task = TextFileTask()
    task.setup(for_task(task, None, dict(SMALL, **opts)))
    return task


@pytest.fixture
def two_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("alpha beta gamma delta\n" * 40)
    (tmp_path / "sub" / "b.txt").write_text("Zeta eta theta iota kappa\n" * 40)
    (tmp_path / ".hidden").write_text("never read")
    return tmp_path


# ----------------------------------------------------------------- sources and splits
def test_find_files_file_folder_glob_and_links(two_files):
    assert sources.find_files(str(two_files / "a.txt")) == [two_files / "a.txt"]
    assert sources.find_files(str(two_files)) == [two_files / "a.txt", two_files / "sub" / "b.txt"]  # no .hidden
    assert sources.find_files(str(two_files / "**" / "*.txt")) == [two_files / "a.txt", two_files / "sub" / "b.txt"]
    # GPL is a link to GPL-3 on Debian: each file is read once
    found = sources.find_files(str(LICENSES / "GPL*"))
    assert len({f.resolve() for f in found}) == len(found)


def test_split_is_per_file_contiguous_deterministic_and_disjoint(two_files):
    files = sources.find_files(str(two_files))
    parts = sources.read_split(files, 0.05)
    assert parts == sources.read_split(files, 0.05)
    a, b = (f.read_text() for f in files)
    nl = lambda s: s if s.endswith("\n") else s + "\n"  # noqa: E731  (a newline closes each part)
    cut = lambda s, f: round(f * len(s))  # noqa: E731
    # each split is the concatenation of the files' own contiguous parts, in path order
    assert parts["train"] == nl(a[:cut(a, 0.9)]) + nl(b[:cut(b, 0.9)])
    assert parts["valid"] == nl(a[cut(a, 0.9):cut(a, 0.95)]) + nl(b[cut(b, 0.9):cut(b, 0.95)])
    assert parts["test"] == nl(a[cut(a, 0.95):]) + nl(b[cut(b, 0.95):])
    assert not parts["train"].endswith("\n\n")  # no newline added where a part ends in one
    assert "never read" not in "".join(parts.values())


# ----------------------------------------------------------------- character vocabulary
def test_derived_alphabet_is_stored_and_round_trips():
    task = task_with(path=str(GPL3))
    train = task.raw_splits()["train"]
    assert task.chars.alphabet == "".join(sorted(set(train))) + REPLACEMENT
    assert task.cfg.task_options["alphabet"] == task.chars.alphabet  # saved with the checkpoint
    assert task.vocab_size == len(set(train)) + 1 and "\n" in task.chars.alphabet
    text = task.split_texts()["test"]
    assert task.tokenizer.decode(task.tokenizer.encode(text)) == text
    x = task.load("train").tokens
    assert x.shape == (len(task.split_texts()["train"]) // 64, 64) and int(x.max()) < task.vocab_size


def test_characters_outside_the_alphabet_are_replaced_or_dropped(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("Abc, abc! " * 30 + "xyz")
    rep = task_with(path=str(f), alphabet="abc", seq_len=4)
    assert rep.chars.alphabet == "abc" + REPLACEMENT
    assert rep.split_texts()["train"].startswith(f"{REPLACEMENT}bc{REPLACEMENT}{REPLACEMENT}abc{REPLACEMENT}{REPLACEMENT}")
    drop = task_with(path=str(f), alphabet="abc", unknown="drop", seq_len=4)
    assert drop.chars.alphabet == "abc" and drop.split_texts()["train"].startswith("bcabcbcabc")
    low = task_with(path=str(f), lowercase=True, unknown="drop", seq_len=4)
    assert low.chars.alphabet == "\n !,abc"  # from the training split only: x, y, z lie in test
    assert low.split_texts()["test"].endswith("abc! \n") and "x" not in low.split_texts()["test"]
    t8 = task_with(path=str(f), alphabet="text8", clean=True, seq_len=4)
    assert t8.chars.alphabet == ALPHABET + REPLACEMENT and t8.split_texts()["train"].startswith("abc abc abc")


def test_char_vocab_ids_follow_the_alphabet():
    v = CharVocab("ba\n")
    assert v.encode("ab\nb").tolist() == [1, 0, 2, 0] and v.decode([2, 0]) == "\nb"
    with pytest.raises(ValueError, match="'c' at position 1"):
        v.encode("ac")


# ----------------------------------------------------------------- BPE
def test_bpe_round_trip_char_counts_and_deterministic_training(tmp_path):
    text = GPL3.read_text()
    a, b = train_bpe(text, 300, "replace"), train_bpe(text, 300, "replace")
    assert a == b
    v = BpeVocab(a)
    assert v.vocab_size == 301 and v.newline_id == 300
    sample = "  The GNU General Public License\n\nis a free, copyleft license " + REPLACEMENT + " x\n"
    ids = v.encode(sample)
    assert v.decode(ids) == sample
    assert int(v.char_counts(ids).sum()) == len(sample)
    assert len(ids) < len(sample) and (ids == v.newline_id).sum() == 3


def test_bpe_model_is_cached_and_stored_in_the_config(tmp_path):
    task = task_with(path=str(GPL3), tokenizer="sentencepiece", bpe_vocab=300, cache_dir=str(tmp_path))
    assert task.bpe_cache_path.parent == tmp_path and task.bpe_cache_path.is_file()
    proto = base64.b64decode(task.cfg.task_options["spm_proto"])
    assert proto == task.bpe_cache_path.read_bytes()
    again = task_with(path=str(GPL3), tokenizer="sentencepiece", bpe_vocab=300, cache_dir=str(tmp_path))
    assert again.cfg.task_options["spm_proto"] == task.cfg.task_options["spm_proto"]
    other = task_with(path=str(GPL3), tokenizer="sentencepiece", bpe_vocab=400, cache_dir=str(tmp_path))
    assert other.bpe_cache_path != task.bpe_cache_path  # the settings are part of the key
    test = task.split_texts()["test"]
    assert task.tokenizer.decode(task.tokenizer.encode(test)) == test


# ----------------------------------------------------------------- prompts
def test_parse_prompt_characters_and_bpe(tmp_path):
    task = task_with(path=str(GPL3))
    known, mask = task.parse_prompt("GNU *License")
    assert known.shape == mask.shape == (64,) and mask.sum() == 11
    assert task.tokenizer.decode(known[:4]) == "GNU " and task.tokenizer.decode(known[-7:]) == "License"
    assert not mask[4:-7].any()
    known, mask = task.parse_prompt("a__b")
    assert mask[:4].tolist() == [True, False, False, True] and not mask[4:].any()
    with pytest.raises(UserError, match="at most one"):
        task.parse_prompt("a*b*")
    with pytest.raises(UserError, match="more than seq_len=64"):
        task.parse_prompt("x" * 65)
    bpe = task_with(path=str(GPL3), tokenizer="sentencepiece", bpe_vocab=300, cache_dir=str(tmp_path))
    known, mask = bpe.parse_prompt("the Program*")
    assert bpe.tokenizer.decode(known[mask]) == "the Program" and mask.sum() < 11
    assert mask[: int(mask.sum())].all() and not mask[int(mask.sum()):].any()  # fixed prefix, then free


# ----------------------------------------------------------------- training, sampling, resuming
def test_train_sample_evaluate_resume_and_sample_from_checkpoint(tmp_path):
    out, data = tmp_path / "run", tmp_path / "gpl.txt"
    data.write_text(GPL3.read_text())
    eng = Engine(TextFileTask(), out=out, path=str(data), **SMALL).fit()
    m = eng.evaluate()
    assert m["bpc"] == m["bits_per_token"] and m["bpc_characters"] == m["bpc_tokens"] == m["bpc_chunks"] * 64
    assert m["bpc_chunks"] == len(eng.task.load("test"))
    text = (out / "samples.txt").read_text()
    assert text.count("=== sample ") == 4
    resumed = Engine(TextFileTask(), out=out, path=str(data), **dict(SMALL, steps=5, bpc_draws=2))
    assert resumed.step == 3
    assert resumed.fit().step == 5
    data.write_text("\u00a7 " + GPL3.read_text())  # another alphabet: the same run cannot resume on it
    with pytest.raises(UserError, match="trained another model .*alphabet"):
        Engine(TextFileTask(), out=out, path=str(data), **SMALL)
    # the checkpoint carries the alphabet: sampling reads no data (the file is gone)
    data.unlink()
    ck = Engine.from_checkpoint(out / "last.pt")
    assert ck.task.chars.alphabet == eng.task.chars.alphabet and ck.task.vocab_size == eng.task.vocab_size
    known, mask = ck.task.parse_prompt("GNU *License")
    x = ck.sample(2, known=known[None].expand(2, -1), known_mask=mask[None].expand(2, -1))
    assert x.shape == (2, 64)
    for row in x:
        s = ck.task.tokenizer.decode(row)
        assert s.startswith("GNU ") and s.endswith("License")


def test_bpe_run_bpc_is_bits_per_token_times_tokens_per_character(tmp_path):
    data, cache = tmp_path / "gpl.txt", tmp_path / "cache"
    data.write_text(GPL3.read_text())
    opts = dict(SMALL, path=str(data), tokenizer="sentencepiece", bpe_vocab=300, cache_dir=str(cache))
    eng = Engine(TextFileTask(), out=tmp_path / "run", **opts).fit()
    m = eng.evaluate()
    test = eng.task.load("test").tokens
    chars = int(eng.task.tokenizer.char_counts(test).sum())
    assert m["bpc_characters"] == chars == len(eng.task.tokenizer.decode(test.flatten()))
    assert m["bpc_characters"] > m["bpc_tokens"] == test.numel()  # pieces merge characters
    assert m["bpc"] == pytest.approx(m["bits_per_token"] * m["bpc_tokens"] / m["bpc_characters"], rel=1e-12)
    # neither the data nor the cache is needed to sample the checkpoint: the model is in its config
    data.unlink()
    for f in cache.iterdir():
        f.unlink()
    ck = Engine.from_checkpoint(tmp_path / "run" / "last.pt")
    assert ck.task.vocab_size == eng.task.vocab_size == 301
    assert torch.equal(ck.task.tokenizer.encode("the Program"), eng.task.tokenizer.encode("the Program"))
    assert ck.sample(2).shape == (2, 64)


def test_cli_run_and_sample_with_prompt(tmp_path, capsys):
    out = tmp_path / "run"
    sets = [f"path={GPL3}"] + [f"{k}={v}" for k, v in SMALL.items()]
    assert cli_main(["run", "text-file", "--out", str(out)] + [a for s in sets for a in ("--set", s)]) == 0
    assert (out / "samples.txt").is_file() and (out / "last.pt").is_file()
    assert "bpc" in capsys.readouterr().out
    assert cli_main(["sample", str(out / "last.pt"), "--n", "2", "--steps", "2", "--prompt", "GNU *",
                     "--out", str(tmp_path / "s")]) == 0
    samples = (tmp_path / "s" / "samples.txt").read_text()
    assert samples.startswith("=== sample 0 ===\nGNU ") and "=== sample 1 ===\nGNU " in samples


def test_plugin_registers_text_file():
    assert registry().get("tasks", "text-file").factory is TextFileTask


# ----------------------------------------------------------------- bad input
def test_bad_inputs_name_the_file(tmp_path):
    with pytest.raises(UserError, match="needs its input: --set path="):
        task_with(path="")
    with pytest.raises(UserError, match=r"gone\.txt does not exist"):
        task_with(path=str(tmp_path / "gone.txt"))
    with pytest.raises(UserError, match="no file matches this glob"):
        task_with(path=str(tmp_path / "*.md"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty: the folder holds no files"):
        task_with(path=str(tmp_path / "empty"))
    (tmp_path / "e.txt").write_text("")
    with pytest.raises(UserError, match=r"file .*e\.txt is empty"):
        task_with(path=str(tmp_path / "e.txt"))
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9 au lait".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1\.txt is not UTF-8 text: byte 3 is b'\\xe9'"):
        task_with(path=str(tmp_path / "latin1.txt"))
    (tmp_path / "short.txt").write_text("a short text of a few words, " * 4)
    with pytest.raises(UserError, match=r"short\.txt: the test split .* holds 7 tokens, shorter than one chunk of seq_len=64"):
        task_with(path=str(tmp_path / "short.txt")).load("test")
    with pytest.raises(UserError, match=r"config tokenizer='bpe': must be chars \| sentencepiece"):
        task_with(path=str(GPL3), tokenizer="bpe")
    with pytest.raises(UserError, match="bpe_vocab=20 .* needs at least 76"):
        task_with(path=str(GPL3), tokenizer="sentencepiece", bpe_vocab=20, cache_dir=str(tmp_path))


def test_prepare_trains_the_bpe_model_into_the_cache(tmp_path, capsys):
    sets = [f"path={GPL3}", "tokenizer=sentencepiece", "bpe_vocab=300", f"cache_dir={tmp_path}"]
    assert cli_main(["prepare", "text-file"] + [a for s in sets for a in ("--set", s)]) == 0
    (model,) = tmp_path.glob("spm-*.model")
    assert f"sentencepiece BPE of 301 ids (with the newline id), cached at {model}" in capsys.readouterr().out
