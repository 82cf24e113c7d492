"""mkdocs hooks of the documentation site (mkdocs.yml: ``hooks``); they fetch nothing.

- The home page is README.md: ``docs/index.md`` only says so, and its links into ``docs/``
  are made relative to the site.
- Docstrings are written for both Sphinx-minded readers and mkdocstrings; Sphinx roles
  (``:func:`predict```) are shown as plain code in the API pages.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|obj|exc|py:\w+):<code>~?([^<]+)</code>")


def readme_as_home(readme: str) -> str:
    """README.md with its links into docs/ made relative to the docs folder."""
    return re.sub(r"\]\(docs/", "](", readme)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri == "index.md":
        return readme_as_home((ROOT / "README.md").read_text(encoding="utf-8"))
    return markdown


def on_page_content(html: str, page, config, files) -> str:
    def code(match: re.Match) -> str:
        name = match.group(1)
        short = name.rsplit(".", 1)[-1] if match.group(0).count("~") else name
        return f"<code>{short}</code>"

    return _ROLE.sub(code, html)
