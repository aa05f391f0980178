"""catdiff-translate's native fairseq data-bin reader (fairseq_bin.py).

Without fairseq: files from a small writer that follows the format, bytes that
fairseq-preprocess wrote, and the error cases. With fairseq (``-m interop``, ``make
test-interop``): real fairseq is the oracle, item by item."""
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("catdiff_translate")
from catdiff_translate.data import read_data_bin  # noqa: E402
from catdiff_translate.fairseq_bin import DataBinError, IndexedDataset  # noqa: E402
from catdiff_translate.vocab import FairseqDictionary  # noqa: E402

# fairseq/data/indexed_dataset.py's dtype codes, written out again here (not imported)
CODES = {np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5, np.float64: 6, np.uint16: 8,
         np.uint32: 9, np.uint64: 10}


def write_mmap(prefix, items, dtype=np.uint16, code=None) -> None:
    """An mmap-format pair, written from the format's description (items back to back)."""
    arrays = [np.asarray(x, dtype=dtype) for x in items]
    sizes = np.array([a.size for a in arrays], dtype="<i4")
    pointers = np.concatenate([[0], np.cumsum(sizes * np.dtype(dtype).itemsize)[:-1]]).astype("<i8")
    Path(f"{prefix}.bin").write_bytes(b"".join(a.tobytes() for a in arrays))
    header = b"MMIDIDX\x00\x00" + struct.pack("<QBQ", 1, code or CODES[dtype], len(arrays))
    Path(f"{prefix}.idx").write_bytes(header + sizes.tobytes() + pointers[:len(arrays)].tobytes())


def write_tnt(prefix, items, dtype=np.int32) -> None:
    """A legacy lazy/cached (TNTIDX) pair: ids + 1, element offsets, one shape per item."""
    arrays = [np.asarray(x, dtype=dtype) for x in items]
    shapes = [s for a in arrays for s in a.shape]
    dim_offsets = np.cumsum([0] + [a.ndim for a in arrays])
    data_offsets = np.cumsum([0] + [a.size for a in arrays])
    Path(f"{prefix}.bin").write_bytes(b"".join((a + 1).tobytes() for a in arrays))
    header = b"TNTIDX\x00\x00" + struct.pack("<QQQQQ", 1, CODES[dtype], np.dtype(dtype).itemsize, len(arrays),
                                             len(shapes))
    body = b"".join(np.asarray(v, dtype="<i8").tobytes() for v in (dim_offsets, data_offsets, shapes))
    Path(f"{prefix}.idx").write_bytes(header + body)


def as_lists(ds):
    return [x.tolist() for x in ds]


# ----------------------------------------------------------------------------- bytes fairseq wrote
# fairseq-preprocess (fairseq-fixed 0.12.3.1) on "hallo welt" / "guten tag welt": dict
# welt=4 guten=5 hallo=6 tag=7, </s>=2; --dataset-impl mmap (uint16) and --dataset-impl lazy (int32)
GOLDEN = [[6, 4, 2], [5, 7, 4, 2]]
MMAP_IDX = bytes.fromhex("4d4d494449445800 00 0100000000000000 08 0200000000000000 03000000 04000000"
                         "0000000000000000 0600000000000000")
MMAP_BIN = bytes.fromhex("0600 0400 0200 0500 0700 0400 0200")
TNT_IDX = bytes.fromhex("544e544944580000 0100000000000000 0400000000000000 0400000000000000"
                        "0200000000000000 0200000000000000 000000000000000001000000000000000200000000000000"
                        "000000000000000003000000000000000700000000000000 03000000000000000400000000000000")
TNT_BIN = bytes.fromhex("07000000 05000000 03000000 06000000 08000000 05000000 03000000")


@pytest.mark.parametrize("impl,idx,bin_", [("mmap", MMAP_IDX, MMAP_BIN), ("lazy", TNT_IDX, TNT_BIN)])
def test_reads_the_bytes_fairseq_preprocess_wrote(tmp_path, impl, idx, bin_):
    (tmp_path / "t.idx").write_bytes(idx)
    (tmp_path / "t.bin").write_bytes(bin_)
    ds = IndexedDataset(tmp_path / "t")
    assert ds.impl == impl and len(ds) == 2 and ds.sizes.tolist() == [3, 4]
    assert ds.dtype == (np.uint16 if impl == "mmap" else np.int32)
    assert as_lists(ds) == GOLDEN and as_lists(ds.items()) == GOLDEN
    assert ds[1].dtype == np.int64 and ds.items()[0].dtype == np.int64


