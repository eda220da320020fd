"""A lean core install: what needs an extra says so in one line, naming the extra; the core needs none.

Each optional library is hidden here by ``sys.modules[name] = None`` (an import of it, or of any submodule, then
fails as an uninstalled one does, and ``importlib.util.find_spec`` finds nothing); the packages that check their
extra at import are imported afresh. The real thing, a fresh environment with ``pip install ls-seq`` and no extra,
is ``.ci/core-install`` (CI runs it): there the README's examples run, which this process, with every extra
installed, cannot show.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from ls_seq._extras import DISTRIBUTIONS, EXTRAS, require, require_extra
from ls_seq.cli.runner import describe_fault, run_main
from ls_seq.errors import EXIT_FAULT, LsSeqError, LsSeqWarning, MissingExtraError

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
OPTIONAL = ("matplotlib", "scipy", "datasets", "sacrebleu", "evaluate", "sklearn", "yaml", "fairseq", "hydra", "omegaconf")
CORE = {"torch", "transformers", "accelerate", "torchmetrics", "tqdm", "safetensors"}


def hide(monkeypatch, *modules: str) -> None:
    """Make ``modules`` (and their loaded submodules) look uninstalled until the test ends."""
    for name in modules:
        for loaded in [m for m in sys.modules if m.startswith(name + ".")]:
            monkeypatch.setitem(sys.modules, loaded, None)
        monkeypatch.setitem(sys.modules, name, None)


def fresh(monkeypatch, package: str) -> None:
    """Forget ``package`` and its submodules, so the next import runs its ``__init__`` again; the modules and the
    parent's attribute are restored after. For an import that fails at once (the extra's check comes first),
    so that no second copy of a module outlives the test."""
    parent, _, child = package.rpartition(".")
    if parent:
        monkeypatch.setattr(importlib.import_module(parent), child, sys.modules.get(package), raising=False)
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        monkeypatch.delitem(sys.modules, name)


def extra_requirements(extra: str) -> list[str]:
    """The distributions ``pip install 'ls-seq[extra]'`` installs beyond the core (self-references expanded)."""
    out = []
    for req in PROJECT["optional-dependencies"][extra]:
        own = re.fullmatch(r"ls-seq\[(.*)\]", req)
        if own:
            out += [r for e in own.group(1).split(",") for r in extra_requirements(e)]
        else:
            out.append(re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].lower())
    return out


# ---- the helper ---------------------------------------------------------------------------------------------


def test_require_returns_the_module_and_names_the_extra_of_a_missing_one(monkeypatch):
    assert require("math", extra="plots", feature="x") is importlib.import_module("math")
    hide(monkeypatch, "matplotlib")
    with pytest.raises(MissingExtraError) as info:
        require("matplotlib.figure", extra="plots", feature="the reliability diagram")
    assert str(info.value) == "the reliability diagram needs matplotlib, which is not installed: pip install 'ls-seq[plots]'"
    assert isinstance(info.value, ImportError) and isinstance(info.value, LsSeqError) and info.value.name == "matplotlib"


def test_a_broken_install_keeps_its_own_error(tmp_path, monkeypatch):
    """A module that is there but fails on a library the extra does not install is not a missing extra."""
    (tmp_path / "half_installed_lib.py").write_text("import no_such_dependency_of_it\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as info:
        require("half_installed_lib", extra="plots", feature="x")
    assert not isinstance(info.value, MissingExtraError) and info.value.name == "no_such_dependency_of_it"


def test_require_extra_lists_every_missing_library_in_one_line(monkeypatch):
    require_extra("plots", feature="x")  # installed here: nothing happens
    hide(monkeypatch, "sacrebleu", "scipy", "sklearn")
    with pytest.raises(MissingExtraError) as info:
        require_extra("studies", feature="the EN-DE study")
    assert str(info.value) == "the EN-DE study needs sacrebleu and scipy, which are not installed: pip install 'ls-seq[studies]'"
    with pytest.raises(
        MissingExtraError, match=r"needs scikit-learn and scipy, which are not installed: pip install 'ls-seq\[vision\]'"
    ):
        require_extra("vision", feature="v")


def test_an_unknown_extra_is_a_bug_of_the_caller():
    with pytest.raises(ValueError, match=r"`extra` must be one of \['bleu', .*got 'plot'"):
        require("math", extra="plot", feature="x")


def test_the_runner_prints_a_missing_extra_as_one_line_with_exit_1(capsys):
    err = MissingExtraError("the EN-DE study needs sacrebleu, which is not installed: pip install 'ls-seq[studies]'")
    assert describe_fault(err) == (EXIT_FAULT, str(err))

    def main(argv):
        raise err

    assert run_main(main, [], prog="prog") == 1
    lines = capsys.readouterr().err.splitlines()
    assert (
        len(lines) == 1
        and lines[0].startswith("prog: error: the EN-DE study needs sacrebleu")
        and "'ls-seq[studies]'" in lines[0]
    )


# ---- pyproject.toml and the table agree ----------------------------------------------------------------------


def test_the_core_dependencies_are_what_the_losses_metric_and_hf_integration_import():
    names = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in PROJECT["dependencies"]}
    assert names == CORE


def test_every_extra_installs_what_ls_seq_imports_from_it():
    for extra, modules in EXTRAS.items():
        installs = extra_requirements(extra)
        for module in modules:
            dist = DISTRIBUTIONS.get(module, module)
            if dist != "fairseq-fixed":  # installed after the extra, with --no-deps (README, docs/fairseq.md)
                assert dist in installs, f"ls-seq[{extra}] must install {dist} (ls_seq/_extras.py imports {module} from it)"
    dev = set(extra_requirements("dev"))
    for extra in EXTRAS:
        assert set(extra_requirements(extra)) <= dev, f"[dev] must hold ls-seq[{extra}]"


def test_nothing_optional_is_imported_without_require():
    """The core modules import no optional library at module level, and inside functions only through
    :func:`ls_seq._extras.require` (so that a core install gets the one-line message, not a traceback); an
    ``if TYPE_CHECKING:`` import is for annotations only and never runs."""
    allowed = {("ls_seq/hf/loggers.py", "matplotlib")}  # closes a figure that matplotlib drew: it is installed
    found = []
    for path in sorted((ROOT / "ls_seq").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(("ls_seq/studies/en_de/", "ls_seq/evaluate_metrics/token_ece/")):
            continue  # the EN-DE study checks its extra at import; the metric script runs inside `evaluate`
        tree = ast.parse(path.read_text())
        typing_only = {
            id(n)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING"
            for n in ast.walk(block)
        }  # annotations only: never executed
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top in OPTIONAL and (rel, top) not in allowed:
                    found.append(f"{rel}:{node.lineno} imports {name}")
    assert not found, found


def test_import_ls_seq_and_its_losses_load_no_optional_library():
    code = (
        "import sys, torch, ls_seq\n"
        "logits, labels = torch.randn(2, 3, 5), torch.tensor([[1, 2, -100], [0, 4, 3]])\n"
        "ls_seq.label_smoothed_cross_entropy(logits, labels, 0.1)\n"
        "ls_seq.LabelSmoothedCrossEntropy(0.1)(logits.reshape(-1, 5), labels.reshape(-1))\n"
        "ls_seq.expected_calibration_error(logits.reshape(-1, 5), labels.reshape(-1))\n"
        f"print(sorted(m for m in {OPTIONAL!r} if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


# ---- each place an optional library is used -------------------------------------------------------------------


def test_the_figures_need_plots(monkeypatch):
    from ls_seq.calibration.plots import plot_reliability_diagram, plot_temperature_sweep
    from ls_seq.studies.trajectory import plot_trajectory

    hide(monkeypatch, "matplotlib")
    for call, feature in [
        (lambda: plot_reliability_diagram({"a": {"count": torch.ones(3)}}), "the reliability diagram"),
        (lambda: plot_temperature_sweep([{"temperature": 1.0, "nll": 1.0, "ece": 0.1}]), "the temperature sweep figure"),
        (lambda: plot_trajectory([]), "the calibration trajectory figure"),
    ]:
        with pytest.raises(MissingExtraError, match=re.escape(f"{feature} needs matplotlib") + r".*'ls-seq\[plots\]'$"):
            call()


def test_calibration_callback_draws_only_when_it_can(monkeypatch):
    from ls_seq.hf.callbacks import CalibrationCallback

    assert CalibrationCallback().plot is True  # matplotlib is installed here
    hide(monkeypatch, "matplotlib")
    assert CalibrationCallback().plot is False  # a core install measures, without the figure
    assert CalibrationCallback(plot=False).plot is False
    with pytest.raises(MissingExtraError, match=r"^CalibrationCallback\(plot=True\) needs matplotlib, .*'ls-seq\[plots\]'$"):
        CalibrationCallback(plot=True)
    with pytest.raises(TypeError, match="`plot` must be True, False or None, got str"):
        CalibrationCallback(plot="yes")


def test_calibration_outputs_without_matplotlib_are_the_numbers_and_one_warning(tmp_path, monkeypatch):
    from ls_seq.calibration.metric import TokenCalibration
    from ls_seq.calibration.report import calibration_document, write_calibration_outputs

    metric = TokenCalibration(temperatures=[1.0, 1.5])
    metric.update(torch.randn(40, 5, generator=torch.Generator().manual_seed(0)), torch.arange(40) % 5)
    reliability = {b: {k: v[0] for k, v in metric.reliability(b).items()} for b in ("width", "mass")}
    doc = calibration_document(metric.compute(), reliability, fitted_temperature=1.1, fit_on="the same tokens")
    hide(monkeypatch, "matplotlib")
    with pytest.warns(LsSeqWarning) as caught:
        written = write_calibration_outputs(tmp_path, doc, title="t")
    assert [p.name for p in written] == ["report.md", "calibration.json"]
    assert len(caught) == 1 and str(caught[0].message) == (
        "drawing reliability.png and temperature_sweep.png needs matplotlib, which is not installed: "
        "pip install 'ls-seq[plots]'; writing calibration.json and report.md without them"
    )
    assert "## Figures" not in (tmp_path / "report.md").read_text()


def test_ls_seq_calibrate_without_matplotlib_writes_the_numbers(tmp_path, monkeypatch, capsys):
    from safetensors.torch import save_file

    from ls_seq.cli.commands import main

    save_file({"logits": torch.randn(3, 4, 6), "labels": torch.randint(0, 6, (3, 4))}, str(tmp_path / "l.safetensors"))
    hide(monkeypatch, "matplotlib")
    assert main(["calibrate", str(tmp_path / "l.safetensors"), "--output_dir", str(tmp_path / "out")]) == 0
    out, err = capsys.readouterr()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["calibration.json", "report.md"]
    assert "report.md" in out.splitlines()[-1] and "png" not in out
    assert err.splitlines() == [
        "ls-seq: warning: drawing reliability.png needs matplotlib, which is not installed: pip install 'ls-seq[plots]'; "
        "writing calibration.json and report.md without them"
    ]


def test_ls_seq_evaluate_bleu_needs_bleu_before_any_work(tmp_path, monkeypatch, capsys):
    from ls_seq.cli.commands import main

    hide(monkeypatch, "sacrebleu")
    code = main(["evaluate", str(tmp_path / "no_model"), "--data", "x.jsonl", "--output_dir", str(tmp_path / "o"), "--bleu"])
    lines = capsys.readouterr().err.splitlines()
    assert code == 1 and len(lines) == 1, lines
    assert lines[0].startswith("ls-seq: error: `--bleu` needs sacrebleu, which is not installed: pip install 'ls-seq[bleu]'")


def test_bleu_needs_bleu(monkeypatch):
    from ls_seq.hf.sweeps import corpus_bleu

    hide(monkeypatch, "sacrebleu")
    with pytest.raises(MissingExtraError, match=r"^BLEU needs sacrebleu, .*'ls-seq\[bleu\]'$"):
        corpus_bleu(["a"], ["a"])


def test_a_saved_dataset_needs_datasets(tmp_path, monkeypatch):
    from ls_seq.cli.eval_data import read_records

    (tmp_path / "dataset_info.json").write_text("{}")
    hide(monkeypatch, "datasets")
    with pytest.raises(
        MissingExtraError, match=r"\(a datasets\.save_to_disk directory\) needs datasets, .*'ls-seq\[datasets\]'$"
    ):
        read_records(tmp_path)


def test_a_parallel_text_directory_needs_no_extra(tmp_path, monkeypatch):
    """`ls-seq evaluate` reads Multi30k's layout in a core install: the reader is not the study's."""
    from ls_seq.cli.eval_data import read_records

    (tmp_path / "test.en").write_text("a cat\n")
    (tmp_path / "test.de").write_text("eine Katze\n")
    hide(monkeypatch, *EXTRAS["studies"])
    fresh(monkeypatch, "ls_seq.studies.en_de")
    assert read_records(tmp_path) == [{"source": "a cat", "target": "eine Katze", "_line": 1}]
    assert "ls_seq.studies.en_de" not in sys.modules


def test_the_token_ece_metric_needs_datasets(monkeypatch):
    from ls_seq.evaluate_metrics import token_ece_path

    assert Path(token_ece_path(), "token_ece.py").is_file()
    hide(monkeypatch, "evaluate")
    with pytest.raises(MissingExtraError, match=r"^the token_ece metric needs evaluate, .*'ls-seq\[datasets\]'$"):
        token_ece_path()


def test_the_seed_statistics_need_studies(monkeypatch):
    from ls_seq.studies.significance import paired_bootstrap_bleu, seed_interval

    assert seed_interval([1.0])["n"] == 1  # one seed: no interval, no scipy
    hide(monkeypatch, "scipy", "sacrebleu")
    with pytest.raises(MissingExtraError, match=r"^the t-interval over seeds needs scipy, .*'ls-seq\[studies\]'$"):
        seed_interval([1.0, 2.0])
    with pytest.raises(MissingExtraError, match=r"^the paired bootstrap test of BLEU needs sacrebleu, .*'ls-seq\[studies\]'$"):
        paired_bootstrap_bleu(["a"], ["a"], ["a"])


# ---- the studies' packages and the recipes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("package", "hidden", "message"),
    [
        (
            "ls_seq.studies.en_de",
            ("datasets",),
            "the EN-DE study needs datasets, which is not installed: pip install 'ls-seq[studies]'",
        ),
        (
            "vision",
            ("sklearn",),
            "the image studies' package `vision` needs scikit-learn, which is not installed: pip install 'ls-seq[vision]'",
        ),
        (
            "ls_seq_fairseq",
            ("fairseq",),
            "the fairseq plugin (ls_seq_fairseq) needs fairseq-fixed, which is not installed: "
            "pip install 'ls-seq[fairseq]'; then fairseq itself: pip install --no-deps "
            "--no-build-isolation fairseq-fixed==0.12.3.1 (docs/fairseq.md says why)",
        ),
    ],
)
def test_each_study_package_checks_its_extra_when_imported(monkeypatch, package, hidden, message):
    hide(monkeypatch, *hidden)
    fresh(monkeypatch, package)
    with pytest.raises(MissingExtraError) as info:
        importlib.import_module(package)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("recipe", "argv", "hidden", "package", "extra"),
    [
        ("wmt_en_de.py", ["--help"], ("sacrebleu",), "ls_seq.studies.en_de", "studies"),
        ("wmt_en_de.py", ["--preset", "tiny"], ("datasets", "scipy"), "ls_seq.studies.en_de", "studies"),
        ("vision_study.py", ["--dataset", "digits"], ("sklearn",), "vision", "vision"),
        ("fairseq_en_de.py", ["--preset", "tiny"], ("matplotlib",), "ls_seq.studies.en_de", "studies"),
        ("fairseq_en_de.py", ["--preset", "tiny"], ("hydra",), "ls_seq_fairseq", "fairseq"),
    ],
)
def test_a_recipe_without_its_extra_is_one_line_and_exit_1(monkeypatch, capsys, recipe, argv, hidden, package, extra):
    """The recipe's import is light; the study is imported inside ``main``, so ``run_main`` reports it."""
    spec = importlib.util.spec_from_file_location(f"recipe_{recipe[:-3]}", ROOT / "recipes" / recipe)
    module = importlib.util.module_from_spec(spec)
    hide(monkeypatch, *hidden)
    fresh(monkeypatch, package)  # the package that checks the hidden library's extra
    spec.loader.exec_module(module)  # its own imports need no extra
    assert run_main(module.main, argv, prog=recipe) == 1
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{recipe}: error: ") and f"pip install 'ls-seq[{extra}]'" in lines[0], lines
    assert captured.out == ""  # not even --help: the study is not there to describe
