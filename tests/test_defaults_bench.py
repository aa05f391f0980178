"""benchmarks.defaults on a tiny budget: both arms on the same test rows, the core arm with
no task defaults (plus ``--core`` candidates), rows appended per run and read back by --table."""
from __future__ import annotations

import json

import pytest

from benchmarks import defaults

pytestmark = pytest.mark.skipif(not defaults.LICENSES.is_dir(), reason="needs /usr/share/common-licenses (Debian)")


def test_both_arms_run_on_the_same_rows_and_the_table_reads_them_back(tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    common = ["--tasks", "words", "--steps", "2", "--samples", "4", "--eval-batches", "1", "--append", str(rows)]
    defaults.main(common + ["--arms", "tuned"])
    defaults.main(common + ["--arms", "core", "--seeds", "0", "1", "--core", "layers=1", "width=32", "heads=2"])
    got = [json.loads(line) for line in rows.read_text().splitlines()]
    assert [(r["arm"], r["seed"]) for r in got] == [("tuned", 0), ("core", 0), ("core", 1)]
    assert got[1]["core"] == {"layers": "1", "width": "32", "heads": "2"} and got[0]["core"] == {}
    # the tuned arm lists what the task changes against the core defaults; the budget is not a change
    assert got[0]["changed"]["embed_dim"] == 16 and "steps" not in got[0]["changed"]
    assert all(r["unigram"] == pytest.approx(got[0]["unigram"]) and 0 < r["unigram"] < 4.76 for r in got)
    capsys.readouterr()
    defaults.main(["--table", str(rows)])
    table = capsys.readouterr().out.splitlines()
    line = next(row for row in table if row.startswith("| words"))
    mean = (got[1]["bits"] + got[2]["bits"]) / 2
    assert f"{mean:.2f} ± " in line and "(seeds)" in line and "embed_dim=16" in line
