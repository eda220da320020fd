"""The one training loop: its loss against torch's own, resume equal to an uninterrupted run, callbacks, errors."""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from vision.data import BatchAugment, ImageTensorDataset
from vision.train import CHECKPOINT_NAME, TrainConfig, collect_outputs, train_classifier


def _toy(n: int = 48, k: int = 4, seed: int = 0) -> ImageTensorDataset:
    g = torch.Generator().manual_seed(seed)
    return ImageTensorDataset(torch.randn(n, 1, 4, 4, generator=g), torch.randint(0, k, (n,), generator=g))


def _mlp(k: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Dropout(0.2), nn.Linear(12, k))


def _one_step_config(**kw) -> TrainConfig:
    # one epoch of one full batch, plain SGD: the update is exactly w - lr * grad
    return TrainConfig(epochs=1, batch_size=48, lr=0.5, momentum=0.0, weight_decay=0.0, cpu=True, **kw)


def _no_dropout_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 4))


def _manual_step(model: nn.Module, loss_fn, lr: float) -> dict[str, torch.Tensor]:
    model = copy.deepcopy(model)
    loss = loss_fn(model)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return {name: p.detach() - lr * g for (name, p), g in zip(model.named_parameters(), grads)}


def test_label_smoothing_step_matches_torch_cross_entropy():
    data, model = _toy(), _no_dropout_mlp()
    # reference: torch's own label_smoothing (the paper's uniform convention), independent of ls_seq
    expected = _manual_step(model, lambda m: F.cross_entropy(m(data.images), data.labels, label_smoothing=0.2), 0.5)
    result = train_classifier(model, data, _one_step_config(alpha=0.2), progress=False)
    for name, p in result.model.named_parameters():
        assert_close(p.detach(), expected[name], rtol=1e-5, atol=1e-6)


def test_distillation_step_matches_the_soft_target_cross_entropy():
    data, student = _toy(), _no_dropout_mlp(seed=1)
    teacher = _no_dropout_mlp(seed=2).eval()
    t = 3.0

    def reference(m):
        soft = F.softmax(teacher(data.images).detach() / t, dim=-1)
        return -(soft * F.log_softmax(m(data.images) / t, dim=-1)).sum(-1).mean()

    expected = _manual_step(student, reference, 0.5)
    result = train_classifier(student, data, _one_step_config(temperature=t), teacher=teacher, progress=False)
    for name, p in result.model.named_parameters():
        assert_close(p.detach(), expected[name], rtol=1e-5, atol=1e-6)


class _Interrupt(Exception):
    pass


