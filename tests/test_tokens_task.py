"""The tokens task: arrays and shards, the fixed split, vocabulary from the data, runs, bad input."""
import numpy as np
import pytest
import torch

from catdiff import Engine
from catdiff.api.errors import UserError
from catdiff.api.hooks import registry
from catdiff.api.task import LazyTokenData
from catdiff.cli import main as cli_main
from catdiff.run.config import for_task
from catdiff_tokens.task import TokensTask

SMALL = dict(layers=1, heads=2, width=32, embed_dim=16, batch_size=8, steps=3, warmup=1, n_samples=4,
             sample_steps=4, eval_batches=1, threads=1, log_every=100, ckpt_every=100)
N, M, K = 120, 12, 9


def progressions(n=N, seed=0):
    """Rows (start + step * i) mod K with the label step - 1 (two classes)."""
    g = np.random.default_rng(seed)
    start, step = g.integers(0, K, (n, 1)), g.integers(1, 3, (n, 1))
    return ((start + step * np.arange(M)) % K).astype(np.int32), (step[:, 0] - 1).astype(np.int16)


@pytest.fixture
def arrays(tmp_path):
    x, y = progressions()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    return tmp_path / "x.npy", tmp_path / "y.npy"


def task_with(**opts) -> TokensTask:
    task = TokensTask()
    task.setup(for_task(task, None, dict(SMALL, **opts)))
    return task


# ----------------------------------------------------------------- data, split, vocabulary
def test_vocab_seq_len_and_classes_from_the_data_are_stored(arrays):
    x, y = arrays
    task = task_with(path=str(x))
    assert (task.vocab_size, task.seq_len, task.num_classes) == (int(np.load(x).max()) + 1, M, 0)
    assert task.cfg.task_options["vocab_size"] == task.vocab_size and task.cfg.task_options["seq_len"] == M
    cond = task_with(path=str(x), labels=str(y), vocab_size=20)
    assert (cond.vocab_size, cond.num_classes) == (20, 2) and cond.cfg.task_options["num_classes"] == 2
    train = cond.load("train")
    assert train.tokens.dtype == torch.long and train.labels.tolist() == \
        (train.tokens[:, 1] - train.tokens[:, 0]).remainder(K).sub(1).tolist()  # labels travel with their rows


def test_split_is_fixed_disjoint_and_complete(tmp_path):
    ids = np.arange(N)[:, None] + np.zeros((1, M), dtype=np.int64)  # row i holds id i: rows are identifiable
    np.save(tmp_path / "ids.npy", ids)
    a, b = task_with(path=str(tmp_path / "ids.npy")), task_with(path=str(tmp_path / "ids.npy"), seed=5)
    train, test = (a.load(s).tokens[:, 0].tolist() for s in ("train", "test"))
    assert (len(train), len(test)) == (108, 12)
    assert sorted(train + test) == list(range(N)) and not set(train) & set(test)
    assert test == b.load("test").tokens[:, 0].tolist()  # independent of the run's seed
    assert test != list(range(108, 120))  # drawn, not the last rows (arrays are often sorted)


def test_pt_file_with_test_path(tmp_path):
    x, y = progressions()
    tx, ty = progressions(30, seed=1)
    torch.save(torch.from_numpy(x).long(), tmp_path / "x.pt")
    torch.save(torch.from_numpy(tx).long(), tmp_path / "tx.pt")
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "ty.npy", ty)
    task = task_with(path=str(tmp_path / "x.pt"), labels=str(tmp_path / "y.npy"),
                     test_path=str(tmp_path / "tx.pt"), test_labels=str(tmp_path / "ty.npy"))
    assert len(task.load("train")) == N and torch.equal(task.load("test").tokens, torch.from_numpy(tx).long())
    assert task.load("test").labels.tolist() == ty.tolist()


