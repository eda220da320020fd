"""The study and its recipe: arguments checked before any work, and a digits run end to end (CI scale)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import stat
from pathlib import Path

import pytest

from ls_seq.io import file_mode, read_json
from vision.calibration import HARD, HARD_TS, SMOOTHED
from vision.data import load_digits
from vision.study import VisionStudyConfig, run_study

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "vision_study.py"


def _recipe():
    spec = importlib.util.spec_from_file_location("vision_study_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "argv, error, match",
    [
        (["--dataset", "mnist"], ValueError, "`dataset` must be one of"),
        (["--study", "pca"], ValueError, "`study` must be one of"),
        (["--projection_classes", "0", "1"], ValueError, "`projection_classes` must be 3 integer"),
        (["--projection_classes", "0", "1", "1"], ValueError, "`projection_classes` must be 3 distinct"),
        (["--projection_classes", "0", "1", "10"], ValueError, r"`projection_classes` must be class indices in \[0, 10\)"),
        (["--dataset", "cifar100", "--projection_classes", "0", "1", "100"], ValueError, r"\[0, 100\)"),
        (["--mi_classes", "3", "3"], ValueError, "`mi_classes` must be 2 distinct"),
        (["--alpha", "1.2"], ValueError, r"`alpha` must be in \[0, 1\)"),
        (["--alpha", "0"], ValueError, "`alpha` must be > 0"),
        (["--distill_alphas", "0.1", "-0.2"], ValueError, r"`distill_alphas\[1\]`"),
        (["--distill_temperatures", "0"], ValueError, r"`distill_temperatures\[0\]`"),
        (["--epochs", "0"], ValueError, "`epochs`"),
        (["--model", "vgg"], ValueError, "`model` must be one of"),
        (["--dataset", "imagenet"], ValueError, "`data_dir` is required"),
        (["--dataset", "cifar10", "--data_dir", "/nonexistent/cifar"], ValueError, "`data_dir` must be an existing directory"),
    ],
)
def test_bad_arguments_fail_before_anything_is_written(tmp_path, argv, error, match):
    out = tmp_path / "out"
    with pytest.raises(error, match=match):
        _recipe().main(["--output_dir", str(out), *argv])
    assert not out.exists()


def test_recipe_parses_lists_and_presets():
    cfg = _recipe().parse_args(["--dataset", "cifar100", "--projection_classes", "3", "4", "5", "--distill_alphas", "0.2"])
    assert cfg.projection_classes == [3, 4, 5] and cfg.distill_alphas == [0.2]
    assert (cfg.model, cfg.teacher_model, cfg.student_model) == ("resnet56", "resnet56", "alexnet_cifar")
    assert cfg.mi_classes == [0, 1] and cfg.n_bins == 15 and cfg.alpha == 0.1


def test_imagenet_classes_are_checked_against_the_folder(tmp_path):
    for c in ("a", "b", "c"):
        (tmp_path / "train" / c).mkdir(parents=True)
    VisionStudyConfig(dataset="imagenet", data_dir=str(tmp_path), output_dir=str(tmp_path / "o"))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        VisionStudyConfig(dataset="imagenet", data_dir=str(tmp_path), projection_classes=[0, 1, 3])


def _small(out: Path, **kw) -> VisionStudyConfig:
    args = dict(
        dataset="digits",
        study="all",
        output_dir=str(out),
        epochs=3,
        max_train_samples=400,
        mi_examples=20,
        mi_augmentations=8,
        distill_alphas=[0.3],
        distill_temperatures=[2.0],
        progress=False,
        cpu=True,
    )
    return VisionStudyConfig(**{**args, **kw})


def test_digits_end_to_end_writes_results_report_and_figures_and_resumes(tmp_path):
    out = tmp_path / "run"
    results = run_study(_small(out))
    for name in ("results.json", "report.md", "projection.png", "reliability.png", "distillation.png", "mutual_information.png"):
        assert (out / name).is_file(), name
    assert read_json(out / "results.json") == json.loads(json.dumps(results))

    full = load_digits(seed=0)
    assert results["data"] == {
        "name": "digits",
        "num_classes": 10,
        "n_train": 400,
        "n_val": len(full.val),
        "n_test": len(full.test),
    }
    rows = results["calibration"]["rows"]
    assert rows[HARD_TS]["temperature"] == rows[HARD]["fitted_temperature"] != 1.0
    assert rows[SMOOTHED]["temperature"] == 1.0
    assert rows[HARD]["accuracy"] == rows[HARD_TS]["accuracy"]  # a temperature never changes the argmax
    tight = results["projection"]["tightness"]
    assert all(0 < t[s][k] < math.inf for t in tight.values() for s in t for k in ("plane", "full"))
    mi = results["mutual_info"]
    for curve in mi["curves"].values():
        assert [e for e, _ in curve] == [0, 1, 2, 3]
        assert all(0 <= v <= mi["log_n"] + 1e-9 for _, v in curve)
    assert len(results["distillation"]["points"]) == 2 + 2 + 1 + 1
    # every claim of the paper is confronted with a measured number
    assert len(results["claims"]) == 2 + 3 + 3 + 1
    report = (out / "report.md").read_text()
    verdicts = [c["verdict"] for c in results["claims"]]
    assert set(verdicts) <= {"agrees", "disagrees", "inconclusive"}
    assert sum(report.count(f"| {v} |") for v in ("agrees", "disagrees", "inconclusive")) == len(verdicts)

    # the same command with --resume continues every run from its checkpoint and reproduces the numbers
    mtime = os.path.getmtime(out / "runs" / "distillation" / "teacher_alpha0" / "checkpoint.pt")
    again = run_study(_small(out, resume=True))
    assert os.path.getmtime(out / "runs" / "distillation" / "teacher_alpha0" / "checkpoint.pt") == mtime
    assert again["claims"] == results["claims"]
    assert again["calibration"] == results["calibration"]


def test_single_study_trains_only_what_it_needs(tmp_path):
    out = tmp_path / "cal"
    results = run_study(_small(out, study="calibration", epochs=1))
    assert {"calibration", "runs"} <= set(results) and not {"projection", "distillation", "mutual_info"} & set(results)
    assert sorted(os.listdir(out / "runs")) == ["digits_cnn_alpha0", "digits_cnn_alpha0.1"]
    assert len(results["claims"]) == 3


def test_recipe_reads_its_arguments_from_a_json_file(tmp_path):
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"dataset": "digits", "study": "projection", "epochs": 2, "projection_classes": [7, 8, 9]}))
    cfg = _recipe().parse_args([str(path)])
    assert (cfg.dataset, cfg.study, cfg.epochs, cfg.projection_classes) == ("digits", "projection", 2, [7, 8, 9])
    path.write_text(json.dumps({"dataset": "digits", "projection_classes": [7, 8, 8]}))
    with pytest.raises(ValueError, match="`projection_classes` must be 3 distinct"):
        _recipe().parse_args([str(path)])


def test_recipe_help_lists_every_argument(capsys):
    with pytest.raises(SystemExit) as info:
        _recipe().parse_args(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for name in ("--dataset", "--study", "--projection_classes", "--distill_temperatures", "--data_dir", "--lr"):
        assert name in text


# random pixels carry no label signal, so the NLL-optimal temperature runs to the search bound
@pytest.mark.filterwarnings("ignore:the NLL-optimal temperature:RuntimeWarning")
def test_imagenet_folder_end_to_end_with_lazily_decoded_images(fake_imagenet, tmp_path):
    out = tmp_path / "inet"
    results = run_study(
        VisionStudyConfig(
            dataset="imagenet",
            data_dir=str(fake_imagenet),
            cache_dir=str(tmp_path / "cache"),
            study="all",
            output_dir=str(out),
            epochs=1,
            batch_size=4,
            val_size=3,
            model="digits_mlp",
            teacher_model="digits_mlp",
            student_model="digits_mlp",
            mi_examples=6,
            mi_augmentations=4,
            distill_alphas=[0.3],
            distill_temperatures=[2.0],
            progress=False,
            cpu=True,
        )
    )
    assert results["data"] == {"name": "imagenet", "num_classes": 3, "n_train": 15, "n_val": 3, "n_test": 6}
    assert results["projection"]["tightness"]["hard targets"]["validation"]["n_examples"] == 3
    assert len(results["mutual_info"]["curves"]["label smoothing"]) == 2  # epoch 0 and 1
    assert (out / "report.md").is_file() and (out / "projection.png").is_file()


# ------------------------------------------------------------------------------------------------------
# Faults: the run directory (a second run, another configuration, a lock), one-line errors, file modes


def test_a_second_run_needs_resume_and_a_changed_configuration_is_refused(tmp_path):
    from ls_seq.errors import ConfigMismatchError, InputError

    out = tmp_path / "cal"
    first = run_study(_small(out, study="calibration", epochs=1))
    before = (out / "results.json").read_bytes()
    with pytest.raises(InputError, match="already holds a run .*pass --resume"):
        run_study(_small(out, study="calibration", epochs=1))
    with pytest.raises(ConfigMismatchError, match=r"epochs: 1 -> 2; .*lr: 0\.05 -> 0\.1"):
        run_study(_small(out, study="calibration", epochs=2, lr=0.1, resume=True))
    assert (out / "results.json").read_bytes() == before  # nothing rewritten under another configuration
    # another study may be added: the trained networks are reused, both studies are reported
    mtime = os.path.getmtime(out / "runs" / "digits_cnn_alpha0" / "checkpoint.pt")
    both = run_study(_small(out, study="projection", epochs=1, resume=True))
    assert both["config"]["studies"] == ["calibration", "projection"] and {"calibration", "projection"} <= set(both)
    assert both["calibration"] == first["calibration"]
    assert os.path.getmtime(out / "runs" / "digits_cnn_alpha0" / "checkpoint.pt") == mtime
    for name in ("results.json", "report.md", "reliability.png", "run_config.json", "stages.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == file_mode(), name


def test_a_resume_reads_finished_studies_back_from_their_stage_records(tmp_path, monkeypatch):
    """stages.json holds each finished study's record; a resume reads it instead of measuring again, a
    garbled file is set aside and measured again, and a record missing a field is refused by name."""
    import vision.study
    from ls_seq.errors import LsSeqWarning
    from ls_seq.studies import StageRecordError

    out = tmp_path / "cal"
    first = run_study(_small(out, study="calibration", epochs=1))
    assert read_json(out / "stages.json") == {
        "measured_runs": ["digits_cnn_alpha0", "digits_cnn_alpha0.1"],
        "calibration": json.loads(json.dumps(first["calibration"])),
    }
    results = (out / "results.json").read_bytes()

    measure = vision.study._calibration

    def measure_again(*args, **kwargs):
        raise AssertionError("a finished study was measured again")

    with monkeypatch.context() as patched:
        patched.setattr(vision.study, "_calibration", measure_again)
        again = run_study(_small(out, study="calibration", epochs=1, resume=True))
    assert again["calibration"] == first["calibration"] and again["claims"] == first["claims"]
    assert (out / "results.json").read_bytes() == results

    (out / "stages.json").write_text('{"calibration": {"rows"')  # a write cut short
    with pytest.warns(LsSeqWarning, match=r"stages\.json' is not valid JSON .*set aside as .*damaged-stages\.json"):
        third = run_study(_small(out, study="calibration", epochs=1, resume=True))
    assert third["calibration"] == first["calibration"] and (out / "results.json").read_bytes() == results

    # adding mutual_info trains the base networks again with its callback: their calibration is measured anew
    calls = []
    with monkeypatch.context() as patched:
        patched.setattr(vision.study, "_calibration", lambda *a: calls.append(1) or measure(*a))
        both = run_study(_small(out, study="mutual_info", epochs=1, resume=True))
    assert calls == [1] and read_json(out / "stages.json")["measured_runs"] == ["digits_cnn_alpha0_mi", "digits_cnn_alpha0.1_mi"]
    assert {"calibration", "mutual_info"} <= set(both)

    stages = read_json(out / "stages.json")
    del stages["calibration"]["rows"]
    (out / "stages.json").write_text(json.dumps(stages))
    with pytest.raises(StageRecordError, match=r"stages\.json': the record of stage 'calibration' lacks the field 'rows'"):
        run_study(_small(out, study="calibration", epochs=1, resume=True))


def test_a_locked_output_directory_is_refused(tmp_path):
    import subprocess
    import sys
    import textwrap

    from ls_seq.errors import RunLockedError

    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent("""
        import sys, time
        from ls_seq.studies.run_dir import RunLock
        RunLock(sys.argv[1]).acquire("the first run")
        print("locked", flush=True)
        time.sleep(120)
    """),
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=rf"in use by pid {holder.pid} .*the first run"):
            run_study(_small(out, study="calibration", epochs=1, overwrite_output_dir=True))
    finally:
        holder.kill()
        holder.wait()


def test_recipe_faults_are_one_line_with_exit_code_two(tmp_path, capsys):
    from ls_seq.cli.runner import run_main

    (tmp_path / "file").write_text("x")
    for argv, message in (
        (["--epochs", "0"], "`epochs` must be an int >= 1, got 0"),
        (["--output_dir", ""], "`output_dir` must be a non-empty path"),
        (["--output_dir", str(tmp_path / "file" / "out")], "must be a directory"),
        (["--resume", "--overwrite_output_dir"], "exclude each other"),
    ):
        assert run_main(_recipe().main, argv, prog="vision_study.py") == 2
        err = capsys.readouterr().err
        assert err.startswith("vision_study.py: error: ") and err.count("\n") == 1 and message in err, err
