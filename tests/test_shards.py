"""Token shards: round trip, memory-mapped reads, resume of an interrupted extraction, and the
image-folder -> VQGAN -> shards path (with flips and class labels)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from catdiff.run.feed import BatchFeed
from catdiff_vision import shards

SEQ, VOCAB = 6, 1000


def fake_tokens(i: int) -> np.ndarray:
    return (np.arange(SEQ) * 37 + i * 11) % VOCAB


def encode(batch, calls=None):
    if calls is not None:
        calls.extend(batch)
    return np.stack([fake_tokens(i) for i in batch]), np.array([i % 7 for i in batch])


def test_round_trip_and_memmap(tmp_path):
    items = list(range(23))
    index = shards.write_shards(tmp_path, items, encode, seq_len=SEQ, vocab_size=VOCAB, shard_size=10, batch_size=4,
                                progress=False)
    meta = json.loads(index.read_text())
    assert meta["complete"] and meta["rows"] == 23 and [s["rows"] for s in meta["shards"]] == [10, 10, 3]
    assert (tmp_path / "tokens-00000.u16").stat().st_size == 10 * SEQ * 2  # uint16
    data = shards.ShardedTokens(tmp_path)
    assert len(data) == 23 and isinstance(data._tokens[0], np.memmap)
    toks, labels = data.rows([22, 0, 15, 9])
    assert toks.dtype == torch.int64 and torch.equal(toks[0], torch.from_numpy(fake_tokens(22)))
    assert labels.tolist() == [22 % 7, 0, 15 % 7, 9 % 7]
    td = data.token_data()
    assert td.tokens.shape == (23, SEQ) and torch.equal(td.tokens[13], torch.from_numpy(fake_tokens(13)))
    assert len(data.token_data(limit=5)) == 5
    with pytest.raises(IndexError):
        data.rows([23])


def test_resume_interrupted_extraction(tmp_path):
    items, calls = list(range(25)), []
    shards.write_shards(tmp_path, items, lambda b: encode(b, calls), seq_len=SEQ, vocab_size=VOCAB, shard_size=10,
                        progress=False, stop_after=1)
    assert calls == list(range(10))
    with pytest.raises(FileNotFoundError, match="incomplete .*rerun the same `catdiff prepare`"):
        shards.ShardedTokens(tmp_path)
    # a crash while writing shard 1: a half-written temp file, and a corrupt shard-2 file
    (tmp_path / "tokens-00001.u16.tmp").write_bytes(b"\0" * 7)
    (tmp_path / "tokens-00002.u16").write_bytes(b"\0" * 3)
    calls.clear()
    shards.write_shards(tmp_path, items, lambda b: encode(b, calls), seq_len=SEQ, vocab_size=VOCAB, shard_size=10,
                        progress=False)
    assert calls == list(range(10, 25))  # the finished shard was skipped
    data = shards.ShardedTokens(tmp_path)
    assert len(data) == 25
    assert torch.equal(data.token_data().tokens, torch.from_numpy(np.stack([fake_tokens(i) for i in items])))
    calls.clear()
    shards.write_shards(tmp_path, items, lambda b: encode(b, calls), seq_len=SEQ, vocab_size=VOCAB, shard_size=10,
                        progress=False)
    assert calls == []  # complete: nothing to do
    with pytest.raises(FileExistsError, match="other inputs or settings"):
        shards.write_shards(tmp_path, items[:-1], encode, seq_len=SEQ, vocab_size=VOCAB, shard_size=10, progress=False)


def test_bad_encoder_output(tmp_path):
    with pytest.raises(ValueError, match=r"outside \[0, 9\]"):
        shards.write_shards(tmp_path, [1, 2], encode, seq_len=SEQ, vocab_size=10, progress=False)
    with pytest.raises(ValueError, match="does not fit uint16"):
        shards.write_shards(tmp_path, [1], encode, seq_len=SEQ, vocab_size=70_000, progress=False)


def test_image_folders_to_shards(tmp_path):
    pytest.importorskip("PIL")
    from PIL import Image

    from catdiff_vision import image_data, vqgan

    torch.manual_seed(0)
    dd = dict(z_channels=8, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2], num_res_blocks=1,
              attn_resolutions=[], dropout=0.0)
    model = vqgan.VQGAN(dd, n_embed=40, embed_dim=4).eval()
    with torch.no_grad():
        model.quantize.embedding.weight.normal_()
    rng = np.random.default_rng(0)
    for cls in ("n02", "n01"):  # sorted: n01 -> 0, n02 -> 1
        (tmp_path / "src" / cls).mkdir(parents=True)
        for j in range(3):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "src" / cls / f"{j}.png")
    out = tmp_path / "tok"
    image_data.extract(tmp_path / "src", model, out, classes=True, size=16, flip=True, shard_size=4, batch_size=2,
                       progress=False)
    data = shards.ShardedTokens(out)
    assert len(data) == 12 and data.seq_len == 64 and data.meta["class_names"] == ["n01", "n02"]
    toks, labels = data.rows(np.arange(12))
    assert labels.tolist() == [0, 0, 0, 0, 0, 1, 0, 1, 1, 1, 1, 1]  # per batch: items, then their flips
    first = image_data.load_image(tmp_path / "src" / "n01" / "0.png", 16)
    assert first.shape == (3, 16, 16) and first.min() >= -1 and first.max() <= 1
    assert torch.equal(toks[0], model.encode(first[None]).flatten())
    assert torch.equal(toks[2], model.encode(first[None].flip(-1)).flatten())  # batch of 2: originals, then flips
    assert 0 <= int(toks.min()) and int(toks.max()) < 40
    with pytest.raises(FileNotFoundError, match="no class sub-folders"):
        image_data.list_images(tmp_path / "src" / "n01", classes=True)


def test_engine_streams_a_sharded_image_task(tmp_path, monkeypatch):
    from catdiff.run.engine import Engine
    from catdiff.api.task import LazyTokenData
    from catdiff_vision.image_tasks import ImageTask

    class TinyShards(ImageTask):
        name, vocab_size, seq_len, num_classes, classes = "tiny-shards", 40, 8, 3, True
        defaults = dict(layers=1, heads=2, width=32, embed_dim=16, batch_size=8, steps=3, warmup=1, log_every=10,
                        ckpt_every=100, sample_steps=2, n_samples=4, eval_batches=1, threads=1, device="cpu")

    def tiny(batch):
        return np.stack([(np.arange(8) * 5 + i * 3) % 40 for i in batch]), np.array([i % 3 for i in batch])

    for split, n in (("train", 50), ("test", 12)):
        shards.write_shards(tmp_path / "tokens" / split, list(range(n)), tiny, seq_len=8, vocab_size=40, shard_size=16,
                            progress=False)
    source = shards.ShardedTokens(tmp_path / "tokens" / "train")

    class InMemory(TinyShards):
        def load(self, split):
            return shards.ShardedTokens(self.tokens_dir(split)).token_data()

    reference = Engine(InMemory(), data_dir=str(tmp_path)).fit()

    def no_materialising(self, limit=None):
        raise AssertionError("ShardedTokens.token_data() was called: the whole split was materialised")

    monkeypatch.setattr(shards.ShardedTokens, "token_data", no_materialising)
    eng = Engine(TinyShards(), data_dir=str(tmp_path))
    train = eng.data("train")
    assert isinstance(train, LazyTokenData) and isinstance(train.source, shards.ShardedTokens)
    g = torch.Generator().manual_seed(eng.cfg.seed * 1_000_003 + 0)
    idx = torch.randint(len(source), (eng.cfg.batch_size,), generator=g)
    feed = BatchFeed(eng.splits, train, eng.cfg.seed, eng.cfg.batch_size, 0, 1, 0, 1)  # lazy splits' background gatherer
    x, cond = feed.get(0)
    feed.close()
    want_x, want_labels = source.rows(idx)
    assert torch.equal(x, want_x)
    assert torch.equal(cond, want_labels)
    eng.fit()
    sa, sb = reference.model.state_dict(), eng.model.state_dict()
    assert eng.step == 3 and all(torch.equal(sa[k], sb[k]) for k in sa)  # the same batches as in memory
    assert torch.isfinite(torch.tensor(eng.likelihood(batches=1)["nll_bound_nats_per_token"]))  # lazy test split
