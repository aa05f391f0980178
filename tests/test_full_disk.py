"""A disk that fills while a task prepares its data or caches (a vocabulary, a tokenizer, token
shards, a cleaned text) gets one line naming the file, and leaves no partial file behind."""
import errno

import pytest
import torch

from catdiff.api.errors import UserError
from catdiff.run import checkpoint


@pytest.fixture
def full_disk(monkeypatch):
    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a write to a full disk: no file name

    monkeypatch.setattr(checkpoint.os, "fsync", fsync)


def test_a_plugin_cache_write_on_a_full_disk_names_the_file_and_the_way_out(tmp_path, full_disk):
    path = tmp_path / "vq.pt"
    with pytest.raises(UserError) as e:
        checkpoint.save_torch({"w": torch.zeros(3)}, path, "VQ tokenizer")
    assert str(e.value) == (f"cannot write VQ tokenizer {path}: No space left on device; no VQ tokenizer was written. "
                            f"{checkpoint.CACHE_HINT}")
    assert list(tmp_path.iterdir()) == []


def test_token_shards_on_a_full_disk(tmp_path, full_disk):
    shards = pytest.importorskip("catdiff_vision.shards")
    (tmp_path / "shard-0.npy").write_bytes(b"before")
    with pytest.raises(UserError, match=r"cannot write token shard .*shard-0.npy: No space left on device; the "
                                        r"previous token shard .* is intact"):
        shards._atomic_write(tmp_path / "shard-0.npy", b"after")
    assert [p.name for p in tmp_path.iterdir()] == ["shard-0.npy"] and (tmp_path / "shard-0.npy").read_bytes() == b"before"


def test_a_bpe_model_on_a_full_disk_names_its_cache(tmp_path, full_disk):
    pytest.importorskip("sentencepiece")
    pytest.importorskip("catdiff_text")
    from catdiff import Engine

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    with pytest.raises(UserError, match=r"cannot write BPE model .*cache.*: No space left on device; no BPE model was "
                                        r"written\. Free space, or set the task's cache_dir"):
        Engine("text-file", path=str(corpus), tokenizer="sentencepiece", bpe_vocab=40, cache_dir=str(tmp_path / "cache"),
               seq_len=16)
    assert not any((tmp_path / "cache").rglob("*.tmp"))


def test_a_vocabulary_on_a_full_disk(tmp_path, full_disk):
    vocab = pytest.importorskip("catdiff_translate.vocab")
    with pytest.raises(UserError, match=r"cannot write vocabulary .*dict.de.txt: No space left on device"):
        vocab.FairseqDictionary.save([("hallo", 3)], tmp_path / "dict.de.txt")
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_on_a_full_disk_leaves_the_record_and_a_resume_logs_each_step_once(tmp_path, monkeypatch):
    import csv
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from toytask import ToyTask

    from catdiff import Engine

    run = tmp_path / "run"
    kw = dict(out=run, ckpt_every=2, log_every=1, eval_every=0, threads=1)
    Engine(ToyTask(), steps=2, **kw).fit()
    record = (run / "config.json").read_bytes()
    with monkeypatch.context() as m:
        m.setattr(checkpoint.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
        with pytest.raises(UserError, match="cannot write checkpoint"):
            Engine(ToyTask(), steps=4, **kw).fit()
    assert (run / "config.json").read_bytes() == record  # not a record of a checkpoint that was never written
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 2

    def logged():
        return [int(float(r["step"])) for r in csv.DictReader((run / "train_log.csv").open())]

    assert logged() == [1, 2, 3, 4]  # logged before the checkpoint failed: ahead of it
    assert Engine(ToyTask(), steps=4, **kw).fit().step == 4
    assert logged() == [1, 2, 3, 4]  # the rows of the lost steps 3-4 were dropped when they were trained again
