"""Third-party plugins through real importlib.metadata entry points (a dist-info on sys.path)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from catdiff.api import hooks
from catdiff.api.hooks import build_registry
from catdiff.run.engine import Engine
from toytask import ToyTask

PLUGIN = textwrap.dedent('''
    import torch
    from catdiff.api.hooks import hookimpl
    from catdiff.api.task import Task, TokenData

    class Stripes(Task):
        name = "stripes"
        vocab_size = 4
        seq_len = 8
        description = "alternating stripes (third-party test plugin)"
        defaults = dict(layers=1, heads=2, width=32, embed_dim=8, batch_size=8, warmup=2,
                        sample_steps=4, n_samples=8, eval_batches=1, log_every=1)

        def load(self, split):
            a = torch.arange(32) % 4
            return TokenData(torch.stack([(a[i : i + 8] % 2) * (i % 4) for i in range(16)]))

        def evaluate(self, tokens, labels, out_dir):
            return {"stripes_unique": float(len(set(map(tuple, tokens.tolist()))))}

    @hookimpl
    def catdiff_tasks():
        return {"stripes": Stripes}

    @hookimpl
    def catdiff_metrics():
        return {"stripes-unique": Stripes.evaluate}
''')

METHOD_PLUGIN = textwrap.dedent('''
    from catdiff.api.hooks import hookimpl
    from catdiff.methods import CATDM

    class HotCATDM(CATDM):
        """CATDM with a config key of its own (third-party test plugin)."""
        name = "hot-catdm"
        options = {"my_temperature": 0.5}

        def __init__(self, cfg):
            super().__init__(cfg)
            if self.option("my_temperature") <= 0:
                raise ValueError("my_temperature must be > 0")

    @hookimpl
    def catdiff_methods():
        return {"hot-catdm": HotCATDM}
''')


def make_dist(site: Path, dist: str, module: str, source: str) -> None:
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[catdiff]\n{dist} = {module}\n")


def run_cli(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "catdiff", *args], capture_output=True, text=True, env=env, timeout=300)


def test_third_party_plugin_is_listed_and_runs(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    make_dist(site, "catdiff-stripes", "catdiff_stripes", PLUGIN)
    make_dist(site, "catdiff-broken", "catdiff_broken", "raise ImportError('needs libfoo >= 2')\n")

    listing = run_cli(site, "list")
    assert listing.returncode == 0, listing.stderr
    assert "stripes" in listing.stdout and "from catdiff-stripes 0.1" in listing.stdout
    assert "encoder" in listing.stdout and "from catdiff" in listing.stdout
    assert ("catdiff: warning: plugin catdiff-broken failed to load and is skipped: ImportError: needs libfoo >= 2 "
            "(from catdiff-broken 0.1); run with --debug for the traceback") in listing.stderr

    out = tmp_path / "run"
    run = run_cli(site, "run", "stripes", "--out", str(out), "--steps", "3")
    assert run.returncode == 0, run.stderr
    assert "plugin catdiff-broken failed to load" in run.stderr  # every command says so
    assert (out / "metrics.json").exists() and (out / "last.pt").exists()
    assert "stripes_unique" in (out / "metrics.json").read_text()


RAISING_HOOK = textwrap.dedent('''
    from catdiff.api.hooks import hookimpl

    @hookimpl
    def catdiff_tasks():
        raise RuntimeError("cannot find its data index\\nsecond line")
''')


def test_broken_plugins_are_one_warning_line_each_on_every_command(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    make_dist(site, "catdiff-stripes", "catdiff_stripes", PLUGIN)
    make_dist(site, "catdiff-broken", "catdiff_broken", "raise ImportError('needs libfoo >= 2')\n")
    make_dist(site, "catdiff-raising", "catdiff_raising", RAISING_HOOK)
    files = {p: p.read_bytes() for p in site.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    warnings = [
        "catdiff: warning: plugin catdiff-broken failed to load and is skipped: ImportError: needs libfoo >= 2 "
        "(from catdiff-broken 0.1); run with --debug for the traceback",
        "catdiff: warning: plugin catdiff-raising failed to load and is skipped: RuntimeError in catdiff_tasks: "
        "cannot find its data index (from catdiff-raising 0.1); run with --debug for the traceback"]

    listing = run_cli(site, "list")  # goes on with the other plugins
    assert listing.returncode == 0 and "Traceback" not in listing.stderr, listing.stderr
    assert listing.stderr.splitlines() == warnings
    assert "from catdiff-stripes 0.1" in listing.stdout

    # the task asked for is missing: exit 2, the broken plugins named in the one error line
    run = run_cli(site, "run", "raising-task", "--out", str(tmp_path / "run"))
    lines = run.stderr.splitlines()
    assert run.returncode == 2 and "Traceback" not in run.stderr and lines[:2] == warnings, run.stderr
    assert len(lines) == 3 and lines[2].startswith("catdiff: error: unknown task 'raising-task'"), run.stderr
    assert "It may come from a plugin that failed to load: catdiff-broken (ImportError" in lines[2]
    assert "catdiff-raising (RuntimeError in catdiff_tasks" in lines[2] and "--debug" in lines[2]
    assert not (tmp_path / "run").exists()

    debug = run_cli(site, "--debug", "list")
    assert debug.returncode == 0 and debug.stderr.count("Traceback") == 2, debug.stderr
    assert "second line" in debug.stderr and "run with --debug" not in debug.stderr
    assert files == {p: p.read_bytes() for p in files}  # the plugins' files are untouched


def test_a_lazy_component_that_fails_to_import_is_named_when_used(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    make_dist(site, "catdiff-lazy", "catdiff_lazy", textwrap.dedent('''
        from catdiff.api.hooks import Lazy, hookimpl

        @hookimpl
        def catdiff_tasks():
            return {"lazy-task": Lazy("catdiff_lazy_gone:Task", "a task whose module is missing")}
    '''))
    listing = run_cli(site, "list")  # listing imports no component
    assert listing.returncode == 0 and "a task whose module is missing" in listing.stdout, listing.stderr
    run = run_cli(site, "run", "lazy-task", "--out", str(tmp_path / "run"))
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.splitlines()[-1] == (
        "catdiff: error: task 'lazy-task' of plugin catdiff-lazy 0.1 failed to load (ModuleNotFoundError: No module "
        "named 'catdiff_lazy_gone'); fix or reinstall the plugin (run with --debug for the traceback)"), run.stderr
    assert not (tmp_path / "run").exists()


def test_unknown_task_from_cli_lists_known_ones(tmp_path):
    res = run_cli(tmp_path, "run", "no-such-task", "--out", str(tmp_path / "x"))
    assert res.returncode == 2
    assert "unknown task 'no-such-task'" in res.stderr and "Known tasks:" in res.stderr


def test_registry_records_failures_without_raising(tmp_path, monkeypatch):
    import importlib.metadata as md

    site = tmp_path / "site"
    site.mkdir()
    make_dist(site, "catdiff-broken", "catdiff_broken", "raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(site))
    eps = [md.EntryPoint(name="catdiff-broken", value="catdiff_broken", group="catdiff")]
    reg = build_registry(entry_points=eps)
    assert "boom" in reg.failed["catdiff-broken"]
    assert "encoder" in reg.names("backbones")


class ClashTask(ToyTask):
    name = "toy-clash"
    options = {"my_temperature": 1.0}


def test_third_party_method_declares_typed_config_keys(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    make_dist(site, "catdiff-hot", "catdiff_hot", METHOD_PLUGIN)
    monkeypatch.syspath_prepend(str(site))
    reg = build_registry()  # discovers the dist-info on sys.path like any installed plugin
    assert reg.components["methods"]["hot-catdm"].source == "catdiff-hot 0.1"
    monkeypatch.setattr(hooks, "_REGISTRY", reg)

    assert Engine(ToyTask(), method="hot-catdm").method.option("my_temperature") == 0.5  # the default
    eng = Engine(ToyTask(), out=tmp_path / "run", method="hot-catdm", my_temperature="2", steps=2, threads=1)
    value = eng.method.option("my_temperature")
    assert value == 2.0 and type(value) is float and eng.cfg.my_temperature == 2.0
    eng.fit()
    back = Engine.from_checkpoint(tmp_path / "run" / "last.pt", task=ToyTask())
    assert type(back.method).__name__ == "HotCATDM" and back.method.option("my_temperature") == 2.0
    assert back.step == 2

    with pytest.raises(ValueError, match="my_temperature must be > 0"):
        Engine(ToyTask(), method="hot-catdm", my_temperature=0)
    with pytest.raises(ValueError, match="unknown config key 'my_temprature'.*my_temperature"):
        Engine(ToyTask(), method="hot-catdm", my_temprature=1)
    with pytest.raises(ValueError, match="config key 'my_temperature' is a setting of method 'hot-catdm', which "
                                         r"this run \(method 'catdm', backbone 'encoder'\) does not use"):
        Engine(ToyTask(), my_temperature=1)  # only the run's method's keys are accepted
    with pytest.raises(ValueError, match="'my_temperature' is declared by method 'hot-catdm' and by task 'toy-clash'"):
        Engine(ClashTask(), method="hot-catdm")


SHADOWING = textwrap.dedent('''
    from catdiff.api.hooks import hookimpl
    from catdiff.methods import CATDM
    from catdiff_stripes import Stripes

    class FakeDigits(Stripes):
        name = "digits"

    @hookimpl
    def catdiff_tasks():
        return {"stripes": Stripes, "digits": FakeDigits}

    @hookimpl
    def catdiff_methods():
        return {"catdm": CATDM}
''')


def test_colliding_names_keep_builtins_and_first_party_and_are_reported(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    make_dist(site, "catdiff-stripes", "catdiff_stripes", PLUGIN)
    make_dist(site, "catdiff-zzz", "catdiff_zzz", SHADOWING)  # a later package claiming taken names
    make_dist(site, "catdiff-zdup", "catdiff_zdup", "from catdiff_stripes import catdiff_metrics\n")
    ep = site / "catdiff_zdup-0.1.dist-info" / "entry_points.txt"
    ep.write_text("[catdiff]\ncatdiff-stripes = catdiff_zdup\n")  # an entry-point name already taken

    listing = run_cli(site, "list")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    at = lambda name: next(i for i, l in enumerate(lines) if l.split()[:1] == [name])  # noqa: E731
    assert "from catdiff-stripes 0.1" in lines[at("stripes")]
    assert "shadows the same name from catdiff-zzz 0.1" in lines[at("stripes") + 1]
    assert "from catdiff-vision" in lines[at("digits")] and "catdiff-zzz" in lines[at("digits") + 1]
    assert "from catdiff" in lines[at("catdm")] and "catdiff-zzz" in lines[at("catdm") + 1]
    assert "entry point name 'catdiff-stripes' of catdiff-zdup 0.1 is already taken by catdiff-stripes 0.1" \
        in listing.stdout
    assert "Plugin name already registered" not in listing.stdout + listing.stderr

    run = run_cli(site, "run", "stripes", "--out", str(tmp_path / "run"), "--steps", "1")
    assert run.returncode == 0, run.stderr
    assert ("catdiff: warning: task 'stripes' is provided by catdiff-stripes 0.1 and also by catdiff-zzz 0.1; "
            "using catdiff-stripes 0.1") in run.stderr


def test_the_method_of_docs_plugins_md_trains_as_a_third_party_package(tmp_path, monkeypatch):
    """The example method of docs/plugins.md, copied verbatim into a temporary package with an
    entry point, registers, trains a few steps, samples and infills: no edit to catdiff/."""
    text = (Path(__file__).parents[1] / "docs" / "plugins.md").read_text()
    source = next(block for block in text.split("```python\n")[1:] if "class Absorbing(Method)" in block)
    source = source.split("\n```")[0]
    site = tmp_path / "site"
    site.mkdir()
    make_dist(site, "catdiff-absorbing", "catdiff_absorbing", source)
    monkeypatch.syspath_prepend(str(site))
    reg = build_registry()
    assert reg.components["methods"]["absorbing"].source == "catdiff-absorbing 0.1", reg.failed
    monkeypatch.setattr(hooks, "_REGISTRY", reg)
    eng = Engine(ToyTask(), method="absorbing", steps=3, threads=1)
    eng.fit()
    assert eng.step == 3 and eng.method.networks() == {}
    x = eng.sample(4, steps=3, seed=0)
    assert x.shape == (4, ToyTask.seq_len) and 0 <= x.min() and x.max() < ToyTask.vocab_size
    known, mask = torch.zeros_like(x), torch.zeros(x.shape, dtype=torch.bool)
    mask[:, 0] = True
    assert (eng.sample(4, steps=3, known=known, known_mask=mask)[:, 0] == 0).all()
