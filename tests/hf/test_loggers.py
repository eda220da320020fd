"""CalibrationCallback's reliability diagram reaches TensorBoard, Weights & Biases and MLflow as an image, read back
from each library's own files (offline: a TensorBoard event file, a W&B offline run, an MLflow ``file:`` store).

Both routes: ls-seq's trainer (its evaluation loop measures) and a plain Trainer with the callback only in
``callbacks=`` (its own pass, no ``attach``). The reference for the image is the PNG the callback saved in
``output_dir``; for the numbers, the metrics ``evaluate()`` returned.
"""

from __future__ import annotations

import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest
from _helpers.families import family_collate, family_dataset, family_model
from _helpers.tiny import training_args
from transformers import Seq2SeqTrainer, TrainerCallback, TrainingArguments

from ls_seq.hf.callbacks import CalibrationCallback
from ls_seq.hf.loggers import enabled_trackers
from ls_seq.hf.trainer import LabelSmoothingTrainer, LabelSmoothingTrainingArguments

GRID = [0.5, 1.0, 2.0]
N_EVAL = 13
TAG = "eval/reliability_diagram"


def make_trainer(route, tmp_path, report_to, **overrides):
    """A GPT-2 trainer on the ls-seq route, or a Marian Seq2SeqTrainer on the plain, attach-free route."""
    callback = CalibrationCallback(n_bins=10, temperatures=GRID)
    if route == "ls-seq":
        family, cls, args_cls = "gpt2", LabelSmoothingTrainer, LabelSmoothingTrainingArguments
        extra = {"label_smoothing_factor": 0.1}
    else:
        family, cls, args_cls, extra = "marian", Seq2SeqTrainer, None, {}
    args = training_args(str(tmp_path / "out"), cls=args_cls, report_to=report_to, **extra, **overrides)
    trainer = cls(
        model=family_model(family, seed=3),
        args=args,
        train_dataset=family_dataset(family, 8, 5),
        eval_dataset=family_dataset(family, N_EVAL, 11),
        data_collator=family_collate(family),
        callbacks=[callback],
    )
    return trainer, callback


def same_picture(png_a, png_b):
    a, b = matplotlib.image.imread(png_a), matplotlib.image.imread(png_b)
    assert a.shape == b.shape and a.shape[0] > 100, (a.shape, b.shape)
    np.testing.assert_allclose(a[..., :3], b[..., :3], atol=1 / 255)


