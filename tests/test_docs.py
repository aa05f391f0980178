"""docs/configuration.md is generated from catdiff/config.py and must be current; the docs'
relative links must point at files that exist."""
import re
from pathlib import Path

import pytest

from catdiff import docgen
from catdiff.config import Config
from dataclasses import fields

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def test_configuration_md_is_current():
    committed = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert committed == docgen.render(), (
        "docs/configuration.md is stale (catdiff/config.py changed): run `.venv/bin/python -m catdiff.docgen`")


def test_every_config_key_is_documented():
    keys = docgen.parse()
    assert [k.name for k in keys] == [f.name for f in fields(Config)]
    assert docgen.undocumented(keys) == [], (
        "config keys without a meaning: give them a trailing `# ...` comment in catdiff/config.py, "
        "then run `.venv/bin/python -m catdiff.docgen`")


def test_generator_reads_comments_and_sections(tmp_path):
    src = tmp_path / "config.py"
    src.write_text(
        "from dataclasses import dataclass\n\n@dataclass\nclass Config:\n    task: str = 'digits'\n\n"
        "    # backbone (a note); more words\n    layers: int = 4  # blocks\n"
        "    # a leading comment\n    width: int = 128\n")
    keys = docgen.parse(src)
    by = {k.name: k for k in keys if k.name in ("layers", "width")}
    assert by["layers"].meaning == "blocks" and by["layers"].section.startswith("backbone (a note)")
    assert by["width"].meaning == "a leading comment" and by["width"].section == by["layers"].section
    assert docgen._split_title("backbone (a, b); more") == ("backbone (a, b)", " more")


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