def test_shard_directories_are_read_lazily(tmp_path):
    shards = pytest.importorskip("catdiff_vision.shards")
    x, y = progressions()
    for split, rows in (("train", slice(0, 100)), ("test", slice(100, N))):
        items = list(range(N))[rows]
        shards.write_shards(tmp_path / split, items, lambda b: (x[b], y[b]), seq_len=M, vocab_size=16,
                            shard_size=40, progress=False, meta={"class_names": ["one", "two"]})
    task = task_with(path=str(tmp_path))
    assert (task.vocab_size, task.seq_len, task.num_classes) == (16, M, 2)  # the shards' declared vocabulary
    train = task.load("train")
    assert isinstance(train, LazyTokenData) and len(train) == 100
    tokens, labels = train.rows(torch.tensor([0, 99]))
    assert tokens.tolist() == x[[0, 99]].tolist() and labels.tolist() == y[[0, 99]].tolist()
    one = task_with(path=str(tmp_path / "train"))  # a single shard directory: the fixed split of its rows
    assert (len(one.load("train")), len(one.load("test"))) == (90, 10)
    eng = Engine(TokensTask(), path=str(tmp_path), **SMALL).fit()
    assert eng.step == 3 and eng.sample(2, labels=torch.tensor([0, 1])).shape == (2, M)


# ----------------------------------------------------------------- training, sampling, resuming
def test_train_sample_evaluate_resume_and_sample_from_checkpoint(arrays, tmp_path):
    x, y = arrays
    out = tmp_path / "run"
    eng = Engine(TokensTask(), out=out, path=str(x), labels=str(y), **SMALL).fit()
    m = eng.evaluate()
    train = eng.task.load("train").tokens
    p = torch.bincount(train.flatten(), minlength=K).double() / train.numel()
    assert m["unigram_bits"] == pytest.approx(-(p[p > 0] * p[p > 0].log2()).sum().item(), rel=1e-12)
    assert 0 <= m["test_unigram_tv"] <= 1 and 0 <= m["sample_unigram_tv"] <= 1
    assert np.load(out / "samples.npy").shape == (4, M) and np.load(out / "sample_labels.npy").tolist() == [0, 1, 0, 1]
    lines = (out / "samples.txt").read_text().splitlines()
    assert len(lines) == 4 and lines[1].startswith("1: ") and len(lines[1].split()) == M + 1
    resumed = Engine(TokensTask(), out=out, path=str(x), labels=str(y), **dict(SMALL, steps=5))
    assert resumed.step == 3 and resumed.fit().step == 5
    # vocab_size / seq_len / num_classes are in the checkpoint's config: no data needed to sample it
    x.unlink()
    y.unlink()
    ck = Engine.from_checkpoint(out / "last.pt")
    assert (ck.task.vocab_size, ck.task.seq_len, ck.task.num_classes) == (K, M, 2)
    known, mask = ck.task.parse_prompt("1 2 * 8")
    s = ck.sample(2, labels=torch.tensor([1, 1]), known=known[None].expand(2, -1), known_mask=mask[None].expand(2, -1))
    assert s[:, :2].tolist() == [[1, 2]] * 2 and s[:, -1].tolist() == [8, 8] and int(s.max()) < K


def test_cli_run(arrays, tmp_path):
    x, _ = arrays
    sets = [f"path={x}"] + [f"{k}={v}" for k, v in SMALL.items()]
    assert cli_main(["run", "tokens", "--out", str(tmp_path / "run")] + [a for s in sets for a in ("--set", s)]) == 0
    assert np.load(tmp_path / "run" / "samples.npy").shape == (4, M)


def test_parse_prompt():
    task = TokensTask()
    task.vocab_size, task.seq_len = 10, 6
    known, mask = task.parse_prompt("3, _ 5 *")
    assert known.tolist() == [3, 0, 5, 0, 0, 0] and mask.tolist() == [True, False, True, False, False, False]
    known, mask = task.parse_prompt("* 9")
    assert known.tolist()[-1] == 9 and mask.tolist() == [False] * 5 + [True]
    with pytest.raises(UserError, match="token id 10 outside"):
        task.parse_prompt("10")
    with pytest.raises(UserError, match="'a' is not a token id"):
        task.parse_prompt("1 a")
    with pytest.raises(UserError, match="more than seq_len=6"):
        task.parse_prompt("1 2 3 4 5 6 7")