def test_import_ls_seq_imports_no_tracker():
    code = (
        "import sys, ls_seq, ls_seq.hf.callbacks, ls_seq.hf.loggers, ls_seq.hf.trainer; "
        "print(sorted({'wandb', 'mlflow', 'tensorboard', 'tensorboardX'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"  # transformers 4.x prints a line about WANDB_MODE before it


@pytest.mark.parametrize("route", ["ls-seq", "plain"])
def test_tensorboard_event_file_holds_the_diagram_at_each_evaluation(route, tmp_path, monkeypatch):
    """Along training (evaluation at steps 1 and 2) and once more after it: one image per evaluation step."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # Where TensorBoardCallback writes: $TENSORBOARD_LOGGING_DIR in transformers 5, the `logging_dir` field in 4.x.
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    logging_dir = {"logging_dir": str(tmp_path / "tb")} if hasattr(TrainingArguments, "logging_dir") else {}
    trainer, callback = make_trainer(
        route, tmp_path, ["tensorboard"], max_steps=2, eval_strategy="steps", eval_steps=1, **logging_dir
    )
    trainer.train()
    metrics = trainer.evaluate()
    trainer.callback_handler.call_event("on_train_end", trainer.args, trainer.state, trainer.control)  # flush

    steps, ece = {}, None
    for events_file in (tmp_path / "tb").rglob("events.out.tfevents.*"):
        events = EventAccumulator(str(events_file), size_guidance={"images": 0})
        events.Reload()
        if TAG in events.Tags()["images"]:
            steps.setdefault(str(events_file.parent.relative_to(tmp_path / "tb")), []).extend(e.step for e in events.Images(TAG))
            image = events.Images(TAG)[-1]
            assert image.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n" and image.width > 100
        if "eval/ece" in events.Tags()["scalars"]:
            ece = events.Scalars("eval/ece")[-1].value
    # ls-seq's trainer hands the TensorBoard callback's writer over; the plain route writes beside it.
    steps = {where: sorted(found) for where, found in steps.items()}  # event files are read in no fixed order
    assert steps == {"." if route == "ls-seq" else "calibration": [1, 2, 2]}, steps
    if route == "ls-seq":  # the plain route's numbers reach log_history only (attach() sends them to the loggers)
        assert ece == pytest.approx(metrics["eval_ece"], rel=1e-6)
    assert callback.last_plot_path.endswith("eval_reliability_step2.png")


@pytest.mark.parametrize("route", ["ls-seq", "plain"])
def test_wandb_offline_run_holds_the_diagram(route, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")

    for name, value in {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path),
        "WANDB_SILENT": "true",
        "WANDB_PROJECT": "ls-seq-test",
        "WANDB_DISABLE_GIT": "true",
    }.items():
        monkeypatch.setenv(name, value)
    trainer, callback = make_trainer(route, tmp_path, ["wandb"])
    metrics = trainer.evaluate()
    wandb.finish()
    wandb.teardown()  # the next run in this process reads WANDB_DIR afresh

    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    (images,) = [p for p in (run_dir / "files" / "media" / "images").rglob("*.png")]
    same_picture(images, callback.last_plot_path)

    # The run's record file (protobuf records): the history entry names the image under its tag, beside the ECE
    # the Trainer logged on the ls-seq route.
    records = next(run_dir.glob("run-*.wandb")).read_bytes()
    assert TAG.encode() in records and images.name.encode() in records
    if route == "ls-seq":
        assert b"eval/ece" in records and metrics["eval_ece"] > 0


@pytest.mark.parametrize("route", ["ls-seq", "plain"])
def test_mlflow_file_store_holds_the_diagram_and_the_metric(route, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()  # file:///...
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "ls-seq-test")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store, in maintenance mode
    trainer, callback = make_trainer(route, tmp_path, ["mlflow"])
    try:
        metrics = trainer.evaluate()
        run_id = mlflow.active_run().info.run_id
    finally:
        mlflow.end_run()

    client = MlflowClient(uri)
    if route == "ls-seq":  # the plain route's numbers reach log_history only (attach() sends them to the loggers)
        ece = client.get_metric_history(run_id, "eval_ece")
        assert [m.step for m in ece] == [0] and ece[0].value == pytest.approx(metrics["eval_ece"], rel=1e-6)
    assert [a.path for a in client.list_artifacts(run_id, "eval")] == ["eval/eval_reliability_step0.png"]
    local = client.download_artifacts(run_id, "eval/eval_reliability_step0.png", str(tmp_path / "download"))
    with open(local, "rb") as got, open(callback.last_plot_path, "rb") as saved:
        assert got.read() == saved.read()


def test_which_trackers_are_enabled(tmp_path):
    class MyBoard(TrainerCallback):
        tb_writer = object()

    args = training_args(str(tmp_path), report_to=["mlflow", "codecarbon"])
    assert enabled_trackers(args) == {"mlflow"}
    assert enabled_trackers(training_args(str(tmp_path), report_to="none")) == set()
    assert enabled_trackers(args, callbacks=[MyBoard()]) == {"tensorboard"}  # the trainer's callbacks decide


def test_a_failing_tracker_is_a_warning_not_a_failed_evaluation(tmp_path):
    class BrokenWriter:
        def add_figure(self, tag, figure, global_step=None):
            raise OSError("disk full")

    class Board(TrainerCallback):
        tb_writer = BrokenWriter()

    trainer, _ = make_trainer("ls-seq", tmp_path, "none")
    trainer.add_callback(Board())
    with pytest.warns(UserWarning, match="could not log 'eval/reliability_diagram' to tensorboard: OSError: disk full"):
        metrics = trainer.evaluate()
    assert "eval_ece" in metrics
