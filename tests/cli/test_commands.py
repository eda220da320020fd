"""``ls-seq evaluate`` and ``ls-seq calibrate``: their numbers against an independent computation, two processes
against one, and every bad input refused with exit 2, one line, and nothing written.

Reference: the tiny model's logits computed here example by example (aligned by hand: a causal LM's logits at
t score the token at t + 1; only completion tokens count for prompt/completion data), then numpy softmax,
ECE over 15 equal-width bins, NLL and accuracy; the temperature from ``ls_seq.fit_temperature`` on them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers.families import family_model
from _helpers.tiny import tiny_tokenizer
from safetensors.torch import save_file

from ls_seq import fit_temperature
from ls_seq.cli import main

ROOT = Path(__file__).resolve().parents[2]
GRID = ["0.8", "1.0", "1.5"]
WORDS = [f"t{i}" for i in range(3, 96)]


def sentence(g, low=2, high=7):
    return " ".join(
        WORDS[int(i)] for i in torch.randint(0, len(WORDS), (int(torch.randint(low, high, (1,), generator=g)),), generator=g)
    )


def save_checkpoint(tmp_path, family, tokenizer=True):
    model = family_model(family, seed=3)
    with torch.no_grad():  # peaky predictions: calibration errors far from 0
        model.get_output_embeddings().weight.mul_(4.0)
    path = tmp_path / f"{family}_model"
    model.save_pretrained(str(path))
    if tokenizer:
        tiny_tokenizer().save_pretrained(str(path))
    return path


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def records(kind, n=11, seed=0, model_dir=None):
    """Evaluation records; with ``model_dir``, completions / texts / targets are sampled from that model at
    temperature 2, so that its NLL-optimal temperature is near 2 (a fit that can fail)."""
    g = torch.Generator().manual_seed(seed)
    if model_dir is None:
        if kind == "prompt":
            return [{"prompt": sentence(g), "completion": " " + sentence(g)} for _ in range(n)]
        if kind == "text":
            return [{"text": sentence(g, 3, 9)} for _ in range(n)]
        return [{"source": sentence(g), "target": sentence(g)} for _ in range(n)]
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    tok = tiny_tokenizer()
    seq2seq = AutoConfig.from_pretrained(str(model_dir)).is_encoder_decoder
    model = (AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM).from_pretrained(str(model_dir)).eval()
    torch.manual_seed(seed)
    out = []
    for _ in range(n):
        start = sentence(g, 1, 4) if kind == "text" else sentence(g)
        ids = torch.tensor([tok(start)["input_ids"]])
        k = int(torch.randint(2, 7, (1,), generator=g))
        sample = model.generate(
            ids,
            do_sample=True,
            temperature=2.0,
            top_k=0,
            max_new_tokens=k,
            min_new_tokens=k,
            pad_token_id=0,
            bad_words_ids=[[0], [1], [2]],
        )
        new = tok.decode(sample[0, 1:] if seq2seq else sample[0, ids.shape[1] :])
        out.append(
            {"prompt": start, "completion": " " + new}
            if kind == "prompt"
            else {"text": start + " " + new}
            if kind == "text"
            else {"source": start, "target": new}
        )
    return out


def reference(model_dir, data, causal, temperatures):
    """ECE / NLL / accuracy per temperature and the fitted T, from logits computed here one example at a time."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    tok = tiny_tokenizer()
    model = (AutoModelForCausalLM if causal else AutoModelForSeq2SeqLM).from_pretrained(str(model_dir)).eval()
    all_logits, all_labels = [], []
    with torch.no_grad():
        for r in data:
            if not causal:
                ids = torch.tensor([tok(r["source"])["input_ids"]])
                target = tok(text_target=r["target"])["input_ids"]
                dec = model.prepare_decoder_input_ids_from_labels(labels=torch.tensor([target]))
                all_logits.append(model(input_ids=ids, decoder_input_ids=dec).logits[0])
                all_labels.append(torch.tensor(target))
                continue
            if "text" in r:
                ids = tok(r["text"])["input_ids"]
                scored_from = 1  # every token but the first is predicted
            else:
                prompt = tok(r["prompt"])["input_ids"]
                ids = prompt + tok(r["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                scored_from = len(prompt)  # only the completion
            logits = model(input_ids=torch.tensor([ids])).logits[0]
            all_logits.append(logits[scored_from - 1 : -1])  # logits at t predict the token at t + 1
            all_labels.append(torch.tensor(ids[scored_from:]))
    logits, labels = torch.cat(all_logits), torch.cat(all_labels)
    out = {}
    for t in temperatures:
        z = logits.double().numpy() / t
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        conf, pred = p.max(1), p.argmax(1)
        correct = (pred == labels.numpy()).astype(float)
        bins = np.minimum(np.floor(conf * 15).astype(int), 14)
        ece = sum(abs((correct - conf)[bins == b].sum()) for b in range(15)) / len(conf)
        nll = float(-np.log(p[np.arange(len(p)), labels.numpy()]).mean())
        out[t] = {"ece": ece, "nll": nll, "accuracy": correct.mean(), "n_tokens": len(conf)}
    return out, fit_temperature(logits, labels)


def evaluate_args(model_dir, data, out, *extra):
    return [
        "evaluate",
        str(model_dir),
        "--data",
        str(data),
        "--output_dir",
        str(out),
        "--temperatures",
        *GRID,
        "--batch_size",
        "4",
        *extra,
    ]


@pytest.mark.parametrize(
    ("family", "kind"), [("gpt2", "prompt"), ("llama", "text"), ("llama", "prompt"), ("marian", "pair"), ("bart", "pair")]
)
def test_evaluate_equals_an_independent_computation(tmp_path, family, kind, capsys):
    model_dir = save_checkpoint(tmp_path, family)
    data = records(kind, model_dir=model_dir)
    path = write_jsonl(tmp_path / "data.jsonl", data)
    out = tmp_path / "out"
    assert main(evaluate_args(model_dir, path, out)) == 0, capsys.readouterr().err
    doc = json.loads((out / "calibration.json").read_text())
    ref, fitted = reference(model_dir, data, family in ("gpt2", "llama"), [float(t) for t in GRID])
    assert doc["kind"] == ("causal" if family in ("gpt2", "llama") else "seq2seq")
    for point in doc["sweep"]:
        expected = ref[point["temperature"]]
        assert point["n_tokens"] == expected["n_tokens"]
        for key in ("ece", "nll", "accuracy"):
            assert point[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-7), (point["temperature"], key)
    assert doc["nll_optimal_temperature"] == pytest.approx(fitted, rel=1e-5)
    assert 1.2 < fitted < 8.0, "sampled from the model at T = 2 (the first words of texts at random): not at a bound"
    assert {"ece_mass", "brier", "ece_low", "sequence_ece"} <= set(doc["at_temperature_1"])
    for name in ("reliability.png", "temperature_sweep.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert "ls-seq evaluate" in report and "| 1.5 |" in report and "torch" in report


def test_evaluate_reads_a_parallel_directory_and_a_saved_dataset(tmp_path, capsys):
    from datasets import Dataset

    model_dir = save_checkpoint(tmp_path, "marian")
    data = records("pair", n=9)
    (tmp_path / "par").mkdir()
    (tmp_path / "par" / "test.en").write_text("".join(r["source"] + "\n" for r in data))
    (tmp_path / "par" / "test.de").write_text("".join(r["target"] + "\n" for r in data))
    Dataset.from_list(data).save_to_disk(str(tmp_path / "saved"))
    docs = []
    for source in ("par", "saved"):
        assert main(evaluate_args(model_dir, tmp_path / source, tmp_path / f"out_{source}")) == 0, capsys.readouterr().err
        docs.append(json.loads((tmp_path / f"out_{source}" / "calibration.json").read_text()))
    assert docs[0]["sweep"] == docs[1]["sweep"]
    ref, _ = reference(model_dir, data, False, [1.0])
    assert docs[0]["at_temperature_1"]["ece"] == pytest.approx(ref[1.0]["ece"], rel=1e-5)


def test_evaluate_with_bleu_and_a_fit_split(tmp_path, capsys):
    from ls_seq.hf.sweeps import beam_search_sweep, corpus_bleu

    model_dir = save_checkpoint(tmp_path, "marian")
    (tmp_path / "par").mkdir()
    for split, seed in (("test", 0), ("val", 1)):
        data = records("pair", n=8, seed=seed)
        (tmp_path / "par" / f"{split}.en").write_text("".join(r["source"] + "\n" for r in data))
        (tmp_path / "par" / f"{split}.de").write_text("".join(r["target"] + "\n" for r in data))
    out = tmp_path / "out"
    args = evaluate_args(
        model_dir, tmp_path / "par", out, "--bleu", "--num_beams", "2", "--max_new_tokens", "8", "--fit_split", "val"
    )
    assert main(args) == 0, capsys.readouterr().err
    doc = json.loads((out / "calibration.json").read_text())
    test, val = records("pair", n=8, seed=0), records("pair", n=8, seed=1)
    _, fitted_on_val = reference(model_dir, val, False, [1.0])
    assert doc["nll_optimal_temperature"] == pytest.approx(fitted_on_val, rel=1e-5) and "val" in doc["fit_on"]
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(str(model_dir)).eval()
    hyps = beam_search_sweep(
        model,
        tiny_tokenizer(),
        [r["source"] for r in test],
        [1.5],
        num_beams=2,
        max_new_tokens=8,
        batch_size=32,
        max_source_length=512,
        progress=False,
    )[1.5]
    bleu = next(p["bleu"] for p in doc["sweep"] if p["temperature"] == 1.5)
    assert bleu == pytest.approx(corpus_bleu(hyps, [r["target"] for r in test]))


def one_line_refusal(argv, capsys, message):
    capsys.readouterr()  # what the setup printed (progress bars of save_pretrained)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("ls-seq: error:") and message in err, err
    return err


def test_evaluate_refuses_bad_input_with_one_line_and_writes_nothing(tmp_path, capsys):
    model_dir = save_checkpoint(tmp_path, "gpt2")
    good = write_jsonl(tmp_path / "good.jsonl", records("prompt"))
    out = tmp_path / "out"
    no_tok = save_checkpoint(tmp_path / "bare", "gpt2", tokenizer=False)
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"model_type": "no-such-model"}))
    missing_key = write_jsonl(tmp_path / "missing.jsonl", records("prompt", n=3) + [{"prompt": "t3 t4"}])
    (tmp_path / "broken.jsonl").write_text('{"prompt": "t3", "completion": " t4"}\n{"prompt": \n')
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "a_file").write_text("x")
    cases = [
        (evaluate_args(tmp_path / "nowhere", good, out), "does not exist"),
        (evaluate_args(tmp_path, good, out), "has no config.json"),
        (evaluate_args(no_tok, good, out), "holds no tokenizer"),
        (evaluate_args(unknown, good, out), "cannot read its config.json"),
        (evaluate_args(model_dir, missing_key, out), "record 4 has no `completion`"),
        (evaluate_args(model_dir, tmp_path / "broken.jsonl", out), "line 2 is not valid JSON"),
        (evaluate_args(model_dir, tmp_path / "empty.jsonl", out), "holds no records"),
        (
            evaluate_args(model_dir, write_jsonl(tmp_path / "pairs.jsonl", records("pair")), out),
            "a causal LM needs prompt/completion or text",
        ),
        (evaluate_args(model_dir, good, out, "--temperatures", "0"), "`--temperatures[0]` must be finite and > 0"),
        (evaluate_args(model_dir, good, out, "--bleu"), "`--bleu` needs an encoder-decoder"),
        (evaluate_args(model_dir, good, tmp_path / "a_file"), "`--output_dir` must be a directory"),
        (evaluate_args(model_dir, good, ""), "`--output_dir` must be a non-empty path"),
        (evaluate_args(model_dir, good, out, "--dtype", "float8"), "`--dtype` must be one of"),
    ]
    for argv, message in cases:
        one_line_refusal(argv, capsys, message)
    assert not out.exists()