def test_plugin_registers_tokens():
    assert registry().get("tasks", "tokens").factory is TokensTask


# ----------------------------------------------------------------- bad input
def test_bad_inputs_name_the_file(tmp_path, arrays):
    x, y = arrays
    with pytest.raises(UserError, match="needs its data: --set path="):
        task_with()
    with pytest.raises(UserError, match=r"token array .*gone\.npy not found"):
        task_with(path=str(tmp_path / "gone.npy"))
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(UserError, match=r"x\.csv is not a .npy or .pt file"):
        task_with(path=str(tmp_path / "x.csv"))
    with pytest.raises(UserError, match=r"x\.npy holds token id 8, outside \[0, 4\] of vocab_size=5"):
        task_with(path=str(x), vocab_size=5)
    cases = {"flat.npy": (np.arange(5), r"flat\.npy holds an array of shape \(5,\); expected \[N, M\]"),
             "cube.npy": (np.zeros((2, 3, 4), dtype=np.int64), r"cube\.npy holds an array of shape \(2, 3, 4\)"),
             "float.npy": (np.zeros((4, 3)), r"float\.npy has dtype float64; it must hold integer ids"),
             "empty.npy": (np.zeros((0, 3), dtype=np.int64), r"empty\.npy is empty"),
             "neg.npy": (-np.ones((2, 3), dtype=np.int64), r"neg\.npy holds the negative id -1")}
    for name, (arr, msg) in cases.items():
        np.save(tmp_path / name, arr)
        with pytest.raises(UserError, match=msg):
            task_with(path=str(tmp_path / name))
    torch.save({"tokens": torch.zeros(2, 3)}, tmp_path / "dict.pt")
    with pytest.raises(UserError, match=r"dict\.pt holds a dict, not a tensor"):
        task_with(path=str(tmp_path / "dict.pt"))
    np.save(tmp_path / "short_labels.npy", np.zeros(N - 1, dtype=np.int64))
    with pytest.raises(UserError, match=rf"short_labels\.npy hold {N - 1} entries but .*x\.npy has {N} rows"):
        task_with(path=str(x), labels=str(tmp_path / "short_labels.npy"))
    with pytest.raises(UserError, match=r"labels hold class 1, outside \[0, 0\] of num_classes=1"):
        task_with(path=str(x), labels=str(y), num_classes=1)
    np.save(tmp_path / "wide.npy", np.zeros((5, M + 1), dtype=np.int64))
    with pytest.raises(UserError, match=rf"wide\.npy has sequences of {M + 1} tokens but .*x\.npy has {M}"):
        task_with(path=str(x), test_path=str(tmp_path / "wide.npy"))
    with pytest.raises(UserError, match=r"give test_labels for .*wide\.npy"):
        task_with(path=str(x), labels=str(y), test_path=str(tmp_path / "wide.npy"))


def test_bad_settings_are_refused_before_the_data_is_read():
    for key, value, allowed in (("test_frac", 1.0, r"in \(0, 1\)"), ("vocab_size", -1, ">= 0")):
        with pytest.raises(UserError, match=rf"config {key}={value!r}: must be {allowed}"):
            for_task(TokensTask(), None, {"path": "/nonexistent.npy", key: value})


def test_a_training_split_of_one_token_id_is_warned(tmp_path, capsys):
    from catdiff.run.splits import check_tokens

    np.save(tmp_path / "same.npy", np.full((N, M), 3, dtype=np.int64))
    task = task_with(path=str(tmp_path / "same.npy"))
    check_tokens(task.load("test"), task, "test")
    assert capsys.readouterr().err == ""  # the test split is not what trains
    check_tokens(task.load("train"), task, "train")
    assert capsys.readouterr().err == ("catdiff: warning: task 'tokens': its training split holds one token id only "
                                       "(3): there is nothing to learn but that id\n")
