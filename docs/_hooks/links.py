"""mkdocs hook: links from the docs to repository files outside docs/ (source files, the
Makefile, README.md) work on GitHub but are not part of the site. Each such link must point
at a file that exists (else the build fails); on the site it becomes the path in code style,
or a link into the repository when mkdocs.yml sets ``repo_url``."""
from __future__ import annotations

import re
from pathlib import Path

from mkdocs.exceptions import PluginError

LINK = re.compile(r"(?<!!)\[([^\]]+)\]\((\.\./[^)\s#]+)(#[^)\s]*)?\)")


def on_page_markdown(markdown, page, config, files):
    docs = Path(config["docs_dir"]).resolve()
    root = docs.parent
    here = (docs / page.file.src_path).parent

    def repl(m):
        text, target, anchor = m.group(1), m.group(2), m.group(3) or ""
        path = (here / target).resolve()
        if path.is_relative_to(docs):
            return m.group(0)  # a documentation page: mkdocs validates it
        if not path.exists():
            raise PluginError(f"{page.file.src_path}: link to a missing file {target!r}")
        rel = path.relative_to(root).as_posix()
        if config.get("repo_url"):
            kind = "tree" if path.is_dir() else "blob"
            return f"[{text}]({config['repo_url'].rstrip('/')}/{kind}/HEAD/{rel}{anchor})"
        bare = text.strip("`").rstrip("/")
        return f"`{rel}`" if bare and rel.rstrip("/").endswith(bare) else f"{text} (`{rel}`)"

    return LINK.sub(repl, markdown)