# ----------------------------------------------------------------------------- our writer, read back
@pytest.mark.parametrize("dtype", list(CODES))
def test_every_dtype_code_round_trips(tmp_path, dtype):
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    top = min(int(info.max), 2**63 - 1) if info else 2.0**40
    low = int(info.min) if info else -5.0
    items = [[low, 0, 1], [], [top], [3, 2, 1, 0, 7]]
    write_mmap(tmp_path / "d", items, dtype)
    ds = IndexedDataset(tmp_path / "d")
    assert ds.dtype == np.dtype(dtype) and ds.sizes.tolist() == [3, 0, 1, 5]
    assert as_lists(ds) == as_lists(ds.items()) == [[int(v) for v in x] for x in items]


def test_code_7_is_float64(tmp_path):
    write_mmap(tmp_path / "d", [[1.0, 2.0], [5.0]], np.float64, code=7)
    ds = IndexedDataset(tmp_path / "d")
    assert ds.dtype == np.float64 and as_lists(ds) == [[1, 2], [5]]


def test_uint64_wraps_like_fairseq(tmp_path):
    """fairseq converts with ``astype(np.int64)``: 2**64 - 1 reads as -1."""
    write_mmap(tmp_path / "d", [[2**64 - 1, 2**63 - 1]], np.uint64)
    assert IndexedDataset(tmp_path / "d")[0].tolist() == [-1, 2**63 - 1]


def test_pointers_out_of_order_and_with_gaps(tmp_path):
    """Items are found by their pointers, not by position in .bin."""
    data = np.array([9, 9, 30, 31, 9, 10, 11, 12], dtype="<u2")
    (tmp_path / "d.bin").write_bytes(data.tobytes())
    sizes, pointers = np.array([4, 2, 0], "<i4"), np.array([8, 4, 16], "<i8")
    (tmp_path / "d.idx").write_bytes(b"MMIDIDX\x00\x00" + struct.pack("<QBQ", 1, 8, 3) + sizes.tobytes()
                                     + pointers.tobytes())
    ds = IndexedDataset(tmp_path / "d")
    assert as_lists(ds) == as_lists(ds.items()) == [[9, 10, 11, 12], [30, 31], []]
    (tmp_path / "d.idx").write_bytes(b"MMIDIDX\x00\x00" + struct.pack("<QBQ", 1, 8, 1)
                                     + np.array([2], "<i4").tobytes() + np.array([5], "<i8").tobytes())
    ds = IndexedDataset(tmp_path / "d")  # an odd byte offset: still read, item by item
    assert as_lists(ds.items()) == [[0x1F00, 0x0900]]  # bytes 00 1f 00 09


def test_legacy_format_round_trips_with_the_lua_shift(tmp_path):
    write_tnt(tmp_path / "l", [[0, 5, 2], [], [70000, 2]], np.int32)
    ds = IndexedDataset(tmp_path / "l")
    assert ds.impl == "lazy" and ds.sizes.tolist() == [3, 0, 2]
    assert as_lists(ds) == as_lists(ds.items()) == [[0, 5, 2], [], [70000, 2]]
    write_tnt(tmp_path / "m", [np.arange(6).reshape(2, 3), np.array([4])], np.int64)  # items of two axes
    ds = IndexedDataset(tmp_path / "m")
    assert ds[0].shape == (2, 3) and ds[0].tolist() == [[0, 1, 2], [3, 4, 5]] and ds.items()[1].tolist() == [4]


def test_empty_dataset(tmp_path):
    write_mmap(tmp_path / "e", [])
    ds = IndexedDataset(tmp_path / "e")
    assert len(ds) == 0 and ds.items() == [] and (tmp_path / "e.bin").stat().st_size == 0
    with pytest.raises(IndexError):
        ds[0]


def test_read_data_bin_and_the_task_use_the_native_reader(tmp_path, monkeypatch):
    """A data-bin directory, through read_data_bin and through mt-iwslt14 with data_bin set."""
    monkeypatch.setenv("CATDIFF_CACHE", str(tmp_path / "cache"))
    sents = {"de": ["das ist gut .", "wir gehen ."], "en": ["that is good .", "we go ."]}
    root = tmp_path / "bin"
    root.mkdir()
    for lang, lines in sents.items():
        d, entries = FairseqDictionary.build(lines)
        FairseqDictionary.save(entries, root / f"dict.{lang}.txt")
        for split in ("train", "valid", "test"):
            write_mmap(root / f"{split}.de-en.{lang}", [d.encode(s) + [d.eos_id] for s in lines])
    src, tgt = read_data_bin(root, "test", "de", "en")
    en = FairseqDictionary.load(root / "dict.en.txt")
    assert [en.decode(t) for t in tgt] == sents["en"] and tgt[0][-1] == en.eos_id and len(src) == 2

    from catdiff.run.engine import Engine

    eng = Engine(task="mt-iwslt14", data_bin=str(root), layers=1, width=16, heads=2, embed_dim=8, threads=1)
    test = eng.data("test")
    assert eng.task._refs["test"] == sents["en"] and test.tokens.shape[0] == 2

    write_mmap(root / "valid.de-en.en", [[4, 2]])  # one target sentence for two sources
    with pytest.raises(ValueError, match="2 source but 1 target"):
        read_data_bin(root, "valid", "de", "en")
    with pytest.raises(FileNotFoundError, match=r"train\.de-fr\.de\.idx not found.*fairseq-preprocess"):
        read_data_bin(root, "train", "de", "fr")


