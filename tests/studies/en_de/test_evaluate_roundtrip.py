"""A real round trip: a model trained by the EN-DE study's code on a slice of Multi30k, then ``ls-seq evaluate``
on its saved checkpoint reproduces the study's own test NLL and ECE (to 1e-6) and its BLEU."""

from __future__ import annotations

import json

import pytest

from ls_seq.cli import main

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("alpha", ["0.0", "0.1"])
def test_evaluate_reproduces_the_study(reference_run, tmp_path, alpha, capsys):
    run = reference_run["out"]
    study = next(m for m in reference_run["results"]["models"] if m["alpha"] == float(alpha))["test"]
    out = tmp_path / "evaluate"
    # the study's evaluation settings (slice_args and the tiny preset): 48 test pairs, batches of 16, beam 4
    argv = [
        "evaluate",
        str(run / f"alpha_{alpha}" / "model"),
        "--tokenizer",
        str(run / "tokenizer"),
        "--data",
        str(reference_run["data"]),
        "--split",
        "test_2016_flickr",
        "--max_samples",
        "48",
        "--batch_size",
        "16",
        "--max_length",
        "128",
        "--bleu",
        "--num_beams",
        "4",
        "--generate_batch_size",
        "32",
        "--output_dir",
        str(out),
    ]
    assert main(argv) == 0, capsys.readouterr().err
    doc = json.loads((out / "calibration.json").read_text())
    at_1 = doc["at_temperature_1"]
    assert at_1["n_tokens"] == study["n_tokens"]
    assert at_1["nll"] == pytest.approx(study["nll"], abs=1e-6)
    assert at_1["ece"] == pytest.approx(study["ece"], abs=1e-6)
    assert at_1["accuracy"] == pytest.approx(study["token_accuracy"], abs=1e-6)
    bleu_1 = next(p["bleu"] for p in doc["sweep"] if p["temperature"] == 1.0)
    assert bleu_1 == pytest.approx(study["bleu"], abs=1e-9)
