"""Faults of the EN-DE study, injected from outside as a crash, a careless user or a bad disk would.

Each test asserts the exit code, the one line the user sees, and that every result file left behind is
complete and true to its configuration; the resume tests compare the whole ``results.json`` with the
uninterrupted reference run's (``conftest.py``). Kill points are the study's named stage boundaries
(``ls_seq.studies.failpoints``): the recipe kills itself there when ``LS_SEQ_KILL_AT`` names one.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from _helpers.ende_runs import (
    comparable,
    error_lines,
    one_thread,
    recipe,
    run_recipe,
    slice_args,
)
from _helpers.faults import FailingWrites, read_only_directory, resize_tmpfs, tmpfs, truncate
from safetensors.torch import load_file, save_file

import ls_seq.io
from ls_seq.checkpoints import checkpoint_steps, verify_checkpoint, write_checksums
from ls_seq.cli.runner import run_main
from ls_seq.io import read_json
from ls_seq.studies.run_dir import LOCK_NAME

PROG = "wmt_en_de.py"


def _main(argv, capsys):
    """The recipe in-process through the entry point's fault handler: ``(exit code, handler lines)``."""
    capsys.readouterr()
    with one_thread():
        code = run_main(recipe().main, argv, prog=PROG)
    return code, error_lines(capsys.readouterr().err)


def _copy(reference_run, tmp_path, name="run"):
    out = tmp_path / name
    shutil.copytree(reference_run["out"], out)
    return out


def _snapshot(out):
    return {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != LOCK_NAME}


def _temporaries(out):
    return [p for p in out.rglob(".*.tmp")]


# ------------------------------------------------------------------------------------------------------
# Bad input: exit 2, one line naming the argument or the file and line, nothing written


def _corpus(directory, en_bytes=None):
    directory.mkdir()
    for split in ("train", "val", "test_2016_flickr"):
        (directory / f"{split}.en").write_bytes(en_bytes or b"".join(b"a sentence %d\n" % i for i in range(20)))
        (directory / f"{split}.de").write_text("".join(f"ein Satz {i}\n" for i in range(20)))
    return directory


def test_unusable_output_directories_are_refused_in_one_line_before_any_work(tmp_path, capsys):
    data = _corpus(tmp_path / "data")
    (tmp_path / "file.txt").write_text("not a directory")
    cases = {
        "": "`output_dir` must be a non-empty path, got ''",
        str(tmp_path / "file.txt" / "run"): "which is a file",
    }
    for output_dir, message in cases.items():
        code, lines = _main(["--data_dir", str(data), "--output_dir", output_dir], capsys)
        assert code == 2 and len(lines) == 1 and message in lines[0], lines
    with read_only_directory(tmp_path / "ro") as ro:
        code, lines = _main(["--data_dir", str(data), "--output_dir", str(ro / "run")], capsys)
        assert code == 2 and len(lines) == 1 and "cannot be written" in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "file.txt", "ro"]


