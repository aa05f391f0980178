"""benchmarks.frontier (few-step table, crossing points) and compare's per-sampler arms."""
import argparse
import json

import pytest

from benchmarks import compare, frontier


def rec(method, seed, evals, mode="steps"):
    return dict(task="digits", method=method, seed=seed, mode=mode, budget_s=None, steps=100, evals=evals)


def ev(arm, n, fid, nfe, s):
    return dict(arm=arm, sample_steps=n, fid=fid, nfe_per_sample=nfe, sample_s_per_sample=s)


RECORDS = [  # CATDM wins at few steps, MaskGIT at many; AR one point at 64 calls
    rec("catdm", seed, [ev("CATDM ddim", 2, 20 + seed, 3, 0.003), ev("CATDM ddim", 8, 15 + seed, 9, 0.009),
                        ev("CATDM heun", 2, 18 + seed, 4, 0.004)])
    for seed in (0, 1)
] + [
    rec("maskgit", seed, [ev("MaskGIT", 2, 90 + seed, 2, 0.001), ev("MaskGIT", 8, 10 + seed, 8, 0.004)])
    for seed in (0, 1)
] + [rec("ar", 0, [ev("AR", None, 5.0, 64, 0.05)])]


def test_best_arm_per_method_and_step_count():
    arms = frontier.points(RECORDS)[("digits", "steps", None)]
    best = frontier.best_by_family(arms, 2)
    assert best["catdm"] == ("CATDM heun", 18.5) and best["maskgit"] == ("MaskGIT", 90.5)
    assert best["ar"] == ("AR", 5.0)  # AR takes its own steps whatever the count


def test_one_arm_per_method_by_its_mean_over_step_counts():
    arms = frontier.points(RECORDS)[("digits", "steps", None)]
    assert list(frontier.chosen(arms)) == ["CATDM ddim", "MaskGIT", "AR"]  # ddim 18 on average, heun 18.5


def test_crossings_are_the_limits_where_catdm_is_best():
    arms = frontier.points(RECORDS)[("digits", "steps", None)]
    nfe = frontier.frontier(arms, "nfe_per_sample")
    # NFE <= 2: only MaskGIT (90.5); 3..7: CATDM (19.5, then 18.5); 8..63: MaskGIT 10.5; 64: AR 5
    assert frontier.crossings(nfe) == [(3.0, 8.0)]
    assert frontier.crossings({"catdm": [(1.0, 3.0)], "ar": [(10.0, 1.0)]}) == [(1.0, 10.0)]
    assert frontier.crossings({"catdm": [(1.0, 1.0)], "ar": [(10.0, 3.0)]}) == [(1.0, None)]
    assert frontier.crossings({"catdm": [(5.0, 9.0)], "ar": [(1.0, 3.0)]}) == []


def test_report_names_the_winning_step_counts_and_the_paper():
    text = frontier.report(RECORDS)
    assert "CATDM is the best method at [2] step count(s)" in text  # AR (one step per token) is not compared per count
    assert "CATDM is the best method for a limit on NFE in [3, 8)" in text  # but it is on the frontier
    no_ar = frontier.report([r for r in RECORDS if r["method"] != "ar"])
    assert "CATDM is the best method at [2] step count(s)" in no_ar
    assert "One arm per method from here on (its lowest FID averaged over the step counts): CATDM ddim, MaskGIT." in no_ar
    assert "| 2 | 97.83 | 17.83 | 0.18 | 90.5 | 20.5 | 0.23 |" in no_ar  # CATDM through its chosen arm, ddim
    assert "in [3, 8)" in no_ar