def saved_logits(tmp_path, name="logits.safetensors", **tensors):
    path = tmp_path / name
    save_file(tensors, str(path))
    return path


def test_calibrate_default_and_one_temperature_and_outputs(tmp_path, capsys):
    from ls_seq.calibration.metric import TokenCalibration

    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(4, 6, 9, generator=g)
    labels = torch.multinomial(torch.softmax(logits.view(-1, 9), -1), 1, generator=g).view(4, 6)
    labels[:, -2:] = -100
    path = saved_logits(tmp_path, logits=logits, labels=labels)
    assert main(["calibrate", str(path)]) == 0  # the README's own form: no grid
    assert main(["calibrate", str(path), "--temperatures", "1.0"]) == 0
    out = tmp_path / "out"
    assert main(["calibrate", str(path), "--temperatures", "1.0", "2.0", "--output_dir", str(out)]) == 0
    saved = json.loads((out / "calibration.json").read_text())
    metric = TokenCalibration(temperatures=[1.0, 2.0])
    metric.update(logits, labels)
    assert [row["ece"] for row in saved["sweep"]] == metric.compute()["ece"].tolist()
    assert saved["nll_optimal_temperature"] == fit_temperature(logits, labels)
    assert sorted(p.name for p in out.iterdir()) == ["calibration.json", "reliability.png", "report.md", "temperature_sweep.png"]
    assert "NLL-optimal temperature" in capsys.readouterr().out