def test_undecodable_and_truncated_corpora_are_named_with_the_line(tmp_path, capsys):
    bad = _corpus(tmp_path / "latin1", en_bytes=b"a sentence\nen fran\xe7ais\n" * 10)
    code, lines = _main(["--data_dir", str(bad), "--output_dir", str(tmp_path / "out")], capsys)
    assert code == 2 and len(lines) == 1
    assert f"'{bad / 'train.en'}' line 2 is not valid UTF-8" in lines[0] and "Traceback" not in lines[0]
    cut = _corpus(tmp_path / "gz")
    blob = gzip.compress(b"".join(b"sentence %d\n" % i for i in range(5000)))
    (cut / "train.en").unlink()
    (cut / "train.en.gz").write_bytes(blob[: len(blob) // 2])
    code, lines = _main(["--data_dir", str(cut), "--output_dir", str(tmp_path / "out")], capsys)
    assert code == 2 and len(lines) == 1 and "train.en.gz' is a truncated or damaged gzip file" in lines[0]
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------------
# Resume: killed at every kind of stage boundary, the final results.json equals the uninterrupted run's

KILL_POINTS = [
    ("alpha_0.0/step-5", "KILL"),  # before the first checkpoint
    ("alpha_0.0/checkpoint-20", "TERM"),  # right after a checkpoint; SIGTERM unwinds: exit 143, lock released
    ("alpha_0.0/checkpoint-30", "KILL"),  # right after the checkpoint at max_steps, before the final model
    ("alpha_0.0/evaluated:teacher_forced", "KILL"),  # during evaluation, between two stages
    ("alpha_0.0/evaluated:sweep_bleu_0.8", "KILL"),  # between two temperatures decoded in one generate call
    ("alpha_0.1/step-15", "INT"),  # the second model, in a logging window after its first checkpoint
    ("alpha_0.1/evaluated:test_bleu", "KILL"),
    ("report", "KILL"),  # every result written, the report not yet
]
EXIT = {"KILL": -9, "TERM": 143, "INT": 130}


@pytest.mark.slow
def test_resume_from_every_stage_boundary_reproduces_the_uninterrupted_run(reference_run, tmp_path):
    out = tmp_path / "run"
    args = slice_args(reference_run["data"], out)
    reference = comparable(reference_run["out"] / "results.json")
    for i, (point, signal) in enumerate(KILL_POINTS):
        proc = run_recipe([*args, *(["--resume"] if i else [])], kill_at=point, signal=None if signal == "KILL" else signal)
        assert proc.returncode == EXIT[signal], (point, proc.stderr[-3000:])
        if signal != "KILL":  # unwound: one line, and the lock is free for the next run
            lines = [line for line in error_lines(proc.stderr) if ": error: " in line]
            assert len(lines) == 1 and f"SIG{signal}" in lines[0] and "--resume" in lines[0], lines
            assert (out / LOCK_NAME).read_text() == ""
        if (out / "results.json").is_file():  # what a killed run leaves is whole and of this configuration
            partial = comparable(out / "results.json")
            assert partial["config"] == reference["config"]
            assert [m["alpha"] for m in partial["models"]] == [0.0, 0.1][: len(partial["models"])]
        assert not [p for p in out.rglob(".*.tmp")], point
    final = run_recipe([*args, "--resume"])
    assert final.returncode == 0, final.stderr[-3000:]
    warnings = [line for line in error_lines(final.stderr) if ": warning: " in line]
    assert all("took over the lock" in line and "no longer running" in line for line in warnings), warnings
    got = comparable(out / "results.json")
    assert got == reference
    # the checkpoint at max_steps was taken as "training finished": no 31st step
    assert read_json(out / "alpha_0.0" / "train_summary.json")["resumed_from"] == "checkpoint-30"
    assert got["models"][0]["train"]["steps"] == 30
    config = read_json(out / "results.json")["config"]
    assert config["resumed_with"] == [f"accelerate launch recipes/wmt_en_de.py {' '.join([*args, '--resume'])}"] * len(
        KILL_POINTS
    )
    assert (out / "report.md").read_text().count("resumed with") == len(KILL_POINTS)
    timings = read_json(out / "timings.json")
    assert timings["earlier_runs"] and (timings["cpu_threads_per_process"], timings["device"]) == (1, "cpu")


# ------------------------------------------------------------------------------------------------------
# Resume with another configuration: refused, listing the differences; new alphas and temperatures: added


def _changed_corpus(data_dir, tmp_path):
    changed = tmp_path / "data"
    shutil.copytree(data_dir, changed)
    lines = gzip.decompress((changed / "test_2016_flickr.de.gz").read_bytes()).split(b"\n")
    lines[0] = b"Ein anderer Satz."
    (changed / "test_2016_flickr.de.gz").write_bytes(gzip.compress(b"\n".join(lines)))
    return changed


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "difference"),
    [
        (["--seed", "43"], "seed: 42 -> 43"),
        (["--d_model", "48"], "preset.d_model: 32 -> 48"),
        (["--max_steps", "40"], "preset.max_steps: 30 -> 40"),
        (["--max_eval_samples", "40"], "test_sentences: 48 -> 40"),
        (["--preset", "small"], "preset_name: 'tiny' -> 'small'"),
        ("changed corpus", "data.sha256: "),
    ],
)
def test_resume_with_another_configuration_is_refused_listing_the_differences(reference_run, tmp_path, capsys, flags, difference):
    out = _copy(reference_run, tmp_path)
    before = _snapshot(out)
    data = _changed_corpus(reference_run["data"], tmp_path) if flags == "changed corpus" else reference_run["data"]
    code, lines = _main(slice_args(data, out, *([] if flags == "changed corpus" else flags), "--resume"), capsys)
    assert code == 2 and len(lines) == 1, lines
    assert "holds a run with another configuration" in lines[0] and difference in lines[0]
    assert _snapshot(out) == before  # nothing rewritten: results.json still says what was run