# ----------------------------------------------------------------------------- errors name the file
def corrupt(tmp_path, idx=None, bin_=None):
    write_mmap(tmp_path / "c", [[1, 2, 3], [4, 5]])
    if idx is not None:
        (tmp_path / "c.idx").write_bytes(idx((tmp_path / "c.idx").read_bytes()))
    if bin_ is not None:
        (tmp_path / "c.bin").write_bytes(bin_((tmp_path / "c.bin").read_bytes()))
    return tmp_path / "c"


@pytest.mark.parametrize("idx,bin_,message", [
    (lambda b: b"NOTANIDX!" + b[9:], None, r"c\.idx: not a fairseq index \(starts with b'NOTANIDX!'"),
    (lambda b: b"HUFFIDX\x00\x00" + b[9:], None, r"c\.idx: a fairseq 'huffman' index.*--dataset-impl mmap"),
    (lambda b: b[:9] + struct.pack("<Q", 2) + b[17:], None, r"c\.idx: index version 2; fairseq writes"),
    (lambda b: b[:17] + bytes([11]) + b[18:], None, r"c\.idx: unknown dtype code 11"),
    (lambda b: b[:-1], None, r"c\.idx: truncated: 49 bytes, an mmap index of 2 items needs 50"),
    (lambda b: b[:20], None, r"c\.idx: truncated: 20 bytes, the mmap index header needs 26"),
    (lambda b: b + struct.pack("<QQ", 1, 0), None, r"c\.idx: 16 bytes after the end of an mmap index of 2 items"),
    (None, lambda b: b[:-1], r"c\.bin: truncated, or not the data of c\.idx: item 1 lies at bytes 6\.\.10, "
                             r"the file has 9"),
    (lambda b: b[:34] + struct.pack("<q", -2) + b[42:], None, r"c\.bin: truncated.*item 0 lies at bytes -2"),
])
def test_bad_files_say_which_and_why(tmp_path, idx, bin_, message):
    with pytest.raises(DataBinError, match=message):
        IndexedDataset(corrupt(tmp_path, idx, bin_))


def test_truncated_legacy_index(tmp_path):
    write_tnt(tmp_path / "l", [[1, 2], [3]])
    (tmp_path / "l.idx").write_bytes((tmp_path / "l.idx").read_bytes()[:-8])
    with pytest.raises(DataBinError, match=r"l\.idx: truncated: 104 bytes, a lazy/cached index of 2 items needs 112"):
        IndexedDataset(tmp_path / "l")


