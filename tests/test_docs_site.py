"""The documentation site's hooks (docs/hooks.py): links written as repository paths reach the page the site
has for them, a link to a missing file fails the strict build, headings get the anchors a repository browser
gives them, and the docstrings' Sphinx roles show as the code they name."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest

pytest.importorskip("mkdocs")
ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
hooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hooks)


@pytest.mark.parametrize(
    ("page", "markdown", "expected"),
    [
        # README.md is the home page: its links into docs/ lose the prefix, anchors kept
        ("README.md", "[d](docs/en_de.md#seeds)", "[d](en_de.md#seeds)"),
        ("README.md", "[b](benchmarks/README.md)", "[b](benchmarks.md)"),
        # a page under docs/ reaches the repository's pages, and its neighbours as before
        ("docs/DESIGN.md", "[c](../CHANGELOG.md)", "[c](changelog.md)"),
        ("docs/api/hf.md", "[c](../../CONTRIBUTING.md) [a](../api.md#x)", "[c](../contributing.md) [a](../api.md#x)"),
        ("docs/en_de.md", "![f](figures/a.png)", "![f](figures/a.png)"),
        # a repository file the site has no page for: its path, as code
        ("docs/DESIGN.md", "[the loss](../ls_seq/functional/losses.py)", "the loss (`ls_seq/functional/losses.py`)"),
        ("docs/DESIGN.md", "[`LICENSE`](../LICENSE)", "`LICENSE`"),
        # left alone: other sites, anchors on the page, code blocks
        (
            "docs/DESIGN.md",
            "[p](https://arxiv.org/abs/1906.02629) [s](#layers)",
            "[p](https://arxiv.org/abs/1906.02629) [s](#layers)",
        ),
        ("docs/DESIGN.md", "```\n[x](../nothere.md)\n```\n", "```\n[x](../nothere.md)\n```\n"),
    ],
)
def test_links_are_rewritten_by_repository_path(page, markdown, expected):
    assert hooks.rewrite_links(markdown, page) == expected


def test_a_link_to_a_missing_file_is_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="mkdocs.hooks.ls_seq"):
        out = hooks.rewrite_links("[x](../ls_seq/no_such_module.py)", "docs/DESIGN.md")
    assert out == "[x](../ls_seq/no_such_module.py)"  # mkdocs then reports it too
    assert "ls_seq/no_such_module.py does not exist" in caplog.text


def test_every_site_page_exists():
    assert all((ROOT / path).is_file() for path in hooks.SITE_PAGES)


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Seeds and significance (--seeds)", "seeds-and-significance---seeds"),  # README.md links this one
        ("Both regimes, over three seeds", "both-regimes-over-three-seeds"),
        ("The import rule", "the-import-rule"),
    ],
)
def test_headings_get_the_anchors_a_repository_browser_gives(heading, anchor):
    assert hooks.github_slug(heading, "-") == anchor


def test_sphinx_roles_show_as_code():
    html = "see :func:<code>ls_seq.fit_temperature</code> and :class:<code>~ls_seq.calibration.result.CalibrationResult</code>"
    assert hooks.plain_roles(html) == "see <code>ls_seq.fit_temperature</code> and <code>CalibrationResult</code>"
