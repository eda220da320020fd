"""mkdocs hooks (mkdocs.yml, ``hooks:``): the repository's own Markdown pages join the site, and links are checked
by repository path, so ``mkdocs build --strict`` can fail on every broken link and never on a good one.

The pages are written to be read on a repository browser as much as on the site: README.md links
``docs/en_de.md``, a page under docs/ may link ``../CHANGELOG.md`` or ``../benchmarks/README.md``. mkdocs only knows
the files under docs/, so it would report those as missing (a warning, which ``--strict`` fails on). Instead of
turning that check off (``validation: links: not_found: info`` would hide real breakage too), this hook

* adds the repository's top-level pages to the site from where they are (:data:`SITE_PAGES`: README.md becomes
  the home page), so no copy is kept under docs/;
* rewrites each relative link of every page from a repository path to the site path it has: a file under docs/
  or in :data:`SITE_PAGES` becomes a link mkdocs then validates as usual (page, anchor and all);
* checks a link to any other file of the repository (a source file, LICENSE) against the working tree: a missing
  file is a warning (so strict fails), an existing one becomes its path as code, since the site has no page for it;
* shows the docstrings' Sphinx roles (``:func:`ls_seq.fit_temperature```, ``:class:`~a.B```) as the code they
  name (:func:`plain_roles`): the reference renders the docstrings as Markdown, where a role means nothing;
* gives headings the anchors a repository browser gives them (:func:`github_slug`), so ``en_de.md#seeds-and-
  significance---seeds`` finds its heading on both (Python-Markdown's own slugs merge the three hyphens).
"""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.ls_seq")

ROOT = Path(__file__).resolve().parents[1]
# repository path -> its path on the site (under docs/ nothing is listed: it is the site's own tree)
SITE_PAGES = {
    "README.md": "index.md",
    "CONTRIBUTING.md": "contributing.md",
    "CHANGELOG.md": "changelog.md",
    "benchmarks/README.md": "benchmarks.md",
}
_REPO_PATH = {site: repo for repo, site in SITE_PAGES.items()}
# [text](target) and ![alt](target), not preceded by a backslash; the target has no spaces (as ours never do)
_LINK = re.compile(r"(?<!\\)(!?)\[([^\]]*)\]\(([^)\s]+)\)")
_EXTERNAL = re.compile(r"^([a-z][a-z0-9+.-]*:|//|#)", re.IGNORECASE)  # http:, mailto:, //host, #anchor
_FENCE = re.compile(r"^\s*(```|~~~)")
# a role as Python-Markdown renders it: :func:<code>name</code>, :class:<code>~pkg.mod.Name</code>
_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|exc|obj|const):<code>(~?)([^<]*)</code>")


def github_slug(value: str, separator: str) -> str:
    """A heading's anchor as GitHub writes it: lower case, punctuation dropped, each space a hyphen (none merged)."""
    return re.sub(r"[^\w\- ]", "", value.strip().lower()).replace(" ", separator)


def on_config(config):
    config["mdx_configs"].setdefault("toc", {})["slugify"] = github_slug
    return config


def on_files(files: Files, config) -> Files:
    for repo_path, site_path in SITE_PAGES.items():
        if files.get_file_from_path(site_path) is not None:
            log.warning(f"docs/{site_path} exists and would be replaced by {repo_path}: remove one of the two")
            continue
        files.append(File.generated(config, site_path, abs_src_path=str(ROOT / repo_path)))
    return files


def repository_path(site_path: str) -> str:
    """Where a page of the site lives in the repository."""
    return _REPO_PATH.get(site_path, "docs/" + site_path)


def site_target(page_repo: str, target: str) -> tuple[str | None, str]:
    """``(site link, repository path)`` of a relative link written in the page at ``page_repo``; the site link is
    None when the target is a repository file that is not part of the site."""
    path, sep, anchor = target.partition("#")
    repo_target = posixpath.normpath(posixpath.join(posixpath.dirname(page_repo), path))
    if repo_target.startswith("docs/"):
        site = repo_target[len("docs/") :]
    elif repo_target in SITE_PAGES:
        site = SITE_PAGES[repo_target]
    else:
        return None, repo_target
    page_site = SITE_PAGES.get(page_repo, page_repo.removeprefix("docs/"))
    relative = posixpath.relpath(site, posixpath.dirname(page_site) or ".")
    return relative + sep + anchor, repo_target


def rewrite_links(markdown: str, page_repo: str) -> str:
    """Every relative link of a page as the site needs it (see the module docstring); fenced code is left alone."""

    def replace(match: re.Match[str]) -> str:
        bang, text, target = match.groups()
        if _EXTERNAL.match(target):
            return match.group(0)
        site, repo_target = site_target(page_repo, target)
        if site is not None:
            return f"{bang}[{text}]({site})"
        if not (ROOT / repo_target).exists():
            log.warning(f"{page_repo} links '{target}', but {repo_target} does not exist in the repository")
            return match.group(0)
        return text if f"`{repo_target}`" in text else f"{text} (`{repo_target}`)"

    out, fenced = [], False
    for line in markdown.splitlines(keepends=True):
        if _FENCE.match(line):
            fenced = not fenced
        out.append(line if fenced else _LINK.sub(replace, line))
    return "".join(out)


def plain_roles(html: str) -> str:
    """``:func:<code>a.b</code>`` -> ``<code>a.b</code>``; with ``~`` only the last name, as Sphinx shows it."""
    return _ROLE.sub(lambda m: f"<code>{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}</code>", html)


def on_page_markdown(markdown: str, page, config, files) -> str:
    return rewrite_links(markdown, repository_path(page.file.src_uri))


def on_page_content(html: str, page, config, files) -> str:
    return plain_roles(html)