def test_compact_table_one_arm_per_method_and_the_ratio():
    text = frontier.compact(RECORDS)
    assert "| CATDM ddim | 20.5 ± 0.71 | 15.5 ± 0.71 |" in text and "| AR (seeds [0]) (NFE 64) | 5 | – |" in text
    assert "| CATDM / best other | 0.23 | 1.48 |" in text  # 20.5 / 90.5, 15.5 / 10.5 (AR takes no step count)
    assert "| paper: VQ-LCMD / MaskGIT | 0.18 | 1.09 |" in text
    assert "CATDM is the best method at step counts [2]." in text
    assert "Limits within which it gives the lowest FID of all: NFE [3, 8); ms/sample, batch 256 [3, 4)." in text


def test_an_arm_measured_twice_for_one_seed_counts_once():
    again = rec("catdm", 0, [ev("CATDM ddim", 2, 99.0, 3, 0.003), ev("CATDM euler", 2, 30.0, 3, 0.003)])
    arms = frontier.points(RECORDS + [again])[("digits", "steps", None)]
    assert arms["CATDM ddim"]["by_n"][2]["fid"] == [20, 21]  # the first record's, not the rerun's
    assert arms["CATDM euler"]["by_n"][2]["fid"] == [30.0]  # a new arm of the rerun counts


def test_sampler_arms_follow_what_each_method_declares():
    spec = ["ddim", "heun[sample_grid=logsnr]", "cached", "purity"]
    assert compare.sampler_arms("catdm", spec) == [
        ("CATDM ddim", {"sampler": "ddim"}), ("CATDM heun sample_grid=logsnr", {"sampler": "heun", "sample_grid": "logsnr"})]
    assert compare.sampler_arms("mdlm", spec) == [("MDLM cached", {"sampler": "cached"})]
    scoped = ["catdm:ancestral", "vqdiffusion:purity", "ancestral"]  # MDLM: its ancestral only through the last
    assert [a for a, _ in compare.sampler_arms("catdm", scoped)] == ["CATDM ancestral"]
    assert [a for a, _ in compare.sampler_arms("vqdiffusion", scoped[:2])] == ["VQ-Diffusion purity"]
    assert [a for a, _ in compare.sampler_arms("mdlm", scoped[:2])] == ["MDLM"]  # none listed: its own
    assert compare.sampler_arms("ar", spec) == compare.method_spec("ar")[2]  # none of them: its own arms
    assert [a for a, _ in compare.sampler_arms("catdm[embed_norm=5]", ["all"])] == [
        f"CATDM embed_norm=5 {s}" for s in ("ancestral", "ddim", "dpmpp_2m", "heun")]
    with pytest.raises(argparse.ArgumentTypeError, match="bad sampler"):
        compare.sampler_name("heun[sample_grid")
    assert compare.sampler_arms("catdm", ["ddim[final_call=false]"]) == [  # typed as --set types it
        ("CATDM ddim final_call=false", {"final_call": False, "sampler": "ddim"})]
    with pytest.raises(ValueError, match="CATDM has no setting final_cal"):
        compare.sampler_arms("catdm", ["ddim[final_cal=false]"])


def test_scaling_jobs_write_every_record_once_and_a_rerun_skips_them(tmp_path, capsys):
    from benchmarks import scaling

    path = tmp_path / "scale.json"
    scaling.main(["--quick", "--jobs", "2", "--json", str(path)])
    recs = json.loads(path.read_text())["records"]
    assert sorted(r["method"] for r in recs) == ["ar", "catdm"] and all(r["budget_s"] == 3.0 for r in recs)
    assert "digits: 2 runs to go (0 in" in capsys.readouterr().out
    scaling.main(["--quick", "--json", str(path)])
    assert "digits: 0 runs to go (2 in" in capsys.readouterr().out
    assert len(json.loads(path.read_text())["records"]) == 2


