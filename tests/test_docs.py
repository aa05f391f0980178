"""docs/configuration.md is generated from the declared settings (catdiff/run/config.py, the
components of catdiff and its first-party plugins) and must be current; the docs'
relative links must point at files that exist."""
import re
from pathlib import Path

import pytest

from catdiff import docgen
from catdiff.run.config import RUN_SETTINGS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def test_configuration_md_is_current():
    committed = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert committed == docgen.render(), (
        "docs/configuration.md is stale (catdiff/run/config.py changed): run `.venv/bin/python -m catdiff.docgen`")


def test_every_key_is_documented_in_its_components_section():
    assert docgen.undocumented() == [], "settings without a doc line: give their Setting a doc"
    text = docgen.render()
    for name in RUN_SETTINGS:
        assert f"| `{name}` |" in text
    catdm = text.split("### `catdm`")[1].split("\n### ")[0]  # one section per component
    assert "| `shift` | float | `-3.0` |" in catdm and "| `mdlm_eps` |" not in catdm
    assert "| `objective` | str | `\"catdm\"` | `catdm` \\| `csdm` \\| `csdm_l2` \\| `ce` | fixed |" in catdm
    assert "| `temperature` | float | `1.0` | > 0 | may change |" in text.split("### `ar`")[1].split("\n### ")[0]
    encoder = text.split("### `encoder`")[1].split("\n### ")[0]
    assert "| `token_grid` |" in encoder and "| `layers` | int | `4` | >= 1 | fixed |" in encoder
    assert "| `lr` | float or auto | auto | >= 0 | may change |" in text
    # first-party tasks declare typed, documented settings too (no 0.1-style bare options left)
    assert "see [tasks.md]" not in text and "(undocumented)" not in text
    tokens = text.split("### `tokens`")[1].split("\n### ")[0]
    assert "| `test_frac` | float | `0.1` | in (0, 1) | fixed |" in tokens
    ding = text.split("### `mt-ding`")[1].split("\n### ")[0]
    assert "| `length_beam` | int | `3` | >= 1 | may change |" in ding and "| `max_len` | int | `24` | >= 1 | fixed |" in ding


def test_check_mode_detects_a_stale_file(tmp_path):
    stale = tmp_path / "configuration.md"
    stale.write_text(docgen.render().replace("| `lr` |", "| `learning_rate` |"))
    assert docgen.main(["--check", "--out", str(stale)]) == 1
    stale.write_text(docgen.render())
    assert docgen.main(["--check", "--out", str(stale)]) == 0


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def github_anchors(md: Path) -> set[str]:
    """The heading anchors GitHub gives a Markdown file (lowercase, punctuation dropped,
    spaces to hyphens); mkdocs' are the same for these pages, and `mkdocs build --strict`
    checks them on the site."""
    text = re.sub(r"```.*?```", "", md.read_text(encoding="utf-8"), flags=re.S)
    out = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", text, flags=re.M):
        plain = re.sub(r"[`*]", "", heading).strip().lower()
        out.add(re.sub(r"[^\w\- ]", "", plain).replace(" ", "-"))
    return out


@pytest.mark.parametrize("page", sorted([ROOT / "README.md", *DOCS.glob("*.md")]), ids=lambda p: p.name)
def test_relative_links_resolve(page):
    missing = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = page.parent / path if path else page
        if not dest.exists():
            missing.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in github_anchors(dest):
            missing.append(target)
    assert not missing, f"{page.name}: links to missing files or headings: {missing}"


def test_anchor_rule():
    assert "csdm-vs-catdm-wo-cm-vs-catdm-at-the-current-digits-defaults" in github_anchors(DOCS / "results.md")
    assert "6-writing-a-method" in github_anchors(DOCS / "plugins.md")
    assert "drop_l0-dropping-in-l0s-pass" in github_anchors(DOCS / "method.md")
    assert "nope" not in github_anchors(DOCS / "method.md")