def test_calibrate_refuses_bad_input_with_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    (tmp_path / "notes.txt").write_text("not tensors\n")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    torch.save({"logits": torch.randn(2, 3), "labels": torch.tensor([0, 1])}, tmp_path / "logits.pt")
    bad_range = saved_logits(tmp_path, "range.safetensors", logits=torch.randn(3, 4), labels=torch.tensor([0, 1, 7]))
    ignored = saved_logits(tmp_path, "ignored.safetensors", logits=torch.randn(3, 4), labels=torch.full((3,), -100))
    cases = [
        (["calibrate", str(tmp_path / "notes.txt")], "is not a safetensors file"),
        (["calibrate", str(tmp_path / "empty.safetensors")], "is not a safetensors file"),
        (["calibrate", str(tmp_path / "logits.pt")], "a .pt/.pth file is a pickle"),
        (["calibrate", str(tmp_path / "missing.safetensors")], "no such file"),
        (["calibrate", str(bad_range)], "`labels` must be in [0, 4)"),
        (["calibrate", str(ignored)], "every label is --ignore_index -100"),
        (["calibrate", str(bad_range), "--temperatures", "0"], "must be finite and > 0"),
        (["calibrate", str(ignored), "--output_dir", ""], "`--output_dir` must be a non-empty path"),
    ]
    for argv, message in cases:
        one_line_refusal([*argv, "--output_dir", str(out)] if "--output_dir" not in argv else argv, capsys, message)
    assert not out.exists()


