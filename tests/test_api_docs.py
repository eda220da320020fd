"""The stable surface documents itself: every callable of ``ls_seq.__all__`` has a Google-style docstring whose
``Args:`` section names each of its parameters (and nothing that is not one), and a ``Returns:`` section when it
returns something. The API reference (docs/api/, mkdocstrings) renders these sections, so a parameter added without
a line here is a parameter the reference does not explain.

What counts as a parameter: the callable's ``inspect.signature``; for a class, its constructor's. A dataclass that
extends a class from outside ls-seq (``LabelSmoothingTrainingArguments`` over HF's ``TrainingArguments``) documents
the fields ls-seq declares; the inherited ones are documented where they are declared.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest

import ls_seq

SURFACE = sorted(name for name in ls_seq.__all__ if callable(getattr(ls_seq, name)))
ENTRY = re.compile(r"^(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:")


def section(doc: str, title: str, *, named: bool = True) -> list[str] | None:
    """The entries of a Google-style section, or None when the docstring has no such section.

    With ``named`` (``Args:``) each entry is a line one level in from the title, ``name: text`` or
    ``name (type): text``, and its name is returned (``["logits", "labels", "**options"]``); deeper lines continue
    the entry above. Otherwise (``Returns:``, free text) the lines one level in are returned as they are.
    """
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if line.strip() != f"{title}:":
            continue
        indent = len(line) - len(line.lstrip())
        names: list[str] = []
        entry_indent = None
        for body in lines[i + 1 :]:
            if not body.strip():
                continue
            depth = len(body) - len(body.lstrip())
            if depth <= indent:
                break
            if entry_indent is None:
                entry_indent = depth
            if depth == entry_indent and not named:
                names.append(body.strip())
            elif depth == entry_indent:
                match = ENTRY.match(body.strip())
                assert match, f"{title}: entry without a name: {body.strip()!r}"
                names.append(match.group(1))
        return names
    return None


def documented_parameters(obj: object) -> list[str]:
    """The parameters a docstring must name, as written in the signature (``*args``, ``**options``)."""
    signature = inspect.signature(obj)  # a class: its constructor's, without self
    own = None
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj):
        own = {
            name
            for klass in obj.__mro__
            if klass.__module__.startswith("ls_seq")
            for name in vars(klass).get("__annotations__", {})
        }
    names = []
    for p in signature.parameters.values():
        if own is not None and p.name not in own:
            continue
        prefix = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "")
        names.append(prefix + p.name)
    return names


def returns_something(obj: object) -> bool:
    if inspect.isclass(obj):
        return False  # a constructor; what the instance holds is the class's documentation
    annotation = inspect.signature(obj).return_annotation
    return annotation not in (None, "None")  # an unannotated function is assumed to return something


def test_the_parser_reads_google_sections():
    doc = """Summary.

    Args:
        x: the input; continues
            here.
        y (int): a number.
        **options: the rest.

    Returns:
        Something.
    """
    assert section(inspect.cleandoc(doc), "Args") == ["x", "y", "**options"]
    assert section(inspect.cleandoc(doc), "Returns", named=False) == ["Something."]
    assert section(inspect.cleandoc(doc), "Raises") is None


def test_the_surface_is_found():
    assert {"label_smoothed_cross_entropy", "TokenCalibration", "LabelSmoothingTrainer", "NonFiniteLossError"} <= set(SURFACE)
    assert "__version__" not in SURFACE


@pytest.mark.parametrize("name", SURFACE)
def test_args_name_every_parameter(name):
    obj = getattr(ls_seq, name)
    doc = inspect.getdoc(obj) or ""
    expected = documented_parameters(obj)
    documented = section(doc, "Args")
    if not expected:
        return
    assert documented is not None, f"ls_seq.{name} has parameters {expected} and no Args: section"
    strip = lambda n: n.lstrip("*")
    missing = [p for p in expected if strip(p) not in {strip(d) for d in documented}]
    unknown = [d for d in documented if strip(d) not in {strip(p) for p in expected}]
    assert not missing, f"ls_seq.{name}: Args: does not name {missing}"
    assert not unknown, f"ls_seq.{name}: Args: names {unknown}, which are not parameters of {expected}"


@pytest.mark.parametrize("name", SURFACE)
def test_returns_is_documented(name):
    obj = getattr(ls_seq, name)
    if returns_something(obj):
        assert section(inspect.getdoc(obj) or "", "Returns", named=False), (
            f"ls_seq.{name} returns a value and has no Returns: section"
        )


def test_the_stable_surface_page_lists_exactly_all():
    """docs/api.md declares the stable surface: its table names each name of ``ls_seq.__all__``, and no other."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    listed = re.findall(r"^\| `([\w.]+)` \|", page, flags=re.MULTILINE)
    assert len(listed) == len(set(listed)), sorted(n for n in listed if listed.count(n) > 1)
    assert sorted(listed) == sorted(ls_seq.__all__)
