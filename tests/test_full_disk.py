"""A disk that fills while a task prepares its data or caches (a vocabulary, a tokenizer, token
shards, a cleaned text) gets one line naming the file, and leaves no partial file behind."""
import errno

import pytest
import torch

from catdiff import checkpoint
from catdiff.errors import UserError


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
