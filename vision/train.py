"""The one training loop of the vision studies: label smoothing or distillation, with accelerate.

Every study (projection, calibration, distillation, mutual information) trains through
:func:`train_classifier`, so the loss, the schedule and the checkpoints cannot drift between them.

* Loss: ``ls_seq.label_smoothed_cross_entropy(logits, y, alpha)`` (the paper's uniform convention), or,
  when a ``teacher`` is given, ``ls_seq.distillation_loss(student, teacher, y, temperature=T, beta=beta)``
  with the teacher's logits computed on the same augmented batch.
* Optimiser: SGD with (Nesterov) momentum and weight decay; the learning rate is multiplied by ``lr_gamma``
  at each fraction of training listed in ``lr_milestones`` (He et al.'s step schedule).
* Determinism and resume: the shuffling order, the augmentation and dropout of epoch ``e`` are seeded by
  ``(seed, e)``, and a checkpoint (model, optimiser, scheduler, history) is written atomically after every
  epoch, so an interrupted run resumed from its checkpoint ends with the same weights as an uninterrupted one.
  The previous epoch's checkpoint is kept (``checkpoint-prev.pt``): a checkpoint that fails its checks (size
  and SHA-256 recorded in its sidecar ``checkpoint.pt.ls_seq_checksum.json``, zip CRC, loadable, finite weights) is set aside as ``damaged-checkpoint.pt`` with a warning and the previous
  one is used.
* Non-finite training: the first optimizer step whose loss is NaN or infinite is recorded on the device
  (no host sync per step) and, with any non-finite weight, stops the run at the end of that epoch with
  :class:`ls_seq.errors.NonFiniteTrainingError` naming the epoch and the step, before its checkpoint is
  written: no checkpoint and no returned model holds a NaN.
* Measurement never changes the experiment: the per-epoch evaluation and the callbacks run inside
  :func:`ls_seq.rng.isolated_rng`, and every epoch reseeds its own streams, so a run with calibration or
  information callbacks trains bit for bit the model a run without them trains.
* Callbacks: objects with ``on_epoch_end(epoch, model) -> dict | None`` (and optionally
  ``on_train_begin(model) -> dict | None``, recorded as epoch 0); the numbers they return join the epoch's
  history entry, which is saved in the checkpoint, so a resumed run keeps them.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from ls_seq import distillation_loss, label_smoothed_cross_entropy
from ls_seq.checkpoints import (
    SIDECAR_SUFFIX,
    check_finite_weights,
    first_non_finite,
    first_verified,
    verify_file_checksum,
    verify_torch_archive,
    warn_not_checksummed,
    write_file_checksum,
)
from ls_seq.checks import (
    check_alpha,
    check_choice,
    check_positive_int,
    check_temperature,
)
from ls_seq.errors import CheckpointError, NonFiniteLossError
from ls_seq.functional.mixing import cutmix_box, mix_targets
from ls_seq.io import atomic_write_bytes
from ls_seq.rng import isolated_rng

__all__ = [
    "CHECKPOINT_NAME",
    "Outputs",
    "TrainCallback",
    "TrainConfig",
    "TrainResult",
    "collect_outputs",
    "train_classifier",
    "train_model",
]

CHECKPOINT_NAME = "checkpoint.pt"
PREVIOUS_CHECKPOINT_NAME = "checkpoint-prev.pt"


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (validated on construction).

    ``alpha`` is the label-smoothing strength for runs without a teacher; with a teacher, ``beta`` and
    ``temperature`` define the distillation loss and ``alpha`` must be 0 (the paper's students learn from the
    teacher alone, ``beta = 1``).
    """

    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    lr_milestones: tuple[float, ...] = (0.5, 0.75)
    lr_gamma: float = 0.1
    alpha: float = 0.0
    beta: float = 1.0
    temperature: float = 1.0
    t2_scaling: bool = False
    seed: int = 0
    mixed_precision: str = "no"
    cpu: bool = False
    eval_batch_size: int = 512
    num_workers: int = 0
    # MixUp / CutMix: Beta(a, a) parameter of the mixing weight (0: off); with both, each batch uses one of
    # them with probability 1/2 (timm's switch). Smoothing applies to the mixed target (mix_batch).
    mixup: float = 0.0
    cutmix: float = 0.0

    def __post_init__(self) -> None:
        check_positive_int(self.epochs, "epochs")
        check_positive_int(self.batch_size, "batch_size")
        check_positive_int(self.eval_batch_size, "eval_batch_size")
        check_positive_int(self.num_workers, "num_workers", minimum=0)
        check_positive_int(self.seed, "seed", minimum=0)
        for name in ("lr", "lr_gamma"):
            check_temperature(getattr(self, name), name)  # finite and > 0
        for name in ("momentum", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}")
        check_alpha(self.alpha, "alpha")
        check_alpha(self.beta, "beta")
        for name in ("mixup", "cutmix"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"`{name}` must be a finite number >= 0 (the Beta(a, a) parameter; 0: off), got {value!r}")
        check_temperature(self.temperature, "temperature")
        check_choice(self.mixed_precision, "mixed_precision", ("no", "fp16", "bf16"))
        milestones = tuple(self.lr_milestones)
        if any(not (0 < m < 1) for m in milestones) or list(milestones) != sorted(milestones):
            raise ValueError(f"`lr_milestones` must be increasing fractions of training in (0, 1), got {milestones}")
        object.__setattr__(self, "lr_milestones", milestones)


