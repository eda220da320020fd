"""The same seed gives the same results twice on CPU; a different seed gives different ones.

Covers the two training loops of the project: the HF trainer (AdamW, a shuffled sampler, dropout on) and the
vision training function (SGD with Nesterov momentum, augmentation drawn from seeded generators).
"""

from __future__ import annotations

import torch
from _helpers.tiny import collate, tiny_config, tiny_dataset, training_args

from ls_seq.hf.trainer import LabelSmoothingSeq2SeqTrainer, LabelSmoothingSeq2SeqTrainingArguments


def _hf_run(tmp_path, seed: int):
    from transformers import MarianMTModel, set_seed

    set_seed(seed)
    config = tiny_config("marian")
    config.dropout = 0.2  # dropout draws random numbers on every step: the seed must govern them too
    model = MarianMTModel(config)
    args = training_args(
        str(tmp_path / f"run{seed}"),
        cls=LabelSmoothingSeq2SeqTrainingArguments,
        optim="adamw_torch",
        learning_rate=1e-2,
        max_steps=6,
        label_smoothing_factor=0.1,
        seed=seed,
    )
    trainer = LabelSmoothingSeq2SeqTrainer(model=model, args=args, train_dataset=tiny_dataset(40), data_collator=collate)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, losses


def test_hf_trainer_same_seed_same_parameters(tmp_path):
    params_a, losses_a = _hf_run(tmp_path / "a", seed=3)
    params_b, losses_b = _hf_run(tmp_path / "b", seed=3)
    params_c, _ = _hf_run(tmp_path / "c", seed=4)
    assert losses_a == losses_b and len(losses_a) == 6
    assert all(torch.equal(params_a[k], params_b[k]) for k in params_a)
    assert not all(torch.equal(params_a[k], params_c[k]) for k in params_a)


def _vision_run(seed: int):
    from vision.data import load_digits
    from vision.models import create_model
    from vision.train import TrainConfig, train_classifier

    data = load_digits(seed=0, max_train_samples=200)
    torch.manual_seed(seed)
    model = create_model("digits_cnn", data.num_classes, in_channels=data.in_channels, image_size=data.image_size)
    config = TrainConfig(epochs=2, batch_size=32, alpha=0.1, seed=seed, cpu=True)
    result = train_classifier(model, data.train, config, augment=data.augment, progress=False)
    return result.model.state_dict(), result.history


def test_vision_training_same_seed_same_parameters():
    params_a, history_a = _vision_run(0)
    params_b, history_b = _vision_run(0)
    params_c, _ = _vision_run(1)
    assert history_a == history_b
    assert all(torch.equal(params_a[k], params_b[k]) for k in params_a)
    assert not all(torch.equal(params_a[k], params_c[k]) for k in params_a)
