"""docs/DESIGN.md stays true of the code: it names every module, and the import rule it states holds.

The rule (DESIGN.md, "The import rule"): each module imports only from its own layer or a layer below;
``ls_seq_fairseq`` and ``vision`` never import each other. Read from the source (``ast``), every import statement,
inside functions and ``TYPE_CHECKING`` blocks too, so a lazy import that goes up is caught as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DESIGN = (ROOT / "docs" / "DESIGN.md").read_text()
PACKAGES = ("ls_seq", "ls_seq_fairseq", "vision", "recipes")

# The layer of each area: the longest matching prefix of a module's dotted name decides (DESIGN.md, "The layers").
LAYERS = {
    "ls_seq._version": 0,
    "ls_seq._deprecation": 0,
    "ls_seq.checks": 0,
    "ls_seq.errors": 0,
    "ls_seq.io": 0,
    "ls_seq.rng": 0,
    "ls_seq.checkpoints": 0,
    "ls_seq.parallel_text": 0,
    "ls_seq._extras": 0,
    "ls_seq.functional": 1,
    "ls_seq.losses": 2,
    "ls_seq.prior": 2,
    "ls_seq.calibration": 2,
    "ls_seq.evaluate_metrics": 2,
    "ls_seq": 3,  # the package itself (ls_seq/__init__.py): the public names, up to the HF layer
    "ls_seq.hf": 3,
    "ls_seq.studies": 4,
    "ls_seq.cli": 5,
    "ls_seq_fairseq": 6,
    "vision": 6,
    "recipes": 7,
}
SIBLINGS = {"ls_seq_fairseq", "vision"}  # one layer, and never each other
# Imports that go up today, each with the reason it is allowed to stay (DESIGN.md says why and what would fix it).
KNOWN_UPWARD: dict[tuple[str, str], str] = {}


def module_files() -> list[Path]:
    return sorted(p for d in PACKAGES for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts)


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def area(module: str) -> str:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return ".".join(parts[:n])
    raise KeyError(module)


def imports_of(source: str, name: str, is_package: bool = False) -> set[str]:
    """The first-party modules the source of module ``name`` imports (``from ls_seq import x`` counts as
    ``ls_seq.x`` when ``x`` is a module, else as ``ls_seq``); relative imports resolved against its package."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            for alias in node.names:
                candidate = ROOT.joinpath(*f"{module}.{alias.name}".split("."))
                is_module = candidate.with_suffix(".py").exists() or candidate.is_dir()
                found.add(f"{module}.{alias.name}" if is_module else module)
    return {m for m in found if m.split(".")[0] in PACKAGES}


def goes_up(importer: str, imported: str) -> bool:
    a, b = area(importer), area(imported)
    return LAYERS[b] > LAYERS[a] or (a != b and {a, b} <= SIBLINGS)


def upward_imports() -> dict[tuple[str, str], str]:
    found = {}
    for path in module_files():
        importer = module_name(path)
        for imported in imports_of(path.read_text(), importer, path.name == "__init__.py"):
            if goes_up(importer, imported):
                a, b = area(importer), area(imported)
                found[(importer, imported)] = f"{importer} (layer {LAYERS[a]}) imports {imported} (layer {LAYERS[b]})"
    return found


def test_every_module_is_named_in_design_md():
    missing = [
        str(p.relative_to(ROOT))
        for d in ("ls_seq", "ls_seq_fairseq")
        for p in (ROOT / d).rglob("*.py")
        if "__pycache__" not in p.parts and f"`{p.relative_to(ROOT).as_posix()}`" not in DESIGN
    ]
    assert not missing, f"docs/DESIGN.md does not name {missing}: say what each holds"


def test_every_area_has_a_layer():
    for path in module_files():
        area(module_name(path))  # a new top-level module or package must be given a layer here and in DESIGN.md


def test_nothing_imports_upward():
    found = upward_imports()
    unexpected = {pair: why for pair, why in found.items() if pair not in KNOWN_UPWARD}
    assert not unexpected, "imports against the layering of docs/DESIGN.md:\n" + "\n".join(sorted(unexpected.values()))


def test_known_exceptions_still_exist():
    """An exception that was fixed is taken off the list (and off DESIGN.md), so the list never hides a new one."""
    stale = set(KNOWN_UPWARD) - set(upward_imports())
    assert not stale, f"no longer imported upward, remove from KNOWN_UPWARD and DESIGN.md: {sorted(stale)}"
    for importer, imported in KNOWN_UPWARD:
        assert importer.replace(".", "/") in DESIGN and imported.replace(".", "/") in DESIGN


@pytest.mark.parametrize(
    ("importer", "source", "upward"),
    [
        ("ls_seq.functional.x", "from ls_seq.hf.trainer import LabelSmoothingTrainer", True),
        ("ls_seq.functional.x", "def f():\n    import ls_seq.studies", True),  # a lazy import counts
        ("ls_seq.functional.x", "from ls_seq import hf", True),  # a submodule named in a from-import
        ("ls_seq.hf.x", "from ls_seq.cli.runner import run_main", True),
        ("ls_seq.studies.x", "from ls_seq.cli import main", True),
        ("ls_seq.calibration.x", "import vision.models", True),
        ("vision.x", "from ls_seq_fairseq import criterion", True),  # siblings
        ("ls_seq.hf.x", "from ls_seq.functional.losses import smoothed_sums", False),
        ("ls_seq.hf.x", "from ls_seq import checks", False),
        ("ls_seq_fairseq.x", "from .criterion import LsSeqCriterion", False),
        ("recipes.x", "from ls_seq.studies.en_de.seeds import run_seeds", False),
    ],
)
def test_the_rule_judges_an_import(importer, source, upward):
    """The checker itself, on one import placed in a layer: it must see what goes up, and only that."""
    assert any(goes_up(importer, m) for m in imports_of(source, importer)) is upward
