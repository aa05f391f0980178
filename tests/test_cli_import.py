"""`catdiff --help` and the plugin registry's modules must not import torch, nor the
names a one-module plugin imports (Method, Task, Setting, hookimpl)."""
import subprocess
import sys

import pytest

CHECK = "import sys; {stmt}; bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')); " \
        "print('TORCH' if bad else 'CLEAN', bad[:5])"


def _run(stmt: str) -> str:
    out = subprocess.run([sys.executable, "-c", CHECK.format(stmt=stmt)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("stmt", [
    "import catdiff",
    "import catdiff.cli",
    "import catdiff.api.hooks",
    # the first-party plugin modules an entry point loads (their hooks import the components)
    "import catdiff_vision.plugin, catdiff_text.plugin, catdiff_translate.plugin, catdiff_tokens.plugin",
    # what a one-module plugin imports to define a method or a task and register it
    "from catdiff import Method, Task, Setting, hookimpl, TokenData",
])
def test_light_modules_do_not_import_torch(stmt):
    assert _run(stmt).startswith("CLEAN"), _run(stmt)


def test_help_does_not_import_torch():
    """`python -m catdiff --help` under -X importtime: no torch module in the import log."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "catdiff", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout
    imported = [line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")]
    assert "catdiff.cli" in imported  # the log is real
    assert not [m for m in imported if m == "torch" or m.startswith("torch.")]


def test_lazy_names_still_resolve():
    import catdiff
    from catdiff.api.hooks import GROUP, hookimpl, hookspec
    from catdiff.api.markers import hookimpl as marker

    assert hookimpl is marker and GROUP == "catdiff" and hookspec is not None
    assert catdiff.Task.__name__ == "Task" and catdiff.TokenData.__name__ == "TokenData"
    assert catdiff.Method.__name__ == "Method" and catdiff.Engine.__name__ == "Engine"
    assert {"Engine", "Task"} <= set(dir(catdiff))
    with pytest.raises(AttributeError):
        catdiff.NoSuchThing
    from catdiff_text import ALPHABET, CharTokenizer

    assert len(ALPHABET) == CharTokenizer().vocab_size


def test_list_does_not_import_torch():
    """`catdiff list` builds the registry of every installed plugin without importing a component."""
    out = subprocess.run([sys.executable, "-c", "import sys, runpy; sys.argv = ['catdiff', 'list']\n"
                          "try:\n    runpy.run_module('catdiff', run_name='__main__')\nexcept SystemExit as e:\n"
                          "    assert not e.code, e.code\nprint('TORCH' if 'torch' in sys.modules else 'CLEAN')"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "digits" in out.stdout and "catdm" in out.stdout and out.stdout.splitlines()[-1] == "CLEAN", out.stdout


def test_lazy_components_resolve_and_keep_their_descriptions():
    """Every component named by reference imports, and a task's or method's listed description is its class's."""
    from catdiff.api.hooks import Lazy, build_registry
    from catdiff.methods import builtin_methods

    reg = build_registry()
    assert not reg.failed, reg.failed
    lazy = [c for kind in reg.components.values() for c in kind.values() if isinstance(c.ref, Lazy)]
    assert {c.name for c in lazy} >= {"digits", "text8", "tokens", "mt-ding", "catdm", "encoder", "bleu"}
    for c in lazy:
        listed = c.description
        factory = c.factory  # imports it
        assert callable(factory), c
        if c.kind in ("tasks", "methods"):  # read from the source (a method's through its package's re-export)
            assert listed == factory.description and factory.name == c.name, c.name
            assert listed, f"{c.kind[:-1]} {c.name} lists no description"
    assert {n: c.factory for n, c in reg.components["methods"].items() if c.source == "catdiff"} == builtin_methods()


def test_lazy_description_is_read_from_the_source_without_importing(tmp_path, monkeypatch):
    """A task's description comes from the string literal in its class body; the module is not
    imported; anything else (built, inherited, missing module) lists as "", a given one wins."""
    from catdiff.api.markers import Lazy

    (tmp_path / "lazy_desc_mod.py").write_text(
        "raise RuntimeError('imported')\n"
        "class A:\n    name = 'a'\n    description = ('two ' 'parts')\n"
        "class B(A):\n    pass\n"
        "class C:\n    description: str = 'annotated'\n"
        "class D:\n    description = 'built ' + str(1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert Lazy("lazy_desc_mod:A").description == "two parts"
    assert Lazy("lazy_desc_mod:C").description == "annotated"
    assert Lazy("lazy_desc_mod:B").description == "" and Lazy("lazy_desc_mod:D").description == ""
    assert Lazy("lazy_desc_mod_missing:A").description == ""
    assert Lazy("lazy_desc_mod:B", "given").description == "given"
    assert "lazy_desc_mod" not in sys.modules
    # a package that re-exports the class (`from .impl import M`, as catdiff.methods does): followed, not imported
    pkg = tmp_path / "lazy_desc_pkg"
    (pkg / "impl").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('imported')\nfrom .impl import M\nfrom .other import N as M2\n")
    (pkg / "impl" / "__init__.py").write_text("raise RuntimeError('imported')\nclass M:\n    description = 'deep'\n")
    assert Lazy("lazy_desc_pkg:M").description == "deep"
    assert Lazy("lazy_desc_pkg:M2").description == ""  # renamed on import: not followed
    assert "lazy_desc_pkg" not in sys.modules and "lazy_desc_pkg.impl" not in sys.modules
