"""The benchmarks as a package: ``python -m benchmarks`` lists them, none edits sys.path, and
each one's ``--quick`` run goes end to end and prints its table (the figures are not checked:
a quick run measures nothing)."""
from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NAMES = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem not in ("__init__", "__main__", "harness"))

# what each benchmark's table prints (its header lines), as regular expressions over the output
TABLES = {
    "ablation": [r"^arm +seed +FID +bits/tok", r"^AR +0 "],
    "ablation_digits": [r"^arm +seed +FID +bits/tok", r"^CATDM w/o CM +0 "],
    "compare": [r"^\| method \| steps \| ms/step .* FID@2 ", r"equal training time", r"equal training steps",
                r"^\| AR \(KV cache\) \| 8 \|"],
    "defaults": [r"^\| task \| unigram \| core defaults ", r"^\| words \| ", r"^\| digits \| "],
    "dropping": [r"^arm +seed +FID +bits/tok", r"^rand\(0.2\), z_0 0.5 +0 "],
    "gpu_check": [r"^\[gpu check\] device cpu", r"^\| precision \| steps \| ms/step \| FID \| bits/token \|",
                  r"^\| ar \| 4 \| ", r"^\| catdm \| heun \| 2 \| [0-9.]+ \| 4 \|$"],
    "frontier": [r"^\| arm \| 1 \| 2 \|$", r"^\| CATDM heun \| ", r"^CATDM is the best method at ",
                 r"^\| NFE ≤ \| catdm \| maskgit \|$", r"^wrote .*frontier-digits.png$"],
    "image_steps": [r"^ +steps +ancestral +ddim", r"^ +w +FID +IS-like +label acc"],
    "sampler_sweep": [r"^\| sampling setting \| FID \|", r"^\| ancestral, 50 steps, tau 2.0 \| "],
    "scaling": [r"^\| method \| 3 CPU-s: steps, FID, bits/token \(train\) \|", r"^\| AR \| \d+, ",
                r"^FID ~ compute\^b", r"^bits per token ~ compute\^b"],
    "speed": [r"^\[summary\]", r"^ +backbone +prec +ours +stock +ours/stock", r"^\[training loop"],
    "steps": [r"^arm +seed +2 +4$", r"^MaskGIT +0 "],
    "text_bpc": [r"^arm +BPC +\+- se", r"^CATDM-CE "],
    "threads": [r"^\| arm \| threads \| wall s \| CPU s \|", r"^\| threads=0 \(free cores\) \| \d+ \| "],
    "text_quality": [r"^\| method \| train steps \| sampler \| steps \| gen. ppl ", r"^\| real test data \| ",
                     r"^\| VQ-Diffusion \| \d+ \| purity \| 2 \| "],
}


def test_every_benchmark_is_listed_and_imports_without_path_hacks():
    assert sorted(TABLES) == NAMES
    out = subprocess.run([sys.executable, "-m", "benchmarks"], cwd=ROOT, capture_output=True, text=True, check=True)
    listed = [line.split()[0] for line in out.stdout.splitlines()[1:]]
    assert listed == NAMES
    for name in ("harness", *NAMES):
        assert "sys.path" not in (ROOT / "benchmarks" / f"{name}.py").read_text(), name


def missing_data(name: str) -> str | None:
    """Why ``name``'s quick run cannot go here (data sets that take minutes to prepare), or None."""
    if name == "speed":
        return "speed's --quick is its own short measurement (minutes on 2 cores); make bench-quick runs it"
    if name in ("defaults", "text_quality") and not Path("/usr/share/common-licenses").is_dir():
        return "needs /usr/share/common-licenses (Debian)"
    if name == "text_bpc":
        from catdiff_text.tasks import DEFAULT_SWORD_DIR

        if not (Path(DEFAULT_SWORD_DIR) / "ot.czs").is_file():
            return "needs the Debian package sword-comm-tdavid"
    if name == "image_steps":
        from catdiff_vision.fashion import FashionTask

        task = FashionTask()
        if not (task.vq_path.is_file() and task.tokens_dir("train").is_dir()):
            return "fashion-mnist not prepared (`catdiff prepare fashion-mnist`, minutes)"
    return None


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_quick_run_prints_the_table(name, tmp_path, monkeypatch, capsys):
    """``python -m benchmarks.NAME --quick --threads 1``, run in this process: seconds to a minute
    each on one core, ~3 min for all; speed is left to ``make bench-quick`` (its --quick is its own
    short measurement, cited in docs/results.md: 7 min on a loaded 2-core VM)."""
    reason = missing_data(name)
    if reason:
        pytest.skip(reason)
    monkeypatch.chdir(tmp_path)  # results files written by default land here
    assert importlib.import_module(f"benchmarks.{name}").main(["--quick", "--threads", "1"]) in (None, 0)
    out = capsys.readouterr().out
    for pattern in TABLES[name]:
        assert re.search(pattern, out, re.M), (pattern, out[-3000:])