def test_help_says_what_is_measured_and_how_bins_are_defined():
    for command in ([], ["evaluate"], ["calibrate"]):
        proc = subprocess.run(
            [sys.executable, "-m", "ls_seq.cli", *command, "--help"], capture_output=True, text=True, check=True
        )
        assert "equal-width bins [k/B, (k+1)/B)" in proc.stdout and "NLL-optimal temperature" in proc.stdout


@pytest.mark.distributed
def test_evaluate_on_two_processes_gives_the_numbers_of_one(tmp_path):
    model_dir = save_checkpoint(tmp_path, "llama")
    data = write_jsonl(tmp_path / "data.jsonl", records("prompt", n=13))  # 13 examples: uneven over 2 processes
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for n, out in ((1, tmp_path / "one"), (2, tmp_path / "two")):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(n),
            "-m",
            "ls_seq.cli",
            *evaluate_args(model_dir, data, out),
        ]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (json.loads((tmp_path / d / "calibration.json").read_text()) for d in ("one", "two"))
    assert two["num_processes"] == 2 and one["num_processes"] == 1
    for p1, p2 in zip(one["sweep"], two["sweep"]):
        assert p1.keys() == p2.keys()
        for key in p1:
            assert p2[key] == pytest.approx(p1[key], rel=1e-6, abs=1e-9), key
    assert two["nll_optimal_temperature"] == pytest.approx(one["nll_optimal_temperature"], rel=1e-6)


def test_evaluate_in_bfloat16_is_close_to_float32(tmp_path, capsys):
    """--dtype bfloat16 loads the weights in bf16; the metric computes in float32 from the bf16 logits."""
    model_dir = save_checkpoint(tmp_path, "llama")
    data = write_jsonl(tmp_path / "data.jsonl", records("prompt"))
    docs = {}
    for dtype in ("float32", "bfloat16"):
        assert main(evaluate_args(model_dir, data, tmp_path / dtype, "--dtype", dtype)) == 0, capsys.readouterr().err
        docs[dtype] = json.loads((tmp_path / dtype / "calibration.json").read_text())
    assert docs["bfloat16"]["dtype"] == "bfloat16"
    a, b = docs["float32"]["at_temperature_1"], docs["bfloat16"]["at_temperature_1"]
    assert a["n_tokens"] == b["n_tokens"]
    assert b["nll"] == pytest.approx(a["nll"], rel=0.02) and abs(b["ece"] - a["ece"]) < 0.02


def test_evaluate_refuses_weights_that_differ_from_their_manifest_naming_the_file(tmp_path, capsys):
    """#25: a model whose weights were changed inside (header intact) exits 1 naming the file, the recorded and the
    found SHA-256, and writes nothing; one without a manifest is measured with one warning saying so.
    Fails before #25's change: ls-seq evaluate loaded the changed weights and exited 0."""
    import hashlib

    from _helpers.faults import zero_inside_the_weights

    from ls_seq.checkpoints import write_checksums

    model_dir = save_checkpoint(tmp_path, "marian")
    data = write_jsonl(tmp_path / "data.jsonl", records("pair"))
    capsys.readouterr()
    assert main(evaluate_args(model_dir, data, tmp_path / "unchecked")) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ls-seq: warning:")]
    assert warned == [
        f"ls-seq: warning: {str(model_dir)!r} has no recorded checksums (saved by an older ls-seq or another "
        "tool): its structure was verified, but a changed byte that keeps the structure valid cannot be detected"
    ]

    write_checksums(model_dir)
    weights = model_dir / "model.safetensors"
    recorded = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert main(evaluate_args(model_dir, data, tmp_path / "whole")) == 0
    assert "warning" not in capsys.readouterr().err
    zero_inside_the_weights(weights)
    found = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert main(evaluate_args(model_dir, data, tmp_path / "out")) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(
        f"ls-seq: error: {str(weights)!r} is damaged: its SHA-256 is {found}, not {recorded} as recorded when it was saved"
    ), err
    assert not (tmp_path / "out").exists()