def test_scaling_table_reads_the_task_and_its_metric_from_the_records(tmp_path, capsys):
    from benchmarks import scaling

    def bpc(method, seed, budget, value):
        return dict(task="text-tdavid", method=method, label=method.upper(), seed=seed, mode="time", budget_s=budget,
                    steps=10, evals=[], bpc=value, train_bpc=value)

    text = tmp_path / "text.json"
    text.write_text(json.dumps({"records": [bpc(m, s, b, v + s / 100) for m, v0 in (("catdm", 4.0), ("ar", 3.0))
                                            for b, v in ((150.0, v0), (600.0, v0 - 0.5)) for s in (0, 1)]}))
    scaling.main(["--table", str(text)])
    out = capsys.readouterr().out
    assert "scaling on text-tdavid" in out and "bits per character ~ compute^b" in out, out
    images = tmp_path / "images.json"
    images.write_text(json.dumps({"records": [dict(bpc("catdm", 0, 150.0, 4.0), task="digits")]}))
    for argv in (["--table", str(text), str(images)], ["--table", str(text), "--task", "digits"]):
        with pytest.raises(SystemExit) as e:
            scaling.main(argv)
        assert e.value.code == 2 and "--table files hold the tasks" in capsys.readouterr().err


@pytest.mark.parametrize("variant,says", [("catdm[embed_norm=abc]", "expected float, got 'abc'"),
                                          ("catdm[mdlm_eps=0.1]", "setting of method 'mdlm'"),
                                          ("nope", "unknown method 'nope'")])
