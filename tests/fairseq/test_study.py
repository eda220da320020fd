"""The fairseq EN-DE recipe end to end on a slice of Multi30k: its results.json in the HF study's schema (checked
against a results.json the HF recipe writes in the same session), its numbers against independent recounts,
resume, and its refusals of bad input before any work."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fairseq")

from ls_seq.io import read_json

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "fairseq_en_de.py"
HF_RECIPE = ROOT / "recipes" / "wmt_en_de.py"
MULTI30K_DIR = ROOT.parent / "shared" / "data" / "multi30k"  # as tests/conftest.py
TEMPS = ["0.8", "1.0", "1.5"]
CAL_TEMPS = ["0.9", "1.0", "1.1", "1.3"]


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def slice_args(data_dir, out, *extra):
    """Tens of seconds: 400 pairs, 30 updates of a 1+1-layer width-32 model, three temperatures, 48 test pairs,
    the calibration along training every 10 updates on 16 validation pairs (every interval checkpoint kept)."""
    return [
        "--preset",
        "tiny",
        "--data_dir",
        str(data_dir),
        "--output_dir",
        str(out),
        "--max_train_samples",
        "400",
        "--max_eval_samples",
        "48",
        "--max_bleu_samples",
        "24",
        "--max_steps",
        "30",
        "--save_steps",
        "10",
        "--warmup_steps",
        "5",
        "--logging_steps",
        "10",
        "--batch_size",
        "32",
        "--vocab_size",
        "1000",
        "--d_model",
        "32",
        "--ffn_dim",
        "64",
        "--attention_heads",
        "2",
        "--encoder_layers",
        "1",
        "--decoder_layers",
        "1",
        "--temperatures",
        *TEMPS,
        "--cpu_threads",
        "1",
        "--calibration_every",
        "10",
        "--calibration_samples",
        "16",
        "--calibration_temperatures",
        *CAL_TEMPS,
        "--fairseq_train_args",
        "--keep-interval-updates -1",
        *extra,
    ]


@pytest.fixture(scope="module")
def fairseq_run(tmp_path_factory):
    if not (MULTI30K_DIR / "train.en.gz").exists():
        pytest.skip(f"real Multi30k data not found at {MULTI30K_DIR}")
    out = tmp_path_factory.mktemp("fairseq_ende") / "run"
    results = _load(RECIPE, "fairseq_en_de").main(slice_args(MULTI30K_DIR, out))
    return {"out": out, "results": results}


@pytest.fixture(scope="module")
def hf_results(tmp_path_factory):
    """What the HF recipe writes for the same flags, on an even smaller run (2 steps, 8 test pairs): the schema."""
    if not (MULTI30K_DIR / "train.en.gz").exists():
        pytest.skip(f"real Multi30k data not found at {MULTI30K_DIR}")
    out = tmp_path_factory.mktemp("hf_ende") / "run"
    argv = slice_args(MULTI30K_DIR, out)
    argv = argv[: argv.index("--max_train_samples")] + [
        "--max_train_samples",
        "200",
        "--max_eval_samples",
        "16",
        "--max_bleu_samples",
        "4",
        "--max_steps",
        "2",
        "--save_steps",
        "2",
        "--warmup_steps",
        "1",
        "--logging_steps",
        "1",
        "--batch_size",
        "8",
        "--eval_batch_size",
        "8",
        "--vocab_size",
        "300",
        "--d_model",
        "16",
        "--ffn_dim",
        "32",
        "--attention_heads",
        "2",
        "--encoder_layers",
        "1",
        "--decoder_layers",
        "1",
        "--temperatures",
        *TEMPS,
        "--cpu_threads",
        "1",
        "--calibration_every",
        "1",
        "--calibration_samples",
        "8",
        "--calibration_temperatures",
        *CAL_TEMPS,
    ]
    _load(HF_RECIPE, "wmt_en_de").main(argv)
    return read_json(out / "results.json")


def _schema(value):
    """The shape of a JSON value: dict keys (recursively), list element shapes, and number/str/bool/null leaves."""
    if isinstance(value, dict):
        return {k: _schema(v) for k, v in value.items()}
    if isinstance(value, list):
        shapes = []
        for item in value:
            shape = _schema(item)
            if shape not in shapes:
                shapes.append(shape)
        return shapes
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return "null" if value is None else type(value).__name__


@pytest.mark.slow
def test_results_json_has_the_hf_studys_schema(fairseq_run, hf_results):
    """Every model entry and the Table-3 row have exactly the HF study's keys and value kinds; the config holds
    every HF key (plus the fairseq trainer's); versions add fairseq's."""
    got = read_json(fairseq_run["out"] / "results.json")
    assert set(got) == set(hf_results) == {"config", "versions", "models", "table3"}

    # The HF study's bootstrap intervals and replicates need per-token state; fairseq's validation logs carry
    # only the per-bin sums, so its entries have every other key.
    # The same holds for the points of the calibration along training (ece_low / ece_high: None here).
    def without_bootstrap(m):
        test = {k: v for k, v in m["test"].items() if not k.endswith("_interval") and k != "replicates"}
        along = m["calibration_along_training"]
        points = [{k: v for k, v in p.items() if k not in ("ece_low", "ece_high")} for p in along["points"]]
        # a step, or None when the model is not over-confident at its last point: either kind is the schema
        along = {"points": points, "overconfident_from_step": "step or None"}
        return {**{k: v for k, v in m.items() if k != "best_ece_replicates"}, "test": test, "calibration_along_training": along}

    assert all(p["ece_low"] is None for m in got["models"] for p in m["calibration_along_training"]["points"])
    got = {**got, "models": [without_bootstrap(m) for m in got["models"]]}
    hf_models = [without_bootstrap(m) for m in hf_results["models"]]
    assert all({"ece_interval", "accuracy_interval", "replicates"} <= set(m["test"]) for m in hf_results["models"])
    assert all("best_ece_replicates" in m for m in hf_results["models"])
    assert _schema(got["models"]) == _schema(hf_models)
    assert _schema(got["table3"]) == _schema(hf_results["table3"])
    hf_only = {"bf16"} - set(got["config"])  # the trainer's own switch; the fairseq study records fp16 beside it
    assert not hf_only and set(got["config"]) - set(hf_results["config"]) == {
        "trainer",
        "fp16",
        "ls_convention",
        "fairseq_train_args",
    }
    assert _schema({k: got["config"][k] for k in hf_results["config"]}) == _schema(hf_results["config"])
    assert set(got["versions"]) - set(hf_results["versions"]) == {"fairseq"}


@pytest.mark.slow
def test_recipe_end_to_end_writes_consistent_results(fairseq_run):
    from ls_seq.hf.sweeps import corpus_bleu, distinct_share
    from ls_seq.studies.en_de.data import load_corpora

    out, results = fairseq_run["out"], fairseq_run["results"]
    on_disk = read_json(out / "results.json")
    assert on_disk["models"] == results["models"] and [m["alpha"] for m in on_disk["models"]] == [0.0, 0.1]
    test = load_corpora(data_dir=MULTI30K_DIR, max_samples={"test": 48})["test"]
    # every target piece of the binarised test set plus one </s> per sentence, counted from the text
    token_lines = (out / "text" / "test.de").read_text(encoding="utf-8").splitlines()
    n_tokens = sum(len(line.split()) + 1 for line in token_lines)
    for m in on_disk["models"]:
        model_dir = out / f"alpha_{m['alpha']}"
        t = m["test"]
        assert t["n_tokens"] == n_tokens and sum(m["reliability"]["count"]) == pytest.approx(n_tokens)
        assert 0 <= t["ece"] <= 1 and 0 <= t["token_accuracy"] <= 1 and t["nll"] > 0
        assert [p["temperature"] for p in m["sweep"]] == [0.8, 1.0, 1.5]
        assert (m["sweep"][1]["nll"], m["sweep"][1]["ece"]) == (t["nll"], t["ece"])  # the T = 1 point is the test metric
        translations = (model_dir / "test_translations.txt").read_text(encoding="utf-8").split("\n")[:-1]
        assert len(translations) == 48
        assert t["bleu"] == corpus_bleu(translations, test.target)  # sacrebleu on the files, raw references
        assert m["sweep"][1]["bleu"] == corpus_bleu(translations[:24], test.target[:24])
        for p in (m["sweep"][0], m["sweep"][2]):
            hyps = (model_dir / "sweep" / f"T{p['temperature']!r}.txt").read_text(encoding="utf-8").split("\n")[:-1]
            assert len(hyps) == 24 and p["bleu"] == corpus_bleu(hyps, test.target[:24])
        assert m["source_check"]["share_distinct_outputs"] == distinct_share(translations)
        # the training summary is fairseq's log in nats: the last window (update 30) of the log file
        log = (model_dir / "checkpoints" / "train.log").read_text(encoding="utf-8")
        last = [line for line in log.splitlines() if line.startswith("{") and '"num_updates": "30"' in line][-1]
        assert m["train"]["steps"] == 30
        assert m["train"]["final_loss"] == pytest.approx(float(json.loads(last)["loss"]) * math.log(2), rel=1e-12)
        val = m["validation"]
        assert val["test_ece_at_best_ece_temperature"] == next(
            p["ece"] for p in m["sweep"] if p["temperature"] == val["best_ece_temperature"]
        )
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0] == "alpha,temperature,bleu,nll,ece" and len(rows) == 1 + 2 * 3
    report = (out / "report.md").read_text()
    assert "python recipes/fairseq_en_de.py" in report and '"fairseq": "0.12' in report
    for png in ("reliability.png", "temperature_sweep.png", "table3.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (
        on_disk["config"]["trainer"] == "fairseq" and "--criterion ls_seq_label_smoothed_cross_entropy" not in on_disk["config"]
    )


def _valid1_calibration(checkpoint: Path, data_dir: Path):
    """TokenCalibration of a fairseq checkpoint on ``valid1`` over CAL_TEMPS, from the model's own forward pass
    (fairseq's model and batches; the criterion and its sums are not used)."""
    import torch
    from fairseq import checkpoint_utils

    from ls_seq.calibration.metric import TokenCalibration
    from ls_seq_fairseq.evaluate import trusted_checkpoints

    with trusted_checkpoints():
        models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
            [str(checkpoint)], arg_overrides={"data": str(data_dir)}
        )
    model = models[0].eval()
    task.load_dataset("valid1", combine=False, epoch=1, task_cfg=cfg.task)
    batches = task.get_batch_iterator(dataset=task.dataset("valid1"), max_tokens=512).next_epoch_itr(shuffle=False)
    metric = TokenCalibration(n_bins=15, temperatures=[float(t) for t in CAL_TEMPS])
    with torch.no_grad():
        for sample in batches:
            logits = model(**sample["net_input"])[0]
            target = sample["target"].masked_fill(sample["target"] == task.target_dictionary.pad(), -100)
            metric.update(logits, target)
    return metric.compute()


@pytest.mark.slow
def test_calibration_along_training_equals_token_calibration_of_the_saved_checkpoints(fairseq_run):
    """Every point fairseq-train's validation logged (the criterion's sums, reduced by fairseq) equals a fresh
    TokenCalibration of the checkpoint saved at that update to 1e-5 (fairseq prints 6 significant digits);
    results.json, timings.json and the report show it as the HF study does."""
    from ls_seq.studies.trajectory import TrajectoryPoint, overconfident_from

    out = fairseq_run["out"]
    grid = [float(t) for t in CAL_TEMPS]
    i1 = grid.index(1.0)
    timings = read_json(out / "timings.json")
    for model in fairseq_run["results"]["models"]:
        along = model["calibration_along_training"]
        points = along["points"]
        assert [p["step"] for p in points] == [10, 20, 30]
        checkpoints = out / f"alpha_{model['alpha']}" / "checkpoints"
        for p in points:
            (ckpt,) = checkpoints.glob(f"checkpoint_*_{p['step']}.pt")
            ref = _valid1_calibration(ckpt, out / "data-bin")
            assert int(ref["n_tokens"][i1]) > 0
            assert p["ece"] == pytest.approx(float(ref["ece"][i1]), rel=1e-5, abs=1e-7)
            assert p["nll"] == pytest.approx(float(ref["nll"][i1]), rel=1e-5)
            assert p["accuracy"] == pytest.approx(float(ref["accuracy"][i1]), rel=1e-5, abs=1e-7)
            assert p["mean_confidence"] == pytest.approx(float(ref["mean_confidence"][i1]), rel=1e-5)
            assert p["best_ece_temperature"] == grid[int(ref["ece"].argmin())]
            assert p["best_nll_temperature"] == grid[int(ref["nll"].argmin())]
            assert p["epoch"] == pytest.approx(p["step"] / 13, abs=1e-3)  # 400 pairs in batches of 32: 13 updates
        assert along["overconfident_from_step"] == overconfident_from([TrajectoryPoint(**p) for p in points])
        entry = timings[f"alpha_{model['alpha']}"]
        assert 0 < entry["calibration_along_training_seconds"] < entry["train_seconds"]
        assert entry["calibration_share_of_training"] == pytest.approx(
            entry["calibration_along_training_seconds"] / entry["train_seconds"], abs=1e-4
        )
    report = (out / "report.md").read_text()
    assert "## Calibration along training (validation)" in report and "on 16 validation sentences" in report
    assert (out / "calibration_along_training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_data_directory_without_valid1_is_binarised_again_with_the_same_ids(data_bin, tmp_path):
    """A study directory binarised before ``valid1`` existed is rebuilt whole (the calibration along training
    validates on valid1); the dictionary comes from ``train`` alone, so every other subset's files are the
    same bytes as before."""
    from ls_seq_fairseq.data import SUBSETS, binarize, is_binarized

    old = tmp_path / "bin"
    shutil.copytree(data_bin.path, old)
    for path in old.glob("valid1.*"):
        path.unlink()
    assert not is_binarized(old) and is_binarized(data_bin.path)

    def files(directory):  # preprocess.log is fairseq's log of the run, not data
        return {p.name: p.read_bytes() for p in directory.iterdir() if p.name != "preprocess.log"}

    before = files(old)
    assert binarize(data_bin.path.parent / "text", old) == old and is_binarized(old)
    after = files(old)
    assert {name: after[name] for name in before} == before  # the dictionary and every other subset unchanged
    assert after == files(data_bin.path)  # valid1 too: what binarising from scratch gives
    assert set(SUBSETS) == {"train", "valid", "valid1", "test", "test1", "test2"}


@pytest.mark.slow
def test_resume_redoes_only_missing_stages(fairseq_run, tmp_path):
    """A run that lost one sweep point and its record resumes it alone and ends with the same results."""
    out = tmp_path / "run"
    shutil.copytree(fairseq_run["out"], out)
    kept = out / "alpha_0.0" / "calibration.json"
    stamp = kept.stat().st_mtime_ns
    (out / "alpha_0.1" / "sweep" / "T1.5.txt").unlink()
    (out / "alpha_0.1" / "evaluation.json").unlink()
    args = [a if a != str(fairseq_run["out"]) else str(out) for a in slice_args(MULTI30K_DIR, fairseq_run["out"])]
    resumed = _load(RECIPE, "fairseq_en_de").main([*args, "--resume"])
    assert kept.stat().st_mtime_ns == stamp  # not measured again
    assert (out / "alpha_0.1" / "sweep" / "T1.5.txt").is_file()
    assert resumed["models"] == read_json(fairseq_run["out"] / "results.json")["models"]
    assert resumed["config"]["resumed_with"][-1].endswith("--resume")


def _processes_writing(path: Path) -> list[int]:
    """Pids of the processes whose command line names ``path`` (Linux /proc)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(path) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(proc.name))
        except OSError:  # the process ended while we looked
            continue
    return pids


@pytest.mark.slow
@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc; the study's child-kill is Linux's PR_SET_PDEATHSIG"
)
def test_sigkill_during_training_leaves_no_training_behind_and_resumes_to_the_same_results(fairseq_run, tmp_path):
    """SIGKILL the study (one model: alpha 0) once it has a checkpoint: its fairseq-train child dies with it
    (nothing trains on into the directory), and ``--resume`` (fairseq resumes from checkpoint_last.pt) ends with
    the uninterrupted run's alpha-0 model entry, to the last digit."""
    out = tmp_path / "run"
    args = slice_args(MULTI30K_DIR, out, "--alphas", "0.0")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(RECIPE), *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 600
    try:
        while not list((out / "alpha_0.0" / "checkpoints").glob("checkpoint_*_10.pt")):
            if proc.poll() is not None:
                pytest.fail(f"the run ended ({proc.returncode}) before its first checkpoint: {proc.stderr.read()[-3000:]}")
            assert time.time() < deadline, "no checkpoint after 10 updates"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    deadline = time.time() + 30
    while _processes_writing(out) and time.time() < deadline:
        time.sleep(0.1)
    assert _processes_writing(out) == []  # fairseq-train died with the study
    assert not (out / "alpha_0.0" / "train_summary.json").exists()

    resumed = _load(RECIPE, "fairseq_en_de").main([*args, "--resume"])
    summary = read_json(out / "alpha_0.0" / "train_summary.json")
    assert summary["resumed_from"].startswith("checkpoint_last.pt (update ")
    reference = read_json(fairseq_run["out"] / "results.json")
    assert resumed["models"] == reference["models"][:1], f"resumed from {summary['resumed_from']}"


@pytest.mark.slow
def test_a_resume_in_a_later_epoch_trains_the_uninterrupted_model(fairseq_run, tmp_path):
    """Resumed from the mid-epoch checkpoint at update 20 (epoch 2 of the slice's 13-update epochs), the alpha-0
    model ends with the uninterrupted run's entry, to the last digit. fairseq 0.12 buckets the batches of an
    iterator built for epoch e with numpy seeded by ``seed + e`` and, by default, reuses epoch 1's iterator for
    every later epoch; a resumed run builds epoch 2's afresh, so its batches differed. The study passes
    ``--update-epoch-batch-itr``, which rebuilds the batches at every epoch in both runs."""
    out = tmp_path / "run"
    shutil.copytree(fairseq_run["out"], out)
    (out / "results.json").unlink()
    model = out / "alpha_0.0"
    checkpoints = model / "checkpoints"
    (checkpoints / "checkpoint_2_20.pt").replace(checkpoints / "checkpoint_last.pt")
    for path in [*checkpoints.glob("checkpoint_*_*.pt"), *checkpoints.glob("checkpoint_best.pt")]:
        path.unlink()
    for path in model.iterdir():
        if path.name != "checkpoints":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    args = [a if a != str(fairseq_run["out"]) else str(out) for a in slice_args(MULTI30K_DIR, fairseq_run["out"])]
    resumed = _load(RECIPE, "fairseq_en_de").main([*args, "--resume"])
    assert read_json(model / "train_summary.json")["resumed_from"] == "checkpoint_last.pt (update 20)"
    assert resumed["models"] == read_json(fairseq_run["out"] / "results.json")["models"]


@pytest.mark.slow
def test_a_resume_from_an_epochs_last_checkpoint_trains_the_uninterrupted_model(fairseq_run, tmp_path):
    """fairseq-train with the study's own flags, stopped at update 13 (the last of the slice's first epoch: its
    checkpoint holds epoch 2 at position 0) and run again to update 30, ends with the uninterrupted run's weights,
    every parameter bit for bit. Without ``--update-epoch-batch-itr`` they differed (by up to 2.9e-3, measured), and
    the study resumed from an earlier mid-epoch checkpoint instead."""
    import shlex

    import torch

    model = fairseq_run["out"] / "alpha_0.0"
    command = shlex.split(read_json(model / "train_summary.json")["command"])
    assert command[0] == "fairseq-train" and "--update-epoch-batch-itr" in command
    save_dir = tmp_path / "checkpoints"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    for updates in (13, 30):
        flags = [*command[1:], "--save-dir", str(save_dir), "--log-file", str(tmp_path / "train.log")]
        flags += ["--max-update", str(updates)]  # argparse: the last one counts
        subprocess.run([sys.executable, "-m", "fairseq_cli.train", *flags], env=env, check=True, capture_output=True)
        state = torch.load(save_dir / "checkpoint_last.pt", map_location="cpu", weights_only=False)
        assert state["optimizer_history"][-1]["num_updates"] == updates
        if updates == 13:
            assert state["extra_state"]["train_iterator"]["epoch"] == 2
            assert state["extra_state"]["train_iterator"]["iterations_in_epoch"] == 0
    reference = torch.load(model / "checkpoints" / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert reference["optimizer_history"][-1]["num_updates"] == 30
    assert state["model"].keys() == reference["model"].keys()
    for name, value in reference["model"].items():
        assert torch.equal(state["model"][name], value), name


@pytest.mark.parametrize(("preset", "arch"), [("base", "transformer_wmt_en_de"), ("big", "transformer_vaswani_wmt_en_de_big")])
def test_paper_presets_are_fairseqs_registered_transformers(tmp_path, preset, arch):
    """The study's fairseq-train flags for ``base``/``big`` describe exactly fairseq's own ``transformer_wmt_en_de``
    / ``transformer_vaswani_wmt_en_de_big`` (the paper's models). Reference: fairseq's parser given only the
    architecture name (and the shared embeddings the joint vocabulary needs)."""
    from fairseq import options

    from ls_seq.studies.en_de.presets import get_preset
    from ls_seq_fairseq.study import FairseqStudyArguments
    from ls_seq_fairseq.train import train_arguments

    args = FairseqStudyArguments(output_dir=str(tmp_path / "out"))
    flags = train_arguments(0.1, get_preset(preset), preset, tmp_path / "data", tmp_path / "ckpt", args)
    ours = vars(options.parse_args_and_arch(options.get_training_parser(), flags))
    plain = vars(
        options.parse_args_and_arch(
            options.get_training_parser(), [str(tmp_path / "data"), "--arch", arch, "--share-all-embeddings"]
        )
    )
    keys = [
        "arch",
        "encoder_layers",
        "decoder_layers",
        "encoder_embed_dim",
        "decoder_embed_dim",
        "encoder_ffn_embed_dim",
        "decoder_ffn_embed_dim",
        "encoder_attention_heads",
        "decoder_attention_heads",
        "dropout",
        "attention_dropout",
        "activation_dropout",
        "activation_fn",
        "share_all_embeddings",
        "encoder_learned_pos",
        "decoder_learned_pos",
        "no_scale_embedding",
        "encoder_normalize_before",
        "decoder_normalize_before",
    ]
    assert {k: ours[k] for k in keys} == {k: plain[k] for k in keys}


# ------------------------------------------------------------------------------------------------------
# Bad input: refused before any work, nothing written


def _write_corpus(directory, n=12):
    directory.mkdir()
    for split in ("train", "val", "test_2016_flickr"):
        (directory / f"{split}.en").write_text("".join(f"a sentence {i}\n" for i in range(n)))
        (directory / f"{split}.de").write_text("".join(f"ein Satz {i}\n" for i in range(n)))
    return directory


@pytest.mark.parametrize(
    ("flags", "error", "message"),
    [
        (["--alphas", "0.0", "1.0"], ValueError, r"`alphas\[1\]` must be in \[0, 1\)"),
        (["--alphas", "0.1", "0.1"], ValueError, r"`alphas` must be distinct, got \[0.1, 0.1\]"),
        (["--temperatures", "1.0", "0"], ValueError, r"`temperatures\[1\]` must be finite and > 0"),
        (["--ls_convention", "hinton"], ValueError, r"`ls_convention` must be one of 'uniform', 'fairseq', got 'hinton'"),
        (["--warmup_steps", "0"], ValueError, r"`warmup_steps` must be an int >= 1, got 0"),
        (["--fairseq_train_args", "--max-tokens 'x"], ValueError, r"`fairseq_train_args` must be shell-quoted flags"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(tmp_path, flags, error, message):
    data, out = _write_corpus(tmp_path / "data"), tmp_path / "out"
    with pytest.raises(error, match=message):
        _load(RECIPE, "fairseq_en_de").main(["--data_dir", str(data), "--output_dir", str(out), *flags])
    assert not out.exists()


def test_a_flag_fairseq_train_does_not_know_is_its_argument_error_before_any_work(tmp_path, capsys):
    data, out = _write_corpus(tmp_path / "data"), tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        _load(RECIPE, "fairseq_en_de").main(
            ["--data_dir", str(data), "--output_dir", str(out), "--fairseq_train_args", "--no-such-flag 3"]
        )
    assert exit_info.value.code == 2 and "unrecognized arguments: --no-such-flag 3" in capsys.readouterr().err
    assert not out.exists()


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    """What ``python recipes/fairseq_en_de.py`` does (``sys.exit(run_main(main))``): exit code 2, one line."""
    from ls_seq.cli.runner import run_main

    data = _write_corpus(tmp_path / "data")
    recipe = _load(RECIPE, "fairseq_en_de")
    code = run_main(
        recipe.main, ["--data_dir", str(data), "--output_dir", str(tmp_path / "out"), "--alphas", "1.5"], prog="fairseq_en_de.py"
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("fairseq_en_de.py: error: `alphas[0]` must be in [0, 1), got 1.5")
    assert not (tmp_path / "out").exists()