class _StopAfter:
    """Simulates a crash once ``epoch`` is reached (the epoch's checkpoint is not yet written)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, epoch, model):
        if epoch == self.epoch:
            raise _Interrupt
        return {"seen": float(epoch)}


class _Recorder:
    def on_train_begin(self, model):
        return {"seen": 0.0}

    def on_epoch_end(self, epoch, model):
        return {"seen": float(epoch)}


def test_resume_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    data = _toy(n=40)
    cfg = TrainConfig(epochs=3, batch_size=8, lr=0.1, lr_milestones=(0.5,), seed=5, cpu=True)
    aug = BatchAugment(padding=1, noise_std=0.1)
    straight = train_classifier(_mlp(), data, cfg, augment=aug, callbacks=[_Recorder()], progress=False)

    with pytest.raises(_Interrupt):
        train_classifier(_mlp(), data, cfg, augment=aug, callbacks=[_StopAfter(3)], checkpoint_dir=tmp_path, progress=False)
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)  # plain tensors and containers only
    assert state["epoch"] == 2
    resumed = train_classifier(
        _mlp(seed=9), data, cfg, augment=aug, callbacks=[_Recorder()], checkpoint_dir=tmp_path, progress=False
    )
    assert resumed.resumed_from_epoch == 2
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert_close(a, b, rtol=0, atol=0, msg=name)
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2, 3]
    assert [h["seen"] for h in straight.history] == [0.0, 1.0, 2.0, 3.0]
    assert_close(
        torch.tensor([h["train_loss"] for h in resumed.history[1:]]),
        torch.tensor([h["train_loss"] for h in straight.history[1:]]),
        rtol=0,
        atol=0,
    )
    # a finished run resumes to the same model without training
    again = train_classifier(_mlp(seed=7), data, cfg, augment=aug, checkpoint_dir=tmp_path, progress=False)
    assert again.resumed_from_epoch == 3
    assert_close(again.model[1].weight, straight.model[1].weight, rtol=0, atol=0)


def test_checkpoint_of_another_run_is_refused(tmp_path):
    data = _toy()
    train_classifier(_mlp(), data, TrainConfig(epochs=1, cpu=True), checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="holds a checkpoint of another run"):
        train_classifier(_mlp(), data, TrainConfig(epochs=1, alpha=0.1, cpu=True), checkpoint_dir=tmp_path, progress=False)


def test_step_schedule_and_evaluation_history():
    data = _toy()
    cfg = TrainConfig(epochs=4, batch_size=48, lr=0.2, lr_milestones=(0.5, 0.75), lr_gamma=0.1, cpu=True)
    result = train_classifier(_mlp(), data, cfg, eval_dataset=data, progress=False)
    # one step per epoch: after epoch e the next step's lr has seen the milestones at steps 2 and 3
    assert [round(h["lr"], 8) for h in result.history[1:]] == [0.2, 0.02, 0.002, 0.002]
    out = collect_outputs(result.model, data)
    acc = float((out.logits.argmax(-1) == out.labels).float().mean())
    assert result.history[-1]["eval_accuracy"] == pytest.approx(acc, abs=1e-9)
    assert result.history[-1]["eval_nll"] == pytest.approx(float(F.cross_entropy(out.logits, out.labels)), rel=1e-5)


def test_collect_outputs_features_are_consistent_with_logits():
    from vision.models import create_model

    model = create_model("digits_mlp", 4, 1, 4).eval()
    out = collect_outputs(model, _toy(), features=True, batch_size=7)
    assert_close(model.forward_head(out.features), out.logits, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(epochs=0), "`epochs`"),
        (dict(lr=-1.0), "`lr`"),
        (dict(alpha=1.5), "`alpha`"),
        (dict(temperature=0.0), "`temperature`"),
        (dict(lr_milestones=(0.75, 0.5)), "`lr_milestones`"),
        (dict(mixed_precision="fp8"), "`mixed_precision`"),
    ],
)
def test_bad_config_raises_naming_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_teacher_with_label_smoothing_is_ambiguous_and_refused(tmp_path):
    with pytest.raises(ValueError, match="`config.alpha` must be 0 when a teacher is given"):
        train_classifier(_mlp(), _toy(), TrainConfig(alpha=0.1), teacher=_mlp(), checkpoint_dir=tmp_path)
    assert not os.listdir(tmp_path)  # refused before anything was written


# ------------------------------------------------------------------------------------------------------
# Faults: a damaged checkpoint falls back to the previous epoch's; a NaN stops the run before it is saved


def test_a_damaged_checkpoint_is_set_aside_and_the_previous_epoch_resumes_to_the_same_weights(tmp_path):
    from _helpers.faults import truncate

    from ls_seq.errors import LsSeqWarning
    from vision.train import PREVIOUS_CHECKPOINT_NAME

    data, cfg = _toy(), TrainConfig(epochs=3, batch_size=16, lr=0.1, cpu=True)
    straight = train_classifier(_mlp(), data, cfg, progress=False)
    with pytest.raises(_Interrupt):
        train_classifier(_mlp(), data, cfg, callbacks=[_StopAfter(3)], checkpoint_dir=tmp_path, progress=False)
    sidecars = [f"{PREVIOUS_CHECKPOINT_NAME}.ls_seq_checksum.json", f"{CHECKPOINT_NAME}.ls_seq_checksum.json"]
    assert sorted(os.listdir(tmp_path)) == sorted([PREVIOUS_CHECKPOINT_NAME, CHECKPOINT_NAME, *sidecars])  # epochs 1, 2
    truncate(tmp_path / CHECKPOINT_NAME)  # the newest (epoch 2) is damaged
    with pytest.warns(LsSeqWarning, match=r"checkpoint\.pt' is damaged: not a whole torch\.save archive.*damaged-checkpoint\.pt"):
        resumed = train_classifier(_mlp(seed=9), data, cfg, checkpoint_dir=tmp_path, progress=False)
    assert resumed.resumed_from_epoch == 1  # from the previous epoch's checkpoint
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert "damaged-checkpoint.pt" in os.listdir(tmp_path)  # kept for inspection


def test_a_checkpoint_changed_behind_its_sidecar_is_named_and_the_previous_epoch_resumes_to_the_same_weights(tmp_path):
    """A whole, loadable, finite checkpoint.pt whose weights changed after it was saved: only its sidecar's SHA-256
    sees it (#25). Fails before #25's change: the changed weights were resumed and the final ones differed."""
    import hashlib

    from ls_seq.errors import LsSeqWarning

    data, cfg = _toy(), TrainConfig(epochs=3, batch_size=16, lr=0.1, cpu=True)
    straight = train_classifier(_mlp(), data, cfg, progress=False)
    with pytest.raises(_Interrupt):
        train_classifier(_mlp(), data, cfg, callbacks=[_StopAfter(3)], checkpoint_dir=tmp_path, progress=False)
    path = tmp_path / CHECKPOINT_NAME
    recorded, recorded_size = hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_size
    state = torch.load(path, weights_only=True)
    state["model"]["1.weight"].zero_()  # finite, and a valid archive with valid CRCs: a silent corruption
    torch.save(state, path)
    size, found = path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest()
    what = f"its SHA-256 is {found}, not {recorded}" if size == recorded_size else f"{size} bytes, {recorded_size} when"
    with pytest.warns(LsSeqWarning, match=rf"checkpoint\.pt' is damaged: {what}.*set aside"):
        resumed = train_classifier(_mlp(seed=9), data, cfg, checkpoint_dir=tmp_path, progress=False)
    assert resumed.resumed_from_epoch == 1
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_checkpoint_without_a_sidecar_resumes_with_one_warning(tmp_path):
    from ls_seq.errors import LsSeqWarning

    data, cfg = _toy(), TrainConfig(epochs=1, batch_size=16, lr=0.1, cpu=True)
    first = train_classifier(_mlp(), data, cfg, checkpoint_dir=tmp_path, progress=False)
    (tmp_path / f"{CHECKPOINT_NAME}.ls_seq_checksum.json").unlink()  # as an older ls-seq saved it
    with pytest.warns(LsSeqWarning, match=r"checkpoint\.pt' has no recorded checksums") as caught:
        again = train_classifier(_mlp(seed=4), data, cfg, checkpoint_dir=tmp_path, progress=False)
    assert len(caught) == 1 and again.resumed_from_epoch == 1
    assert torch.equal(again.model[1].weight, first.model[1].weight)


def test_nan_weights_in_a_checkpoint_are_caught_before_use(tmp_path):
    from ls_seq.checkpoints import write_file_checksum
    from ls_seq.errors import LsSeqWarning

    data, cfg = _toy(), TrainConfig(epochs=1, batch_size=16, lr=0.1, cpu=True)
    train_classifier(_mlp(), data, cfg, checkpoint_dir=tmp_path, progress=False)
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    state["model"]["1.weight"][0, 0] = float("nan")
    torch.save(state, tmp_path / CHECKPOINT_NAME)
    write_file_checksum(tmp_path / CHECKPOINT_NAME)  # a NaN saved as such, not a changed byte: the finite check sees it
    with pytest.warns(LsSeqWarning, match=r"weight '1\.weight' holds NaN"):
        again = train_classifier(_mlp(), data, cfg, checkpoint_dir=tmp_path, progress=False)
    assert again.resumed_from_epoch == 0  # no good checkpoint: trained from scratch
    assert all(torch.isfinite(p).all() for p in again.model.parameters())


class _NanAfter(nn.Module):
    """Outputs NaN logits from training step ``step`` on (an overflow)."""

    def __init__(self, inner: nn.Module, step: int) -> None:
        super().__init__()
        self.inner, self.step, self.calls = inner, step, 0

    def forward(self, x):
        out = self.inner(x)
        if self.training:
            self.calls += 1
            if self.calls >= self.step:
                out = out * float("nan")
        return out


def test_a_non_finite_loss_stops_training_naming_the_step_and_nothing_is_saved(tmp_path):
    from ls_seq.errors import NonFiniteLossError

    data = _toy()  # 48 examples, batch 16: 3 steps per epoch; step 5 is in epoch 2
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.1, cpu=True)
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss at step 5 \(epoch 2\)") as info:
        train_classifier(_NanAfter(_mlp(), step=5), data, cfg, checkpoint_dir=tmp_path, progress=False)
    assert info.value.step == 5
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())


