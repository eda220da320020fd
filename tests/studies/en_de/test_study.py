"""The EN-DE recipe end to end on a slice of Multi30k, its refusals of bad input, and the study's bookkeeping
(source check, Table-3 row, summaries). Resume and the other faults: ``test_faults.py``."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
import torch
from _helpers.ende_runs import RECIPE, error_lines, slice_args
from _helpers.ende_runs import recipe as _recipe

from ls_seq.io import file_mode, read_json
from ls_seq.studies.en_de.evaluation import SOURCE_DISTINCT_MIN, SOURCE_NLL_GAP_MIN, _derangement, check_source_use
from ls_seq.studies.en_de.report import source_warnings
from ls_seq.studies.en_de.summary import summarize_model, table3_row

# ------------------------------------------------------------------------------------------------------
# Bad input: refused before any work, naming the argument or path, nothing written.


def _write_corpus(directory, n_en=3, n_de=3):
    directory.mkdir()
    for split in ("train", "val", "test_2016_flickr"):
        (directory / f"{split}.en").write_text("".join(f"a sentence {i}\n" for i in range(n_en)))
        (directory / f"{split}.de").write_text("".join(f"ein Satz {i}\n" for i in range(n_de)))
    return directory


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--alphas", "0.0", "1.0"], r"`alphas\[1\]` must be in \[0, 1\)"),
        (["--alphas", "-0.1"], r"`alphas\[0\]` must be in \[0, 1\)"),
        (["--temperatures", "1.0", "0"], r"`temperatures\[1\]` must be finite and > 0"),
        (["--temperatures", "-2"], r"`temperatures\[0\]` must be finite and > 0"),
        (["--preset", "huge"], r"`preset` must be one of"),
        (["--max_steps", "0"], r"`max_steps` must be an int >= 1"),
        (["--dataset", "europarl"], r"`dataset` must be one of"),
        (["--cpu_threads", "0"], r"`cpu_threads` must be an int >= 1, got 0"),
        (["--calibration_every", "-1"], r"`calibration_every` must be an int >= 0, got -1"),
        (["--calibration_samples", "0"], r"`calibration_samples` must be an int >= 1, got 0"),
        (["--calibration_temperatures", "1.0", "0"], r"`calibration_temperatures\[1\]` must be finite and > 0"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(tmp_path, flags, message):
    data = _write_corpus(tmp_path / "data")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        _recipe().main(["--data_dir", str(data), "--output_dir", str(out), *flags])
    assert not out.exists()


def test_cpu_threads_default_to_this_process_share_of_the_cores(monkeypatch):
    """``accelerate launch`` without a config pins one thread; the study takes its share of the usable cores."""
    from ls_seq.studies.en_de.processes import _Processes

    state, saved = _Processes(), torch.get_num_threads()
    cores = len(os.sched_getaffinity(0))
    try:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
        assert state.set_cpu_threads(None) == cores == torch.get_num_threads()
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * cores))  # more processes than cores: one thread each
        assert state.set_cpu_threads(None) == 1 == torch.get_num_threads()
        assert state.set_cpu_threads(3) == 3 == torch.get_num_threads()  # an explicit count is used as given
    finally:
        torch.set_num_threads(saved)


def test_missing_and_misaligned_data_are_refused_naming_the_path(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="data_dir") as err:
        _recipe().main(["--data_dir", str(tmp_path / "absent"), "--output_dir", str(out)])
    assert str(tmp_path / "absent") in str(err.value)
    data = _write_corpus(tmp_path / "bad", n_en=3, n_de=2)
    with pytest.raises(ValueError, match="misaligned") as err:
        _recipe().main(["--data_dir", str(data), "--output_dir", str(out)])
    assert str(data / "train.en") in str(err.value)
    assert not out.exists()  # no tokenizer, no results: the data is read before anything is written


def test_arguments_from_one_yaml_file(tmp_path):
    data = _write_corpus(tmp_path / "data")
    config = tmp_path / "study.yaml"
    config.write_text(f"data_dir: {data}\npreset: small\nalphas: [0.0, 0.2]\ntemperatures: [1.0, 2.0]\nd_model: 64\n")
    data_args, model_args, study_args = _recipe().parse_args([str(config)])
    assert (data_args.data_dir, model_args.preset, model_args.d_model) == (str(data), "small", 64)
    assert (study_args.alphas, study_args.temperatures) == ([0.0, 0.2], [1.0, 2.0])
    config.write_text(f"data_dir: {data}\nalphas: [0.0, 1.0]\n")
    with pytest.raises(ValueError, match=r"alphas\[1\]"):  # the same checks as on the command line
        _recipe().parse_args([str(config)])


def test_bad_input_exits_nonzero_from_the_command_line(tmp_path):
    data = _write_corpus(tmp_path / "data")
    proc = subprocess.run(
        [sys.executable, str(RECIPE), "--data_dir", str(data), "--output_dir", str(tmp_path / "out"), "--alphas", "1.5"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2  # bad input
    assert error_lines(proc.stderr) == [proc.stderr.strip()]  # one line, no traceback
    assert "`alphas[0]` must be in [0, 1), got 1.5" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------------
# Bookkeeping


def test_source_check_thresholds_and_report_warning():
    good = check_source_use(nll=2.8, nll_shuffled=5.37, share_distinct=0.97)
    assert good["uses_source"] and good["nll_gap"] == pytest.approx(2.57)
    collapsed = check_source_use(nll=3.88, nll_shuffled=3.88, share_distinct=0.001)  # the stock HF alpha=0.1 run
    assert not collapsed["uses_source"]
    assert not check_source_use(2.0, 2.0 + SOURCE_NLL_GAP_MIN, SOURCE_DISTINCT_MIN - 0.01)["uses_source"]
    lines = source_warnings([{"alpha": 0.0, "source_check": good}, {"alpha": 0.1, "source_check": collapsed}])
    assert len(lines) == 1 and "alpha=0.1" in lines[0] and "IGNORES ITS SOURCE" in lines[0]


def test_derangement_moves_every_sentence():
    for n in (2, 3, 10, 1000):
        perm = _derangement(n, seed=0)
        assert sorted(perm) == list(range(n)) and all(perm[i] != i for i in range(n))


def _evaluation(nll, ece, bleu):
    temps = [0.8, 1.0, 1.5]
    return {
        "teacher_forced": {
            "temperatures": temps,
            "nll": nll,
            "ece": ece,
            "mce": [0.2] * 3,
            "rms": [0.1] * 3,
            "accuracy": [0.5] * 3,
            "mean_confidence": [0.5] * 3,
            "n_tokens": 100,
        },
        "reliability": {"count": [1.0]},
        "nll_shuffled_sources": 5.0,
        "test_bleu": 20.0,
        "share_distinct_outputs": 0.9,
        "sweep_bleu": {repr(t): b for t, b in zip(temps, bleu) if b is not None},
        "sweep_bleu_sentences": 24,
    }


def test_summary_and_table3_row_from_partial_and_full_sweeps():
    grid = [0.8, 1.0, 1.5]
    hard = summarize_model(0.0, _evaluation([2.1, 2.0, 2.2], [0.08, 0.05, 0.03], [20.0, 21.0, None]), None, grid)
    assert [p["bleu"] for p in hard["sweep"]] == [20.0, 21.0, None]  # the unfinished point is marked, not dropped
    assert hard["test"]["nll"] == 2.0 and hard["test"]["ece"] == 0.05  # the T = 1 entries
    assert hard["best_nll_temperature"] == 1.0 and hard["best_ece_temperature"] == 1.5
    assert hard["source_check"]["nll_gap"] == pytest.approx(3.0)
    smooth = summarize_model(0.1, _evaluation([2.3, 2.2, 2.4], [0.02, 0.01, 0.09], [19.0, 20.0, 18.0]), None, grid)
    row = table3_row([hard, smooth])
    assert row == {
        "baseline_ece": 0.05,
        "temperature_scaling_ece": 0.03,
        "temperature_scaling_T": 1.5,
        "label_smoothing_ece": 0.01,
        "label_smoothing_alpha": 0.1,
    }
    # with a validation sweep, T is chosen there (0.8: its lowest validation ECE) and scored on test (0.08)
    ev = _evaluation([2.1, 2.0, 2.2], [0.08, 0.05, 0.03], [20.0, 21.0, 19.0])
    ev["validation_teacher_forced"] = {"temperatures": grid, "nll": [2.0, 2.1, 2.2], "ece": [0.01, 0.02, 0.03]}
    hard = summarize_model(0.0, ev, None, grid)
    assert hard["validation"]["best_ece_temperature"] == 0.8 and hard["validation"]["test_ece_at_best_ece_temperature"] == 0.08
    row = table3_row([hard, smooth])
    assert (row["temperature_scaling_T_validation"], row["temperature_scaling_ece_validation_T"]) == (0.8, 0.08)
    assert summarize_model(0.1, {}, None, grid) == {"alpha": 0.1}  # nothing evaluated yet


# ------------------------------------------------------------------------------------------------------
# End to end on a slice of the real data


@pytest.mark.slow
def test_recipe_end_to_end_writes_consistent_results(reference_run):
    out, results = reference_run["out"], reference_run["results"]
    on_disk = read_json(out / "results.json")
    assert on_disk["models"] == results["models"]  # what main() returns is what it wrote
    assert [m["alpha"] for m in on_disk["models"]] == [0.0, 0.1]
    from ls_seq.studies.en_de.data import load_corpora
    from ls_seq.studies.en_de.tokenizer import load_or_train_tokenizer

    test = load_corpora(data_dir=reference_run["data"], max_samples={"test": 48})["test"]
    tok = load_or_train_tokenizer(out / "tokenizer", [], 1000)
    n_tokens = sum(len(ids) for ids in tok(test.target)["input_ids"])  # every target token plus </s>, no padding
    for m in on_disk["models"]:
        t = m["test"]
        assert set(t) >= {"bleu", "nll", "ece", "token_accuracy"}
        assert t["n_tokens"] == n_tokens
        assert 0 <= t["bleu"] <= 100 and 0 <= t["ece"] <= 1 and 0 <= t["token_accuracy"] <= 1 and t["nll"] > 0
        assert [p["temperature"] for p in m["sweep"]] == [0.8, 1.0, 1.5]
        at1 = m["sweep"][1]
        assert (at1["nll"], at1["ece"]) == (t["nll"], t["ece"])  # the sweep's T = 1 point is the test metric
        assert all(p["bleu"] is not None and 0 <= p["bleu"] <= 100 for p in m["sweep"])
        assert m["best_ece_temperature"] in (0.8, 1.0, 1.5) and m["train"]["steps"] == 30
        assert m["sweep_bleu_sentences"] == 24
        val = m["validation"]  # temperature chosen on 48 validation pairs, applied on test
        assert [p["temperature"] for p in val["sweep"]] == [0.8, 1.0, 1.5]
        t_val = val["best_ece_temperature"]
        assert val["test_ece_at_best_ece_temperature"] == next(p["ece"] for p in m["sweep"] if p["temperature"] == t_val)
        sc = m["source_check"]
        assert sc["nll_gap"] == pytest.approx(sc["nll_shuffled_sources"] - sc["nll"])
        # the reliability diagram's 15 bin counts add up to the tokens
        assert len(m["reliability"]["count"]) == 15 and sum(m["reliability"]["count"]) == pytest.approx(n_tokens)
        translations = (out / f"alpha_{m['alpha']}" / "test_translations.txt").read_text().splitlines()
        assert len(translations) == 48
        assert sc["share_distinct_outputs"] == pytest.approx(len(set(translations)) / 48)
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0] == "alpha,temperature,bleu,nll,ece" and len(rows) == 1 + 2 * 3
    report = (out / "report.md").read_text()
    assert "accelerate launch recipes/wmt_en_de.py" in report and "--max_steps 30" in report and "transformers" in report
    # 30 steps of a tiny model cannot translate: the report must say so in its first lines.
    assert ("IGNORES ITS SOURCE" in "\n".join(report.splitlines()[:6])) == any(
        not m["source_check"]["uses_source"] for m in on_disk["models"]
    )
    for png in ("reliability.png", "temperature_sweep.png", "table3.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "alpha_0.1" / "model" / "model.safetensors").is_file()
    # every result, model and checkpoint file gets the umask's mode (mkstemp and transformers leave 0o600)
    for path in [*out.glob("*.*"), *out.glob("alpha_*/**/*"), *out.glob("tokenizer/*")]:
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == file_mode(), path
    assert reference_run["seconds"] < 120


@pytest.mark.slow
def test_existing_results_need_resume_or_overwrite(reference_run):
    with pytest.raises(ValueError, match="--resume"):
        _recipe().main(slice_args(reference_run["data"], reference_run["out"]))
