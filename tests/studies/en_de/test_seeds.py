"""The EN-DE study over several seeds: each seed is the single-seed study, the summary is the statistics of
their numbers (checked against numpy/scipy and sacrebleu), claims follow the written rule, and --resume
(also after SIGKILL mid-seed) adds seeds and reproduces the results."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.stats
from _helpers.ende_runs import comparable, error_lines, one_thread, recipe, run_recipe, slice_args

from ls_seq.hf.sweeps import corpus_bleu
from ls_seq.io import read_json
from ls_seq.studies.en_de.data import load_corpora


@pytest.fixture(scope="module")
def two_seeds(reference_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("seeds") / "run"
    with one_thread():
        summary = recipe().main(slice_args(reference_run["data"], out, "--seeds", "42", "43"))
    return {"out": out, "summary": summary}


def test_each_seed_is_the_single_seed_study(reference_run, two_seeds):
    out = two_seeds["out"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["seed_42", "seed_43"]
    # seed 42 repeated gives identical results to the single-seed reference run (seed 42 is its default)
    single, seeded = comparable(reference_run["out"] / "results.json"), comparable(out / "seed_42" / "results.json")
    assert seeded == single
    assert read_json(out / "seed_43" / "results.json")["config"]["seed"] == 43
    assert comparable(out / "seed_43" / "results.json")["models"] != single["models"]  # another seed, other numbers


def test_summary_is_mean_std_and_t_interval_of_the_seeds(two_seeds):
    out, summary = two_seeds["out"], two_seeds["summary"]
    assert read_json(out / "results.json") == json.loads(json.dumps(summary)) and summary["config"]["seeds"] == [42, 43]
    per_seed = {s: {m["alpha"]: m for m in read_json(out / f"seed_{s}" / "results.json")["models"]} for s in (42, 43)}
    for m in summary["models"]:
        for name, path in (
            ("ece", ("test", "ece")),
            ("bleu", ("test", "bleu")),
            ("best_ece_temperature", ("best_ece_temperature",)),
        ):
            values = []
            for s in (42, 43):
                v = per_seed[s][m["alpha"]]
                for key in path:
                    v = v[key]
                values.append(v)
            got = m["metrics"][name]
            assert got["values"] == {"42": values[0], "43": values[1]}
            assert got["mean"] == pytest.approx(np.mean(values), abs=1e-12)
            assert got["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
            if got["std"] > 0:
                low, high = scipy.stats.t.interval(0.95, df=1, loc=np.mean(values), scale=np.std(values, ddof=1) / math.sqrt(2))
                assert (got["low"], got["high"]) == pytest.approx((low, high), abs=1e-9)


def test_bleu_tests_and_claims_follow_the_rule(reference_run, two_seeds):
    out, summary = two_seeds["out"], two_seeds["summary"]
    test = load_corpora(data_dir=reference_run["data"], max_samples={"train": 1, "validation": 1, "test": 48})["test"]
    for s in (42, 43):
        hyps = {a: (out / f"seed_{s}" / f"alpha_{a}" / "test_translations.txt").read_text().split("\n")[:48] for a in (0.0, 0.1)}
        t = summary["bleu_paired_bootstrap"][f"{s}:0.1"]
        assert t["baseline_bleu"] == pytest.approx(corpus_bleu(hyps[0.0], test.target), abs=1e-9)
        assert t["system_bleu"] == pytest.approx(corpus_bleu(hyps[0.1], test.target), abs=1e-9)
        assert 0 < t["p_value"] <= 1
    claims = {c["quantity"]: c for c in summary["claims"]}
    assert len(claims) == 6
    ece = claims["ECE(LS) - ECE(hard)"]
    per_seed = {s: {m["alpha"]: m for m in read_json(out / f"seed_{s}" / "results.json")["models"]} for s in (42, 43)}
    diffs = [per_seed[s][0.1]["test"]["ece"] - per_seed[s][0.0]["test"]["ece"] for s in (42, 43)]
    assert [e["difference"] for e in ece["seeds"]] == pytest.approx(diffs, abs=1e-12)
    sd = np.std(diffs, ddof=1)
    low, high = scipy.stats.t.interval(0.95, df=1, loc=np.mean(diffs), scale=sd / math.sqrt(2)) if sd > 0 else (diffs[0],) * 2
    expected = "agrees" if high < 0 else "disagrees" if low > 0 else "inconclusive"
    assert ece["verdict"] == expected and ece["basis"] == "t-interval over 2 seeds"
    # per seed: the paired bootstrap of the difference, the same token resamples for both models
    for s, e in zip((42, 43), ece["seeds"]):
        reps = {a: np.asarray(per_seed[s][a]["test"]["replicates"]["ece"]) for a in (0.0, 0.1)}
        assert len(reps[0.0]) == len(reps[0.1]) == 200
        assert (e["low"], e["high"]) == pytest.approx(tuple(np.quantile(reps[0.1] - reps[0.0], [0.025, 0.975])), abs=1e-12)
    # "about as good as temperature scaling": the interval is shifted by the margin
    ts = claims["ECE(LS) - ECE(hard, best T)"]
    assert ts["margin"] == 0.01
    report = (out / "report.md").read_text()
    assert report.count("| **") == 6 and "95% Student-t interval" in report


def test_resume_adds_a_seed_and_keeps_the_finished_ones(reference_run, two_seeds, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(two_seeds["out"], out)
    kept = (out / "seed_42" / "alpha_0.0" / "model" / "model.safetensors").stat().st_mtime_ns
    with one_thread():
        summary = recipe().main(slice_args(reference_run["data"], out, "--seeds", "42", "43", "44", "--resume"))
    assert (out / "seed_42" / "alpha_0.0" / "model" / "model.safetensors").stat().st_mtime_ns == kept
    assert summary["config"]["seeds"] == [42, 43, 44]
    assert comparable(out / "seed_44" / "results.json")["config"]["seed"] == 44
    assert all(m["metrics"]["ece"]["n"] == 3 for m in summary["models"])
    # another configuration is refused for the seeds as for one run (its differences named)
    with pytest.raises(Exception, match="another configuration"), one_thread():
        recipe().main(slice_args(reference_run["data"], out, "--seeds", "42", "43", "44", "--resume", "--max_steps", "20"))


def test_sigkill_mid_seed_then_resume_gives_the_same_results(reference_run, two_seeds, tmp_path):
    out = tmp_path / "run"
    args = slice_args(reference_run["data"], out, "--seeds", "42", "43")
    proc = run_recipe(args, kill_at="alpha_0.1/step-15")  # seed 42, the smoothed model, mid-training
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not (out / "results.json").exists() and not (out / "seed_43").exists()
    proc = run_recipe([*args, "--resume"])
    assert proc.returncode == 0, error_lines(proc.stderr)
    assert comparable(out / "results.json") == comparable(two_seeds["out"] / "results.json")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--seeds", "1", "1"], r"`seeds` must be distinct, got \[1, 1\]"),
        (["--seeds", "3", "-1"], r"`seeds\[1\]` must be an int >= 0"),
    ],
)
def test_bad_seeds_are_refused_before_any_work(reference_run, tmp_path, flags, message):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        recipe().main(slice_args(reference_run["data"], out, *flags))
    assert not out.exists()