class _DrawingCallback:
    """A measurement that draws from the global generators, as a calibration pass through a DataLoader does."""

    def on_train_begin(self, model):
        return {"drawn": float(torch.rand(()))}

    def on_epoch_end(self, epoch, model):
        next(iter(torch.utils.data.DataLoader(list(range(8)), batch_size=4, shuffle=True)))
        return {"drawn": float(torch.rand(()))}


def test_measuring_during_training_does_not_change_the_trained_weights():
    """#25: the same seed with and without per-epoch evaluation and a callback that draws random numbers gives
    bit-identical weights (reference: the unwatched run). Passes before #25's change too: every epoch already
    reseeded its own streams; the evaluations now also run inside ls_seq.rng.isolated_rng."""
    data, cfg = _toy(n=40), TrainConfig(epochs=3, batch_size=8, lr=0.1, seed=2, cpu=True)
    aug = BatchAugment(padding=1, noise_std=0.1)
    unwatched = train_classifier(_mlp(), data, cfg, augment=aug, progress=False)
    watched = train_classifier(
        _mlp(), data, cfg, augment=aug, eval_dataset=_toy(n=16, seed=1), callbacks=[_DrawingCallback()], progress=False
    )
    assert [h["epoch"] for h in watched.history] == [0, 1, 2, 3] and "eval_nll" in watched.history[-1]
    for (name, a), (_, b) in zip(unwatched.model.state_dict().items(), watched.model.state_dict().items()):
        assert torch.equal(a, b), name