class TrainCallback(Protocol):
    """Reads the model after an epoch and returns numbers to record (or None)."""

    def on_epoch_end(self, epoch: int, model: nn.Module) -> dict[str, float] | None: ...


@dataclass
class TrainResult:
    """The trained model (unwrapped, in eval mode) and one history entry per epoch (epoch 0 = before training)."""

    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from_epoch: int = 0


@dataclass
class Outputs:
    """Model outputs over a dataset: ``logits (N, K)``, ``labels (N,)`` and optionally ``features (N, D)``."""

    logits: torch.Tensor
    labels: torch.Tensor
    features: torch.Tensor | None = None


class EpochSampler(Sampler[int]):
    """A random permutation seeded by ``(seed, epoch)``: the order of epoch ``e`` does not depend on the past."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch, 0))
        return iter(torch.randperm(self.n, generator=g).tolist())


def _epoch_seed(seed: int, epoch: int, stream: int) -> int:
    return (seed * 1_000_003 + epoch * 101 + stream) % (2**63)


@dataclass(frozen=True)
class MixedBatch:
    """A MixUp/CutMix batch: ``x`` mixed, each example with its partner ``permutation[i]``, weight ``lam`` on
    its own target; ``box`` (top, bottom, left, right) is the region pasted from the partner (CutMix)."""

    x: torch.Tensor
    permutation: torch.Tensor
    lam: float
    box: tuple[int, int, int, int] | None = None

    def targets(self, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        """``lam * onehot(y) + (1 - lam) * onehot(y[permutation])`` (:func:`ls_seq.functional.mixing.mix_targets`)."""
        return mix_targets(labels, num_classes, self.lam, self.permutation.to(labels.device))


def mixing_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of epoch ``epoch``'s mixing draws (its own stream: resume and determinism as for augmentation)."""
    return torch.Generator().manual_seed(_epoch_seed(seed, epoch, 3))


