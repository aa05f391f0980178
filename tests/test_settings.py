"""Typed settings (catdiff.api.settings): coercion and checks, the flat config over components,
format-1 configs, and refusal of clashing declarations at registration."""
import json
import textwrap

import pytest

from catdiff.run import config

from catdiff.api import hooks
from catdiff.api.errors import UserError
from catdiff.api.settings import Setting, declared, legacy, merge
from catdiff.run.config import RUN_SETTINGS, for_task, make, migrate
from test_plugins import make_dist
from toytask import ToyTask


def test_coerce_reads_command_line_strings_as_the_declared_type():
    assert Setting("n", 3, "").coerce("1e3") == 1000 and Setting("x", 0.5, "").coerce("2") == 2.0
    assert Setting("b", False, "").coerce("yes") is True and Setting("b", False, "").coerce("off") is False
    auto = Setting("lr", None, "", type=float, auto=True)
    assert auto.coerce("auto") is None and auto.coerce("none") is None and auto.coerce("3e-4") == 3e-4
    with pytest.raises(UserError, match=r"config n: expected int, got '2.5'"):
        Setting("n", 3, "").coerce("2.5")
    with pytest.raises(UserError, match=r"config n: expected int, got 'auto'"):
        Setting("n", 3, "").coerce("auto")  # only auto settings take auto
    with pytest.raises(UserError, match=r"config b: expected true/false, got 'maybe'"):
        Setting("b", False, "").coerce("maybe")


def test_check_names_the_key_the_value_and_what_is_allowed():
    frac = Setting("p", 0.5, "", low=0, low_open=True, high=1)
    frac.check(1.0)
    for bad in (0.0, 1.5):
        with pytest.raises(UserError, match=rf"config p={bad!r}: must be in \(0, 1\]"):
            frac.check(bad)
    with pytest.raises(UserError, match=r"config p=nan: must be a finite number"):
        frac.check(float("nan"))
    with pytest.raises(UserError, match=r"config mode='x': must be a \| b"):
        Setting("mode", "a", "", choices=("a", "b")).check("x")
    with pytest.raises(UserError, match=r"config grid='9': must be HxW"):
        Setting("grid", "", "", pattern=r"(\d+x\d+)?", rule="HxW").check("9")
    with pytest.raises(UserError, match=r"config k=-1: must be >= 0, or auto"):
        Setting("k", None, "", type=int, low=0, auto=True).check(-1)
    with pytest.raises(TypeError, match="default None needs auto=True"):
        Setting("k", None, "", type=int)


def test_legacy_options_become_settings_and_clashes_name_both_owners():
    class Old:
        options = {"path": "", "beams": 4}
        mutable_options = ("beams",)

    with pytest.warns(DeprecationWarning, match=r"test_settings\..*Old declares catdiff 0.1's `options`; declare `settings"):
        path, beams = declared(Old)
    assert (path.type, path.mutable, beams.type, beams.mutable) == (str, False, int, True)
    assert legacy({"path": ""}) == (path,)
    shared = Setting("layers", 4, "blocks", low=1)
    assert merge([("backbone a", [shared]), ("backbone b", [shared])]) == {"layers": shared}  # one declaration
    with pytest.raises(ValueError, match="'layers' is declared by method 'm' and by task 't'; one of them must"):
        merge([("method 'm'", [shared]), ("task 't'", [Setting("layers", 2, "")])])


def test_config_is_flat_run_keys_plus_the_components_settings(tmp_path):
    cfg = make(method="mdlm", layers=2, mdlm_schedule="cosine")
    assert cfg.layers == 2 and cfg.mdlm_schedule == "cosine" and cfg.options["mdlm_eps"] == 1e-3
    with pytest.raises(AttributeError, match="config key 'shift' is not a setting of this run .method 'mdlm'"):
        cfg.shift  # catdm's, not this run's
    flat = cfg.to_dict()
    assert flat["lr"] == cfg.lr and flat["layers"] == 2 and "options" not in flat and "task_options" not in flat
    assert set(flat) == set(RUN_SETTINGS) | set(cfg.options)
    cfg.layers = 3  # a component's value is set like a run-level one
    assert cfg.options["layers"] == 3 and cfg.replace(width=64, steps=5).to_dict()["width"] == 64
    again = for_task(ToyTask(), json.loads(json.dumps({**flat, "task": "toy"})))  # a saved config.json is a source
    assert again.to_dict() == {**flat, "task": "toy", **{k: again.to_dict()[k] for k in ("lr", "warmup")}}


