"""The package's import graph: no module may (directly or through others) import itself.

Every ``import`` statement counts, also those inside functions (a deferred import still ties
the modules together; it only hides the circle until run time)."""
import ast
from pathlib import Path

import pytest

import catdiff

ROOT = Path(catdiff.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str) -> set[str]:
    """The catdiff modules that ``path`` imports (``from . import x`` resolved to x when it is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "catdiff"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "catdiff":
                continue
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names}
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    edges = {}
    for name, path in files.items():
        targets = set()
        for mod in imports_of(path, name):
            # importing a.b.c runs a/__init__, a/b/__init__ too; count the deepest existing module
            while mod and mod not in files:
                mod = mod.rpartition(".")[0]
            if mod and mod != name and mod != "catdiff":
                targets.add(mod)
        edges[name] = targets
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_catdiff_has_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_method_math_does_not_read_the_run_config_module():
    edges = graph()
    for name, targets in edges.items():
        if name.startswith("catdiff.methods"):
            assert "catdiff.run.config" not in targets, f"{name} imports catdiff.run.config"


def test_run_level_finals_match_the_samplers():
    from catdiff.run.config import RUN_SETTINGS
    from catdiff.methods.shared import FINALS

    assert RUN_SETTINGS["final"].choices == FINALS


# the layers, from the interface plugins use down to the run machinery: a module imports its own
# layer and those before it, never a later one (docs/architecture.md)
LAYERS = ["api", "nn", "methods", "run"]
# the two deliberate exceptions, both deferred to the moment of use
UPWARD = {("catdiff.api.method", "catdiff.nn.model"): "the default network, imported when a method builds it",
          ("catdiff.api.hooks", "catdiff.builtins"): "the built-in components, registered by reference"}


def layer(name: str) -> int:
    part = name.split(".")[1] if name.count(".") else ""
    return LAYERS.index(part) if part in LAYERS else len(LAYERS)  # cli, builtins, docgen: the top


def test_each_layer_imports_only_itself_and_the_layers_before_it():
    upward = {(a, b) for a, targets in graph().items() for b in targets if layer(b) > layer(a)}
    assert upward == set(UPWARD), "imports a later layer: " + ", ".join(f"{a} -> {b}" for a, b in sorted(upward - set(UPWARD)))


def test_a_module_path_of_catdiff_0_1_still_imports_the_same_module_with_a_warning():
    import importlib
    import importlib.util
    import sys
    import warnings

    import catdiff.api.task
    import catdiff.nn.backbones.encoder

    for old in ("catdiff.task", "catdiff.backbones", "catdiff.backbones.encoder"):
        sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert importlib.import_module("catdiff.task") is catdiff.api.task
        from catdiff.backbones.encoder import KVCache
    assert KVCache is catdiff.nn.backbones.encoder.KVCache  # one class, not a second copy of the module
    assert [str(w.message).split(";")[0] for w in caught] == [
        "catdiff.task moved to catdiff.api.task in catdiff 0.2", "catdiff.backbones moved to catdiff.nn.backbones in catdiff 0.2",
        "catdiff.backbones.encoder moved to catdiff.nn.backbones.encoder in catdiff 0.2"]
    assert all(w.category is DeprecationWarning for w in caught)
    assert catdiff.api.task.__spec__.name == "catdiff.api.task"  # its own spec, not the alias's
    assert importlib.util.find_spec("catdiff.nn.backbones").submodule_search_locations
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("catdiff.no_such_module")


def test_every_folder_of_modules_is_a_regular_package():
    """A folder without __init__.py imports (as a namespace package) from a source tree, but
    setuptools' find_packages leaves it out of a wheel."""
    folders = {p.parent for p in ROOT.rglob("*.py")}
    assert sorted(str(d.relative_to(ROOT)) for d in folders if not (d / "__init__.py").exists()) == []