@pytest.mark.slow
def test_resume_adds_alphas_and_temperatures_and_keeps_every_model(reference_run, tmp_path):
    """``--alphas 0.2 --temperatures 1.0 1.2`` on the 0.0/0.1 run with grid 0.8/1.0/1.5: alpha 0.2 is trained
    and the new temperature measured for every model; nothing is dropped. The result equals a fresh run of
    the union (alphas 0.0 0.1 0.2, temperatures 0.8 1.0 1.2 1.5)."""
    out = _copy(reference_run, tmp_path)
    resumed = run_recipe(slice_args(reference_run["data"], out, "--alphas", "0.2", "--temperatures", "1.0", "1.2", "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    fresh = run_recipe(
        slice_args(
            reference_run["data"],
            tmp_path / "fresh",
            "--alphas",
            "0.0",
            "0.1",
            "0.2",
            "--temperatures",
            "0.8",
            "1.0",
            "1.2",
            "1.5",
        )
    )
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    got = comparable(out / "results.json")
    assert [m["alpha"] for m in got["models"]] == [0.0, 0.1, 0.2]
    assert all([p["temperature"] for p in m["sweep"]] == [0.8, 1.0, 1.2, 1.5] for m in got["models"])
    assert got == comparable(tmp_path / "fresh" / "results.json")


# ------------------------------------------------------------------------------------------------------
# Two runs, one directory


_HOLDER = textwrap.dedent("""
    import sys, time
    from ls_seq.studies.run_dir import RunLock
    RunLock(sys.argv[1]).acquire("the first run")
    print("locked", flush=True)
    time.sleep(300)
""")


@pytest.mark.slow
def test_a_second_run_and_its_overwrite_are_refused_while_the_first_lives(reference_run, tmp_path, capsys):
    out = _copy(reference_run, tmp_path)
    before = _snapshot(out)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for flag in ("--resume", "--overwrite_output_dir"):
            code, lines = _main(slice_args(reference_run["data"], out, "--seed", "43", flag), capsys)
            assert code == 1 and len(lines) == 1, lines
            assert f"is in use by pid {holder.pid} on host" in lines[0] and "the first run" in lines[0]
        assert _snapshot(out) == before  # nothing deleted, nothing mixed in
    finally:
        holder.kill()
        holder.wait()
    code, lines = _main(slice_args(reference_run["data"], out, "--resume"), capsys)
    assert code == 0 and len(lines) == 1 and f"left by pid {holder.pid}" in lines[0] and "no longer running" in lines[0]
    assert comparable(out / "results.json") == comparable(reference_run["out"] / "results.json")


# ------------------------------------------------------------------------------------------------------
# Damaged checkpoints and models: named, set aside, the previous good one used; the result is unchanged


@pytest.fixture(scope="module")
def killed_after_the_last_checkpoint(reference_run, tmp_path_factory):
    """An alpha-0 run killed right after its checkpoint at max_steps: checkpoint-20 and checkpoint-30, no model."""
    out = tmp_path_factory.mktemp("partial") / "run"
    proc = run_recipe(slice_args(reference_run["data"], out, "--alphas", "0.0"), kill_at="alpha_0.0/checkpoint-30")
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert [s for s, _ in checkpoint_steps(out / "alpha_0.0" / "checkpoints")] == [30, 20]
    return out


def _nan_model(path):
    tensors = load_file(path)
    name = min(k for k, v in tensors.items() if v.is_floating_point())
    tensors[name][0] = float("nan")
    save_file(tensors, path, metadata={"format": "pt"})
    write_checksums(path.parent)  # NaN saved as such, not a changed byte: the finiteness check must see it


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_run_still_reproduces(
    reference_run, killed_after_the_last_checkpoint, tmp_path
):
    """checkpoint-30 (at max_steps) truncated: named, set aside, training resumes from checkpoint-20 to the
    same model. (Each kind of damage is detected in tests/test_checkpoints.py; NaN weights at this level in
    the next test.)"""
    out = tmp_path / "run"
    shutil.copytree(killed_after_the_last_checkpoint, out)
    checkpoints = out / "alpha_0.0" / "checkpoints"
    truncate(checkpoints / "checkpoint-30" / "model.safetensors")
    proc = run_recipe(slice_args(reference_run["data"], out, "--alphas", "0.0", "--resume"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    warned = [line for line in error_lines(proc.stderr) if "set aside" in line]
    assert len(warned) == 1 and f"'{checkpoints / 'checkpoint-30' / 'model.safetensors'}' is damaged" in warned[0]
    assert "damaged-checkpoint-30" in warned[0] and (checkpoints / "damaged-checkpoint-30").is_dir()  # kept
    assert read_json(out / "alpha_0.0" / "train_summary.json")["resumed_from"] == "checkpoint-20"
    assert comparable(out / "results.json")["models"] == comparable(reference_run["out"] / "results.json")["models"][:1]


@pytest.mark.slow
def test_a_nan_final_model_and_damaged_progress_files_are_set_aside_and_recomputed(reference_run, tmp_path):
    """In one finished run directory: the alpha-0 final model holds a NaN (set aside, rebuilt from its
    checkpoint at max_steps, evaluated again); results.json is truncated (rebuilt: the run directory, not
    results.json, says what was run); alpha 0.1's evaluation.json is garbled (set aside, evaluated again).
    The results equal the uninterrupted run's."""
    out = _copy(reference_run, tmp_path)
    _nan_model(out / "alpha_0.0" / "model" / "model.safetensors")
    (out / "alpha_0.0" / "evaluation.json").unlink()  # evaluate the rebuilt model again
    truncate(out / "results.json")
    (out / "alpha_0.1" / "evaluation.json").write_text('{"teacher_forced": {"temper')
    proc = run_recipe(slice_args(reference_run["data"], out, "--resume"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    warned = error_lines(proc.stderr)
    assert len(warned) == 2, warned
    assert "alpha_0.0/model/model.safetensors' is damaged: tensor" in warned[0] and "holds NaN" in warned[0]
    assert "damaged-model" in warned[0] and (out / "alpha_0.0" / "damaged-model").is_dir()
    assert "alpha_0.1/evaluation.json' is not valid JSON" in warned[1] and "damaged-evaluation.json" in warned[1]
    verify_checkpoint(out / "alpha_0.0" / "model", require=("model.safetensors",))
    assert comparable(out / "results.json") == comparable(reference_run["out"] / "results.json")


@pytest.mark.slow
def test_non_finite_weights_stop_the_run_naming_the_step_and_nothing_is_saved(reference_run, tmp_path, capsys, monkeypatch):
    """A weight turns NaN after step 12 (as an overflow would): the run stops at step 13 with one line; no
    checkpoint after it, no final model, no results; the checkpoint before it is whole and finite."""
    from ls_seq.studies.en_de import training

    def poison(self, args, state, control, model=None, **kwargs):
        if state.global_step == 12:
            with torch.no_grad():
                model.model.encoder.layers[0].fc1.weight[0, 0] = float("nan")

    monkeypatch.setattr(training._StageBoundaries, "on_step_end", poison)
    out = tmp_path / "run"
    code, lines = _main(slice_args(reference_run["data"], out, "--alphas", "0.0"), capsys)
    assert code == 1 and len(lines) == 1 and "step 13" in lines[0], lines
    assert "non-finite" in lines[0] or " nan " in lines[0]  # the trainer's loss check or the guard's weight check
    checkpoints = out / "alpha_0.0" / "checkpoints"
    assert [s for s, _ in checkpoint_steps(checkpoints)] == [10]
    verify_checkpoint(checkpoints / "checkpoint-10")
    assert not (out / "alpha_0.0" / "model").exists() and not (out / "results.json").exists()


# ------------------------------------------------------------------------------------------------------
# A full disk: one line naming the file, nothing half-written, the run resumes once space is freed


@pytest.mark.slow
def test_a_full_disk_is_one_line_naming_the_file_and_the_run_resumes(reference_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    FailingWrites(monkeypatch, ls_seq.io, "results.json")  # the disk fills up when the first results are written
    code, lines = _main(slice_args(reference_run["data"], out, "--alphas", "0.0"), capsys)
    assert code == 1 and len(lines) == 1, lines
    assert f"no space left on device writing '{out / 'results.json'}'" in lines[0]
    assert not (out / "results.json").exists() and not _temporaries(out)
    monkeypatch.undo()  # space freed
    code, _ = _main(slice_args(reference_run["data"], out, "--alphas", "0.0", "--resume"), capsys)
    assert code == 0
    assert comparable(out / "results.json")["models"] == comparable(reference_run["out"] / "results.json")["models"][:1]


@pytest.mark.slow
def test_a_real_full_disk_during_a_checkpoint_and_the_resume_after_freeing_space(reference_run, tmp_path):
    """On a 1.4 MB tmpfs the second checkpoint (about 0.8 MB each) does not fit: exit 1 naming the checkpoints;
    after growing the file system, the half-written checkpoint is set aside and training resumes from the first."""
    with tmpfs(tmp_path / "fs", "1400k") as fs:
        out = fs / "run"
        args = slice_args(reference_run["data"], out, "--alphas", "0.0")
        proc = run_recipe(args)
        assert proc.returncode == 1, proc.stderr[-3000:]
        lines = error_lines(proc.stderr)
        assert len(lines) == 1 and "no space left on device" in lines[0] and "checkpoints" in lines[0], lines
        assert not _temporaries(out)
        resize_tmpfs(fs, "64m")
        proc = run_recipe([*args, "--resume"])
        assert proc.returncode == 0, proc.stderr[-3000:]
        got = comparable(out / "results.json")["models"]
    assert got == comparable(reference_run["out"] / "results.json")["models"][:1]


# ------------------------------------------------------------------------------------------------------
# Odd inputs


@pytest.mark.slow
def test_a_test_split_too_small_for_the_source_check_skips_it_and_says_why(reference_run, tmp_path, capsys):
    out = tmp_path / "run"
    code, _ = _main(slice_args(reference_run["data"], out, "--alphas", "0.0", "--max_eval_samples", "1"), capsys)
    assert code == 0
    check = read_json(out / "results.json")["models"][0]["source_check"]
    assert check == {"skipped": "the test split has 1 sentence(s); the source check needs at least 10"}
    report = (out / "report.md").read_text()
    assert "Source check skipped: the test split has 1 sentence(s)" in report and "IGNORES ITS SOURCE" not in report