def test_missing_files_and_raw_text(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing\.idx not found$"):
        IndexedDataset(tmp_path / "nothing")
    write_mmap(tmp_path / "c", [[1]])
    (tmp_path / "c.bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"c\.bin not found"):
        IndexedDataset(tmp_path / "c")
    (tmp_path / "test.de-en.de").write_text("hallo welt\n")  # what --dataset-impl raw leaves
    with pytest.raises(FileNotFoundError, match=r"test\.de-en\.de is a text file.*--dataset-impl mmap"):
        IndexedDataset(tmp_path / "test.de-en.de")


# ----------------------------------------------------------------------------- real fairseq, the oracle
@pytest.fixture
def fairseq():
    try:
        import fairseq.data.indexed_dataset  # noqa: F401
        from fairseq.data import data_utils  # noqa: F401
    except Exception as e:  # noqa: BLE001 - an install that does not import cannot be the oracle
        pytest.skip(f"fairseq not importable ({type(e).__name__}: {e}); make test-interop installs it")
    return sys.modules["fairseq"]


CORPUS = {"de": ["hallo welt .", "guten tag , welt !", "ein haus", "", "wir gehen nach hause ."],
          "en": ["hello world .", "good day , world !", "a house", "", "we go home ."]}


def preprocess(tmp_path, impl, corpus=CORPUS, extra=()):
    """fairseq-preprocess on ``corpus`` (train = valid = test), in a subprocess, into tmp_path/impl."""
    for split in ("train", "valid", "test"):
        for lang, lines in corpus.items():
            (tmp_path / f"{split}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    dest = tmp_path / impl
    prefixes = [f"--{s}pref={tmp_path / s}" for s in ("train", "valid", "test")]
    subprocess.run([sys.executable, "-m", "fairseq_cli.preprocess", "--source-lang", "de", "--target-lang", "en",
                    *prefixes, f"--destdir={dest}", "--workers=1", f"--dataset-impl={impl}", *extra],
                   check=True, capture_output=True)
    return dest


def assert_same_items(ours, theirs):
    assert len(ours) == len(theirs) > 0
    listed = ours.items()
    for i in range(len(theirs)):
        expect = theirs[i].numpy()
        assert expect.dtype == np.int64
        np.testing.assert_array_equal(ours[i], expect)
        np.testing.assert_array_equal(listed[i], expect)


@pytest.mark.interop
@pytest.mark.parametrize("impl", ["mmap", "lazy"])
def test_fairseq_preprocess_output_matches_fairseq(tmp_path, fairseq, impl):
    import torch
    from fairseq.data import Dictionary, data_utils

    dest = preprocess(tmp_path, impl)
    for lang in ("de", "en"):
        assert FairseqDictionary.load(dest / f"dict.{lang}.txt").symbols == \
            Dictionary.load(str(dest / f"dict.{lang}.txt")).symbols
        for split in ("train", "valid", "test"):
            prefix = dest / f"{split}.de-en.{lang}"
            theirs = data_utils.load_indexed_dataset(str(prefix), dataset_impl=impl)  # fairseq's own loader
            ours = IndexedDataset(prefix)
            assert ours.impl == impl and ours.sizes.tolist() == list(theirs.sizes)
            assert_same_items(ours, theirs)
    src, tgt = read_data_bin(dest, "test", "de", "en")
    en = Dictionary.load(str(dest / "dict.en.txt"))
    assert [en.string(torch.from_numpy(t[:-1])) for t in tgt] == CORPUS["en"] and all(t[-1] == en.eos() for t in tgt)


@pytest.mark.interop
def test_large_vocabulary_uses_uint32(tmp_path, fairseq):
    """Over 65500 symbols fairseq-preprocess stores uint32 (dtype code 9)."""
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    words = [f"w{i}" for i in range(66000)]
    corpus = {"de": [" ".join(words[i:i + 60]) for i in range(0, len(words), 60)], "en": ["x"] * 1100}
    dest = preprocess(tmp_path, "mmap", corpus)
    ours = IndexedDataset(dest / "train.de-en.de")
    assert ours.dtype == np.uint32 and (dest / "train.de-en.de.idx").read_bytes()[17] == 9
    assert max(int(x.max()) for x in ours.items()) > 65535
    assert_same_items(ours, MMapIndexedDataset(str(dest / "train.de-en.de")))


@pytest.mark.interop
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.int64, np.float64, np.uint16,
                                   np.uint32, np.uint64])
def test_fairseq_builders_every_dtype(tmp_path, fairseq, dtype):
    """fairseq's own builders (mmap and legacy) for each dtype it has a code for; and fairseq
    reads what this file's test writer writes."""
    import torch
    from fairseq.data import indexed_dataset as fid

    items = [torch.tensor(x) for x in ([1, 2, 3], [], [100, 7], [4] * 9)]
    builder = fid.MMapIndexedDatasetBuilder(str(tmp_path / "f.bin"), dtype=dtype)
    for t in items:
        builder.add_item(t)
    builder.finalize(str(tmp_path / "f.idx"))
    assert_same_items(IndexedDataset(tmp_path / "f"), fid.MMapIndexedDataset(str(tmp_path / "f")))
    assert (tmp_path / "f.idx").read_bytes()[17] == CODES[dtype]

    write_mmap(tmp_path / "o", [t.tolist() for t in items], dtype)
    assert [x.tolist() for x in fid.MMapIndexedDataset(str(tmp_path / "o"))] == [t.tolist() for t in items]

    if dtype in fid.IndexedDatasetBuilder.element_sizes and dtype != np.float64:  # fairseq's float64 size is wrong
        legacy = fid.IndexedDatasetBuilder(str(tmp_path / "l.bin"), dtype=dtype)
        for t in items:
            legacy.add_item(t)
        legacy.finalize(str(tmp_path / "l.idx"))
        assert_same_items(IndexedDataset(tmp_path / "l"), fid.IndexedDataset(str(tmp_path / "l"),
                                                                             fix_lua_indexing=True))
        write_tnt(tmp_path / "t", [t.tolist() for t in items], dtype)
        assert [x.tolist() for x in fid.IndexedDataset(str(tmp_path / "t"), fix_lua_indexing=True)] == \
            [t.tolist() for t in items]