def test_format_1_configs_load_flat_and_drop_keys_this_run_does_not_declare():
    v1 = {"task": "toy", "method": "ar", "lr": 0, "warmup": -1, "shift": -3.0, "objective": "catdm",
          "discrete_steps": 0, "layers": 1, "task_options": {"temperature": 0.7, "causal": True}}
    flat = migrate(v1)
    assert flat["lr"] is None and flat["warmup"] is None and flat["temperature"] == 0.7 and "causal" not in flat
    cfg = for_task(ToyTask(), v1)
    assert cfg.temperature == 0.7 and cfg.layers == 1 and cfg.lr is not None
    assert "shift" not in cfg.options and "discrete_steps" not in cfg.options  # format 1 recorded every key
    with pytest.raises(UserError, match="config key 'shift' is a setting of method 'catdm'"):
        for_task(ToyTask(), v1, {"shift": -2.0})  # set by the user: an error, not ignored


CLASHING = textwrap.dedent('''
    from catdiff.api.hooks import hookimpl
    from catdiff.methods.catdm import CATDM
    from catdiff.api.settings import Setting

    class Wide(CATDM):
        name = "wide"
        settings = CATDM.settings + (Setting("width", 1024, "a second meaning of the backbone's width"),)

    class Fast(CATDM):
        name = "fast"
        settings = CATDM.settings + (Setting("lr", 0.1, "a run-level key"),)

    class Fine(CATDM):
        name = "fine"
        settings = CATDM.settings + (Setting("my_scale", 2.0, "its own key"),)

    @hookimpl
    def catdiff_methods():
        return {"wide": Wide, "fast": Fast, "fine": Fine}
''')


def test_clashing_declarations_are_refused_at_registration_naming_both(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    make_dist(site, "catdiff-clash", "catdiff_clash", CLASHING)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(hooks, "_REGISTRY", hooks.build_registry())
    reg = config.settings_registry()  # checked when settings are first read
    assert "fine" in reg.names("methods") and not {"wide", "fast"} & set(reg.names("methods"))
    assert reg.failed["method 'wide' (catdiff-clash 0.1)"] == (
        "config key 'width' is declared by backbone 'encoder' (catdiff) and by method 'wide' (catdiff-clash 0.1); "
        "one of them must rename it")
    assert "config key 'lr' is declared by the core (a run-level key)" in reg.failed["method 'fast' (catdiff-clash 0.1)"]
    assert config.for_task(ToyTask(), overrides={"method": "fine", "my_scale": "3"}).my_scale == 3.0


def test_catdiff_list_name_prints_one_components_settings(capsys):
    from catdiff.cli import main

    assert main(["list", "mdlm"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "method mdlm (from catdiff): 2 settings (set them with --set KEY=VALUE)"
    assert out[1] == "  samplers (--set sampler=NAME): cached (default), ancestral"
    assert out[2].split()[:4] == ["mdlm_schedule", "str", "'loglinear'", "fixed"] and out[2].endswith("[loglinear | cosine]")
    assert main(["list", "catdm"]) == 0
    assert "samplers (--set sampler=NAME): ancestral (default), ddim, dpmpp_2m, heun" in capsys.readouterr().out
    assert main(["list", "run"]) == 0 and "lr  " in capsys.readouterr().out
    assert main(["list", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("catdiff: error: no method, backbone or task named 'nope'. Known: ar, catdm,") and "Traceback" not in err


def test_open_upper_bound_and_subclass_defaults():
    from catdiff.api.settings import with_defaults

    frac = Setting("f", 0.1, "", low=0, low_open=True, high=1, high_open=True)
    assert frac.allowed() == "in (0, 1)" and Setting("g", 0.1, "", high=1, high_open=True).allowed() == "< 1"
    frac.check(0.999)
    with pytest.raises(UserError, match=r"config f=1.0: must be in \(0, 1\)"):
        frac.check(1.0)
    base = (Setting("a", 1, "one", low=0), Setting("b", "x", "two", mutable=True))
    a, b = with_defaults(base, a=5)
    assert (a.default, a.doc, a.low, b) == (5, "one", 0, base[1])
    with pytest.raises(KeyError, match="no setting named c"):
        with_defaults(base, c=1)


def test_a_legacy_subclass_keeps_its_defaults_for_its_parents_settings():
    class New:
        settings = (Setting("beams", 4, "beam size", low=1, mutable=True), Setting("path", "", "data"))

    class Old(New):  # written against catdiff 0.1
        options = {"beams": 2, "extra": 1.5}

    beams, path, extra = declared(Old)
    assert (beams.default, beams.doc, beams.mutable, path.default) == (2, "beam size", True, "")
    assert (extra.name, extra.type, extra.default) == ("extra", float, 1.5)
    assert declared(New) == New.settings and declared(Old()) == declared(Old)


def test_a_tasks_default_for_a_key_nobody_declares_is_the_plugins_bug():
    class Typo(ToyTask):
        defaults = {**ToyTask.defaults, "shfit": -2.0}

    with pytest.raises(ValueError, match="task 'toy' has defaults for shfit, which no method, backbone or task"):
        for_task(Typo())
    assert "shift" not in for_task(ToyTask(), overrides={"method": "d3pm"}).options  # catdm's: skipped for d3pm