def test_a_bad_variant_is_refused_before_any_training(variant, says, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        compare.main(["--methods", variant, "--json", str(tmp_path / "r.json")])
    assert e.value.code == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()



def test_a_plugin_method_is_a_compare_method_by_its_name(monkeypatch):
    from catdiff.api.hooks import Component, registry
    from catdiff.methods.udlm import UDLM

    class Plugged(UDLM):
        name = "plugged"

    monkeypatch.setitem(registry().components["methods"], "plugged", Component("methods", "plugged", Plugged, "catdiff-x"))
    assert compare.method_spec("plugged") == ("plugged", {"method": "plugged"}, [("plugged", {})])
    assert compare.method_name("plugged[udlm_eps=0.01]") == "plugged[udlm_eps=0.01]"
    assert compare.sampler_arms("plugged", ["ancestral", "ddim"]) == [("plugged ancestral", {"sampler": "ancestral"})]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown method 'nope'"):
        compare.method_name("nope")


def test_diversity_sees_what_fid_may_not():
    import torch

    from benchmarks.harness import diversity

    x = torch.tensor([[1, 2, 3], [1, 2, 3], [1, 2, 4], [0, 0, 0]])
    assert diversity(x)["distinct_share"] == 0.75
    assert abs(diversity(x)["pair_difference"] - (1 + 0 + 1 / 3 + 1) / 4) < 1e-6
    assert diversity(x, torch.tensor([0, 0, 1, 1]))["pair_difference"] == 0.5  # within a label: rows 0-1, 2-3
    assert diversity(x[[0, 0, 0]]) == {"distinct_share": 1 / 3, "pair_difference": 0.0}


def test_scaling_fits_power_laws_and_finds_the_crossings():
    """Known curves (two seeds each, 2% and 1% apart): CATDM's FID = 400 x^-1 and MDLM's = 40 x^-0.5
    meet at x = 100; AR's = x^-1.5 is ahead of CATDM and falls faster, so they never meet."""
    from benchmarks import scaling

    budgets = (25, 50, 200, 400)
    law = lambda c, b, jitter=1.0: {x: [None, [c * x**b * jitter, c * x**b / jitter], [1.0, 1.0], [1.0, 1.0]]  # noqa: E731
                                    for x in budgets}
    data = {"catdm": law(400, -1.0, 1.02), "mdlm": law(40, -0.5, 1.01), "ar": law(1, -1.5)}
    fit = scaling.power_fit([(b, v) for b, vals in data["catdm"].items() for v in vals[1]])
    assert fit["b"] == pytest.approx(-1.0, abs=1e-9) and fit["r2"] > 0.99 and fit["n"] == 8
    assert scaling.measured_crossings({b: v[1] for b, v in data["catdm"].items()},
                                      {b: v[1] for b, v in data["mdlm"].items()}) == [pytest.approx(100, rel=1e-3)]
    mdlm = scaling.power_fit([(b, v) for b, vals in data["mdlm"].items() for v in vals[1]])
    x, lo, hi, share = scaling.extrapolated_crossing(fit, mdlm)
    assert x == pytest.approx(100, rel=1e-6) and lo < 100 < hi and share > 0.9
    assert scaling.extrapolated_crossing(mdlm, fit) is None  # MDLM falls slower: never catches CATDM up
    text = scaling.report(data)
    assert "CATDM vs MDLM: better at 200, 400 CPU-s; measured crossing at 100 CPU-s" in text
    assert "CATDM vs AR: better at no CPU-s" in text and "-1.00 vs -1.50: the lines part" in text
    assert scaling.power_fit([(25, 1.0), (25, 2.0)]) is None  # too few points to fit
    assert [scaling.budget(x) for x in (2400.4, 999999, 1.146e12)] == ["2400", "999999", "1.1e+12"]  # no 57-digit bounds
    partial = {"catdm": {100: ([400, 410], [80.0, 90.0], [7.0, 7.5], [8.0, 8.0]), 400: ([1600], [60.0], [5.0], [5.1])}}
    rows = scaling.table(partial).splitlines()
    assert rows[2].endswith("| 1600, 60, 5 (5.1) * |") and "*" not in rows[2].split("|")[2]  # the unfinished cell
    assert rows[-1] == "\\* 1 of 2 seeds"


@pytest.mark.parametrize("samplers, message", [
    (["nosuch"], "sampler 'nosuch': no method among --methods has it (catdm: ancestral, ddim, dpmpp_2m, heun)"),
    (["catdn:ddim"], "sampler 'catdn:ddim' is for method 'catdn', which is not among --methods (catdm)"),
    (["ddim[final_cal=0]"], "sampler 'ddim[final_cal=0]': CATDM has no setting final_cal"),
])
def test_a_sampler_no_method_of_the_run_has_is_an_argparse_error(capsys, samplers, message):
    with pytest.raises(SystemExit) as e:
        compare.main(["--quick", "--methods", "catdm", "--samplers", *samplers])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_an_arm_with_fewer_seeds_than_its_table_says_which():
    extra = rec("catdm", 0, [ev("CATDM euler", 2, 30.0, 3, 0.003), ev("CATDM euler", 8, 12.0, 9, 0.009)])
    text = frontier.report(RECORDS + [extra])
    assert "| CATDM euler (seeds [0]) | 30 | 12 |" in text and "| CATDM ddim | 20.5 ± 0.71 |" in text


def test_scaling_plot_keeps_each_methods_colour_when_one_has_no_bound(tmp_path, monkeypatch):
    import matplotlib.figure

    from benchmarks import scaling

    saved = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: saved.append(fig))
    nan = float("nan")
    data = {"catdm": {100.0: ([10], [80.0, 90.0], [7.0, 7.5], [nan])},
            "maskgit": {100.0: ([10], [60.0, 64.0], [nan, nan], [nan])},
            "ar": {100.0: ([10], [30.0, 34.0], [3.3, 3.4], [nan])}}
    scaling.plot(data, str(tmp_path / "s.png"))
    fid, bits = saved[0].axes
    def colours(ax):  # legend label -> the colour of its data line (an errorbar container's first artist)
        handles, labels = ax.get_legend_handles_labels()
        return {lab: h[0].get_color() for h, lab in zip(handles, labels)}

    assert colours(bits)["AR"] == colours(fid)["AR"] != colours(fid)["MaskGIT"]
    assert "MaskGIT" not in colours(bits)
    scaling.plot({"ar": data["ar"]}, str(tmp_path / "t.png"), text=True)
    assert len(saved[1].axes) == 1 and saved[1].axes[0].get_ylabel().startswith("bits/char")