def mix_batch(x: torch.Tensor, mixup: float, cutmix: float, generator: torch.Generator) -> MixedBatch:
    """MixUp (``lam * x + (1 - lam) * x[perm]``) or CutMix (a box of ``x[perm]`` pasted, ``lam`` the area left),
    ``lam ~ Beta(a, a)``; with both ``a > 0`` one of the two per batch, with probability 1/2 each."""
    use_cutmix = cutmix > 0 and (mixup <= 0 or bool(torch.rand((), generator=generator) < 0.5))
    a = cutmix if use_cutmix else mixup
    import numpy as np  # torch's Beta sampler takes no generator; numpy's, seeded from this one, keeps the stream

    lam = float(np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator))).beta(a, a))
    permutation = torch.randperm(x.shape[0], generator=generator)
    partner = x[permutation.to(x.device)]
    if not use_cutmix:
        return MixedBatch(lam * x + (1 - lam) * partner, permutation, lam)
    top, bottom, left, right, lam = cutmix_box(x.shape[-2], x.shape[-1], lam, generator)
    mixed = x.clone()
    mixed[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
    return MixedBatch(mixed, permutation, lam, (top, bottom, left, right))


def _lr_factor(step: int, total_steps: int, milestones: Sequence[float], gamma: float) -> float:
    return gamma ** sum(step >= m * total_steps for m in milestones)


def _save_checkpoint(obj: Any, directory: str) -> None:
    """``torch.save`` into memory, keep the current checkpoint as the previous one, then one atomic write and
    its checksum sidecar (size and SHA-256 of the bytes written): a crash never leaves half a checkpoint, a
    damaged newest one has a fallback, and a sidecar present always describes the file beside it.

    Order: the previous sidecar goes, the current file and then its sidecar become the previous ones, the new
    file is written, then its sidecar. A crash between two steps leaves at worst a file without a sidecar
    (verified structurally, with a warning), never a sidecar that does not match its file.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    path = Path(directory, CHECKPOINT_NAME)
    previous = Path(directory, PREVIOUS_CHECKPOINT_NAME)
    sidecar, previous_sidecar = (p.with_name(p.name + SIDECAR_SUFFIX) for p in (path, previous))
    previous_sidecar.unlink(missing_ok=True)
    if path.exists():
        os.replace(path, previous)
        if sidecar.exists():
            os.replace(sidecar, previous_sidecar)
    sidecar.unlink(missing_ok=True)  # left without its file: it must not describe the new one
    atomic_write_bytes(path, data)
    write_file_checksum(path, hashlib.sha256(data).hexdigest())


def _verified_state(path: Path) -> dict[str, Any]:
    """The state saved at ``path``; :class:`CheckpointError` when its size or SHA-256 differ from its sidecar's,
    it is not a whole ``torch.save`` archive, does not load, lacks a field or holds non-finite weights (a
    checkpoint without a sidecar, of an older ls-seq, is checked without checksums and said so)."""
    verify_torch_archive(path)  # first: a truncated archive is named as such, not as a size mismatch
    checksummed = verify_file_checksum(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors have many types; all mean "damaged" here
        raise CheckpointError(f"{str(path)!r} is damaged: it does not load ({' '.join(str(exc).split())})") from exc
    missing = {"model", "optimizer", "epoch", "history", "config"} - set(state)
    if missing:
        raise CheckpointError(f"{str(path)!r} is damaged: it lacks {sorted(missing)}")
    bad = first_non_finite(state["model"].items())
    if bad is not None:
        raise CheckpointError(f"{str(path)!r} is damaged: weight {bad!r} holds NaN or inf")
    if not checksummed:
        warn_not_checksummed(path)
    return state


def _load_checkpoint(directory: str) -> dict[str, Any] | None:
    """The newest checkpoint in ``directory`` that passes its checks (``checkpoint.pt``, then
    ``checkpoint-prev.pt``), or None; a damaged one is renamed ``damaged-<name>`` with a warning."""
    found = first_verified([Path(directory, CHECKPOINT_NAME), Path(directory, PREVIOUS_CHECKPOINT_NAME)], _verified_state)
    return None if found is None else found[1]


def _config_key(config: TrainConfig, teacher: nn.Module | None) -> str:
    """What must match for a checkpoint to be resumed (batch geometry and loss, not the worker count)."""
    d = asdict(config)
    for k in ("eval_batch_size", "num_workers", "cpu"):
        d.pop(k)
    d["teacher"] = None if teacher is None else type(teacher).__name__
    return json.dumps(d, sort_keys=True)


@torch.no_grad()
def collect_outputs(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 512,
    features: bool = False,
    device: torch.device | str | None = None,
) -> Outputs:
    """Run ``model`` (eval mode, no augmentation) over ``dataset`` and return its logits, labels and features.

    ``features=True`` also returns the penultimate activations ``model.forward_features(x)``; the logits
    are then ``model.forward_head(features)``, so the two are consistent by construction.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    logits, labels, feats = [], [], []
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        x = x.to(device)
        if features:
            h = model.forward_features(x)  # (B, D)
            feats.append(h.float().cpu())
            z = model.forward_head(h)  # (B, K)
        else:
            z = model(x)
        logits.append(z.float().cpu())
        labels.append(y)
    model.train(was_training)
    return Outputs(torch.cat(logits), torch.cat(labels).long(), torch.cat(feats) if features else None)


def _evaluate(model: nn.Module, dataset: Dataset, batch_size: int) -> dict[str, float]:
    out = collect_outputs(model, dataset, batch_size=batch_size)
    nll = torch.nn.functional.cross_entropy(out.logits, out.labels)
    return {"eval_accuracy": float((out.logits.argmax(-1) == out.labels).float().mean()), "eval_nll": float(nll)}


def train_classifier(
    model: nn.Module,
    train_dataset: Dataset,
    config: TrainConfig,
    *,
    eval_dataset: Dataset | None = None,
    teacher: nn.Module | None = None,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    callbacks: Sequence[Any] = (),
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = True,
    description: str = "train",
) -> TrainResult:
    """Train ``model`` for ``config.epochs`` epochs, resuming from ``checkpoint_dir`` when it holds a checkpoint.

    Args:
        model: an ``nn.Module`` mapping images ``(B, C, H, W)`` to logits ``(B, K)``; trained in place.
        train_dataset: yields ``(image, label)``.
        config: :class:`TrainConfig`.
        eval_dataset: when given, ``eval_accuracy``/``eval_nll`` are recorded after every epoch.
        teacher: a trained model; switches the loss to ``distillation_loss`` (``config.alpha`` must be 0).
        augment: ``augment(x (B, C, H, W), generator) -> x`` applied to every training batch.
        callbacks: objects with ``on_epoch_end(epoch, model)`` (and optionally ``on_train_begin(model)``)
            returning a dict of floats for the history, or None.
        checkpoint_dir: where ``checkpoint.pt`` is written after each epoch; a checkpoint made with another
            config raises ``ValueError`` rather than silently mixing runs.
        progress: show a tqdm bar per epoch (main process only).

    Returns:
        :class:`TrainResult` with the unwrapped model in eval mode and the per-epoch history
        (``epoch, lr, train_loss, train_accuracy`` [+ eval and callback numbers]).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"`config` must be a TrainConfig, got {type(config).__name__}")
    if teacher is not None and not isinstance(teacher, nn.Module):
        raise TypeError(f"`teacher` must be a torch.nn.Module or None, got {type(teacher).__name__}")
    if teacher is not None and (config.mixup or config.cutmix):
        raise ValueError("`mixup`/`cutmix` apply to training without a teacher; distillation uses the teacher's targets")
    if teacher is not None and config.alpha != 0:
        raise ValueError(
            f"`config.alpha` must be 0 when a teacher is given (the student learns from the teacher), got {config.alpha}"
        )
    if len(train_dataset) == 0:
        raise ValueError("`train_dataset` must hold at least one example, got an empty dataset")
    for cb in callbacks:
        if not callable(getattr(cb, "on_epoch_end", None)):
            raise TypeError(f"every callback must define on_epoch_end(epoch, model), got {type(cb).__name__}")

    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=config.cpu)
    sampler = EpochSampler(len(train_dataset), config.seed)
    loader = DataLoader(
        train_dataset, batch_size=config.batch_size, sampler=sampler, num_workers=config.num_workers, drop_last=False
    )
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov and config.momentum > 0,
        weight_decay=config.weight_decay,
    )

    history: list[dict[str, float]] = []
    start_epoch = 0
    key = _config_key(config, teacher)
    state = _load_checkpoint(os.fspath(checkpoint_dir)) if checkpoint_dir is not None else None
    if state is not None:
        if state["config"] != key:
            raise ValueError(
                f"`checkpoint_dir` {os.fspath(checkpoint_dir)!r} holds a checkpoint of another run "
                f"(config {state['config']}, now {key}); use a fresh directory"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history = list(state["history"])
        start_epoch = int(state["epoch"])

    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    if teacher is not None:
        teacher = teacher.to(accelerator.device).eval()
    # the schedule is ours (not accelerate's), stepped once per optimiser step over the sharded loader
    total_steps = config.epochs * len(loader)

    def set_lr(step: int) -> float:
        # from config.lr, never from the param groups: a resumed optimiser holds the already-decayed rate
        lr = config.lr * _lr_factor(step, total_steps, config.lr_milestones, config.lr_gamma)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    unwrapped = accelerator.unwrap_model(model)
    if start_epoch == 0:
        entry: dict[str, float] = {"epoch": 0}
        with isolated_rng():  # measuring never changes the experiment (the epochs reseed too; this is the rule)
            for cb in callbacks:
                begin = getattr(cb, "on_train_begin", None)
                entry.update((begin(unwrapped) if begin is not None else None) or {})
            if eval_dataset is not None:
                entry.update(_evaluate(unwrapped, eval_dataset, config.eval_batch_size))
        history.append(entry)

    for epoch in range(start_epoch + 1, config.epochs + 1):
        # accelerate's loader re-sets the sampler's epoch from its own counter, which restarts at 0 on resume
        loader.set_epoch(epoch) if hasattr(loader, "set_epoch") else sampler.set_epoch(epoch)
        torch.manual_seed(_epoch_seed(config.seed, epoch, 1))  # dropout and any other global randomness
        aug_gen = torch.Generator().manual_seed(_epoch_seed(config.seed, epoch, 2))
        mix_gen = mixing_generator(config.seed, epoch)
        model.train()
        sum_loss = torch.zeros((), dtype=torch.float64, device=accelerator.device)
        n_correct = torch.zeros((), dtype=torch.float64, device=accelerator.device)
        # the first step of this epoch with a non-finite loss (-1: none), kept on the device: no sync per step
        first_bad_step = torch.full((), -1, dtype=torch.long, device=accelerator.device)
        n_seen = 0
        step = (epoch - 1) * len(loader)
        lr = set_lr(step)
        bar = tqdm(
            loader,
            desc=f"{description} epoch {epoch}/{config.epochs}",
            disable=not progress or not accelerator.is_local_main_process,
            leave=False,
        )
        for x, y in bar:
            if augment is not None:
                x = augment(x, aug_gen)
            mixed = mix_batch(x, config.mixup, config.cutmix, mix_gen) if config.mixup or config.cutmix else None
            logits = model(x if mixed is None else mixed.x)  # (B, K)
            if teacher is None:
                targets = y if mixed is None else mixed.targets(y, logits.shape[-1])  # (B,) or (B, K)
                loss = label_smoothed_cross_entropy(logits, targets, config.alpha)
            else:
                with torch.no_grad():
                    teacher_logits = teacher(x)  # (B, K), same augmented batch as the student
                loss = distillation_loss(
                    logits,
                    teacher_logits,
                    y,
                    temperature=config.temperature,
                    beta=config.beta,
                    t2_scaling=config.t2_scaling,
                )
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            step += 1
            first_bad_step = torch.where(
                (first_bad_step < 0) & ~torch.isfinite(loss.detach()), torch.full_like(first_bad_step, step), first_bad_step
            )
            lr = set_lr(step)
            sum_loss += loss.detach().double() * y.shape[0]
            n_correct += (logits.detach().argmax(-1) == y).double().sum()
            n_seen += y.shape[0]
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", refresh=False)
        bad = int(accelerator.gather(first_bad_step.unsqueeze(0)).max())  # one sync per epoch
        if bad >= 0:
            raise NonFiniteLossError(
                f"{description}: non-finite training loss at step {bad} (epoch {epoch}); the last checkpoint is "
                f"the one of epoch {epoch - 1}. Lower the learning rate or look for inf/NaN in the inputs",
                step=bad,
            )
        check_finite_weights(accelerator.unwrap_model(model), f"{description}: after epoch {epoch}", step=step)
        totals = accelerator.reduce(torch.stack([sum_loss, n_correct]), reduction="sum")
        n_total = accelerator.reduce(torch.tensor(float(n_seen), device=accelerator.device), reduction="sum")
        entry = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": float(totals[0] / n_total),
            "train_accuracy": float(totals[1] / n_total),
        }
        unwrapped = accelerator.unwrap_model(model)
        with isolated_rng():
            if eval_dataset is not None:
                entry.update(_evaluate(unwrapped, eval_dataset, config.eval_batch_size))
            for cb in callbacks:
                entry.update(cb.on_epoch_end(epoch, unwrapped) or {})
        history.append(entry)
        if checkpoint_dir is not None and accelerator.is_main_process:
            _save_checkpoint(
                {
                    "model": unwrapped.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch,
                    "history": history,
                    "config": key,
                },
                os.fspath(checkpoint_dir),
            )
        accelerator.wait_for_everyone()

    trained = accelerator.unwrap_model(model).eval()
    return TrainResult(model=trained, history=history, resumed_from_epoch=start_epoch)


def train_model(
    model_name: str,
    data: Any,
    config: TrainConfig,
    *,
    run_dir: str | os.PathLike | None = None,
    teacher: nn.Module | None = None,
    callbacks: Sequence[Any] = (),
    progress: bool = True,
    description: str | None = None,
) -> TrainResult:
    """Build ``model_name`` for ``data`` (a :class:`vision.data.VisionData`) and train it on ``data.train``.

    The initial weights are seeded by ``config.seed``; ``data.val`` is the per-epoch evaluation set and
    ``data.augment`` the training augmentation. ``run_dir`` holds the checkpoint (resumed when present).
    """
    from vision.models import create_model

    torch.manual_seed(config.seed)
    model = create_model(model_name, data.num_classes, data.in_channels, data.image_size)
    return train_classifier(
        model,
        data.train,
        config,
        eval_dataset=data.val,
        teacher=teacher,
        augment=data.augment,
        callbacks=callbacks,
        checkpoint_dir=run_dir,
        progress=progress,
        description=description or model_name,
    )
