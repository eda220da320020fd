"""Figures to the experiment trackers a Trainer reports to: TensorBoard, Weights & Biases and MLflow.

The Trainer sends every logged number to the trackers ``report_to`` enables, but it has no way to send a
figure. :class:`TrackerFigures` does, for :class:`ls_seq.CalibrationCallback`'s reliability diagram: to
TensorBoard as an image (``add_figure``), to W&B as a ``wandb.Image`` in the run's history at the Trainer's
``train/global_step``, to MLflow as an image artifact of the active run. It logs only to a tracker that is both
enabled (a tracker callback among the trainer's, else ``args.report_to``) and running (the Trainer's tracker
callback has set it up), so it never starts a run of its own. The tracker libraries are imported only then:
``import ls_seq`` imports none of them.

What it does not do: log numbers (the Trainer already does), or talk to any other tracker.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

__all__ = ["TRACKERS", "TrackerFigures", "enabled_trackers"]

TRACKERS = ("tensorboard", "wandb", "mlflow")
# transformers' callback class of each tracker, by name, so that transformers.integrations is imported only when a
# trainer's callbacks are examined (it is then imported already).
_CALLBACK_CLASSES = {"TensorBoardCallback": "tensorboard", "WandbCallback": "wandb", "MLflowCallback": "mlflow"}


def enabled_trackers(args: Any, callbacks: list[Any] | None = None) -> set[str]:
    """The trackers of :data:`TRACKERS` a Trainer reports to.

    With the trainer's ``callbacks`` known: those whose transformers callback (or a subclass) is among them, and
    TensorBoard too where any callback holds a ``tb_writer``. Without: ``args.report_to`` (``"all"`` is every
    installed integration, as transformers reads it).
    """
    if callbacks is not None:
        found = set()
        for cb in callbacks:
            for klass in type(cb).__mro__:
                if klass.__name__ in _CALLBACK_CLASSES:
                    found.add(_CALLBACK_CLASSES[klass.__name__])
            if getattr(cb, "tb_writer", None) is not None:
                found.add("tensorboard")
        return found
    report_to = getattr(args, "report_to", None) or []
    if isinstance(report_to, str):
        report_to = [report_to]
    if "all" in report_to:
        from transformers.integrations import get_available_reporting_integrations

        report_to = get_available_reporting_integrations()
    return set(report_to) & set(TRACKERS)


def _tensorboard_dir(args: Any) -> str:
    """Where transformers' TensorBoardCallback writes: ``$TENSORBOARD_LOGGING_DIR`` (transformers 5), else
    ``args.logging_dir`` (4.x), else ``<output_dir>/runs``."""
    logdir = os.environ.get("TENSORBOARD_LOGGING_DIR") or getattr(args, "logging_dir", None)
    return os.path.expanduser(logdir) if logdir else os.path.join(args.output_dir, "runs")


class TrackerFigures:
    """Sends figures to the running trackers (main process only: call it where the figure is made).

    Examples:
        >>> figures = TrackerFigures()
        >>> figures.log(fig, "eval/reliability_diagram", step, png_path, args, trainer.callback_handler.callbacks)  # doctest: +SKIP
        ['tensorboard', 'wandb', 'mlflow']
    """

    def __init__(self) -> None:
        self._own_writer: Any = None  # a SummaryWriter of ours, only when the TensorBoard callback is unknown

    def log(self, figure: Any, tag: str, step: int, png_path: str, args: Any, callbacks: list[Any] | None = None) -> list[str]:
        """Log ``figure`` (a matplotlib Figure, also saved at ``png_path``) as ``tag`` at ``step``.

        ``callbacks``: the trainer's callbacks, or None where the trainer is unknown (then ``args.report_to``
        decides, and TensorBoard gets a writer of ours in ``<its log dir>/calibration``).
        Returns the trackers it logged to. A tracker that fails is a warning naming it, never a failed evaluation.
        The figure is closed afterwards.
        """
        logged: list[str] = []
        enabled = enabled_trackers(args, callbacks)
        for name in ("wandb", "mlflow", "tensorboard"):  # tensorboard last: add_figure closes the figure
            if name not in enabled:
                continue
            try:
                done = getattr(self, f"_{name}")(figure, tag, step, png_path, args, callbacks)
            except Exception as err:  # a tracker's own failure (network, disk) must not end the training run
                warnings.warn(f"could not log {tag!r} to {name}: {type(err).__name__}: {err}")
                continue
            if done:
                logged.append(name)
        import matplotlib.pyplot as plt

        plt.close(figure)
        return logged

    def _wandb(self, figure: Any, tag: str, step: int, png_path: str, args: Any, callbacks: list[Any] | None) -> bool:
        import wandb

        if wandb.run is None:  # WandbCallback sets the run up at the first log; nothing to log into before that
            return False
        # WandbCallback logs every value with "train/global_step" as its step metric; the image joins it there.
        wandb.run.log({tag: wandb.Image(png_path), "train/global_step": step})
        return True

    def _mlflow(self, figure: Any, tag: str, step: int, png_path: str, args: Any, callbacks: list[Any] | None) -> bool:
        import mlflow

        if mlflow.active_run() is None:  # MLflowCallback starts the run at its setup
            return False
        mlflow.log_artifact(png_path, artifact_path=os.path.dirname(tag) or None)
        return True

    def _tensorboard(self, figure: Any, tag: str, step: int, png_path: str, args: Any, callbacks: list[Any] | None) -> bool:
        writers = [cb.tb_writer for cb in callbacks or [] if hasattr(getattr(cb, "tb_writer", None), "add_figure")]
        if callbacks is None:
            if self._own_writer is None:
                from torch.utils.tensorboard import SummaryWriter

                # A directory of its own: TensorBoard reads one directory's event files in order and would miss
                # what a second writer adds to an older file.
                self._own_writer = SummaryWriter(os.path.join(_tensorboard_dir(args), "calibration"))
            writers = [self._own_writer]
        for writer in writers:
            writer.add_figure(tag, figure, global_step=step)
            if writer is self._own_writer:
                writer.flush()
        return bool(writers)

    def close(self) -> None:
        if self._own_writer is not None:
            self._own_writer.close()
            self._own_writer = None
