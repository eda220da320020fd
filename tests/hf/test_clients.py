"""Real clients: TRL's SFTTrainer (prompt/completion data, completion-only loss) with ls-seq's loss and
calibration metrics, and a peft LoRA model trained with the fused loss.

References: one SGD step on ``F.cross_entropy(label_smoothing=0.1)`` over the completion tokens of the very
batches the client builds (aligned by hand), and TokenCalibration on their teacher-forced logits.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from _helpers.families import family_collate, family_dataset, family_examples, family_model, sgd_reference
from _helpers.tiny import IGNORE, tiny_tokenizer, training_args

from ls_seq.calibration.metric import TokenCalibration
from ls_seq.hf.compute_metrics import CalibrationComputeMetrics
from ls_seq.hf.loss_func import label_smoothing_loss_func
from ls_seq.hf.trainer import LabelSmoothingTrainer, LabelSmoothingTrainingArguments

trl = pytest.importorskip("trl")
peft = pytest.importorskip("peft")


def prompt_completion(n: int, seed: int):
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)

    def words(k):
        return " ".join(f"t{int(t)}" for t in torch.randint(3, 96, (k,), generator=g))

    rows = [
        (words(int(torch.randint(1, 5, (1,), generator=g))), " " + words(int(torch.randint(1, 6, (1,), generator=g))))
        for _ in range(n)
    ]
    return Dataset.from_dict({"prompt": [p for p, _ in rows], "completion": [c for _, c in rows]})


def test_sft_trainer_with_ls_seq_loss_and_calibration_metrics(tmp_path):
    from trl import SFTConfig, SFTTrainer

    base = family_model("llama", seed=2)
    model = copy.deepcopy(base)
    pair = CalibrationComputeMetrics(n_bins=10, temperatures=[0.8, 1.0, 1.25], model=model)
    config = SFTConfig(
        output_dir=str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        per_device_eval_batch_size=3,
        learning_rate=0.5,
        optim="sgd",
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        weight_decay=0.0,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=1,
        batch_eval_metrics=True,
        seed=0,
        bf16=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TRL deprecates compute_loss_func, still supports it
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=prompt_completion(8, 1),
            eval_dataset=prompt_completion(7, 2),
            processing_class=tiny_tokenizer(),
            compute_loss_func=label_smoothing_loss_func(0.1, model=model),
            **pair.trainer_kwargs(),
        )
    train = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    full = trainer.data_collator(train)  # the client's own batch: prompt tokens are -100
    assert bool((full["labels"] == IGNORE).any()) and bool((full["labels"] != IGNORE).any())
    ref = copy.deepcopy(base).train()
    logits = ref(input_ids=full["input_ids"], attention_mask=full["attention_mask"]).logits
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), full["labels"][:, 1:].reshape(-1), label_smoothing=0.1)
    loss.backward()
    trainer.train()
    params = dict(model.named_parameters())
    for name, p in ref.named_parameters():
        torch.testing.assert_close(params[name].detach(), (p - 0.5 * p.grad).detach(), rtol=1e-5, atol=1e-6, msg=name)

    metrics = trainer.evaluate()
    evals = trainer.data_collator([trainer.eval_dataset[i] for i in range(len(trainer.eval_dataset))])
    with torch.no_grad():
        logits = model.eval()(input_ids=evals["input_ids"], attention_mask=evals["attention_mask"]).logits
    metric = TokenCalibration(n_bins=10)
    metric.update(logits[:, :-1], evals["labels"][:, 1:])  # completion tokens only
    expected = metric.compute()
    assert metrics["eval_n_tokens"] == int((evals["labels"][:, 1:] != IGNORE).sum())
    assert metrics["eval_ece"] == pytest.approx(float(expected["ece"]), rel=1e-6)
    assert metrics["eval_nll"] == pytest.approx(float(expected["nll"]), rel=1e-6)


def test_peft_lora_model_with_the_fused_loss(tmp_path):
    """The fused loss inside a LoRA model's forward: the adapters get the gradient of the true loss."""
    from peft import LoraConfig, get_peft_model

    def lora(seed):
        torch.manual_seed(seed)
        cfg = LoraConfig(
            r=2,
            lora_alpha=4,
            target_modules=["q_proj", "v_proj"],
            lora_dropout=0.0,
            task_type="CAUSAL_LM",
            init_lora_weights=False,
        )
        return get_peft_model(family_model("llama", seed=2), cfg)

    base = lora(7)
    ref, _, _ = sgd_reference("llama", base, family_examples("llama", 16, seed=5), 0.1, 0.5)
    assert ref and all("lora_" in name for name in ref), "only the adapters train"
    for fused in (False, True):
        model = lora(7)
        args = training_args(
            str(tmp_path / str(fused)),
            cls=LabelSmoothingTrainingArguments,
            label_smoothing_factor=0.1,
            fused_linear_loss=fused,
            per_device_train_batch_size=4,
            gradient_accumulation_steps=4,
        )
        LabelSmoothingTrainer(
            model=model, args=args, train_dataset=family_dataset("llama", 16, seed=5), data_collator=family_collate("llama")
        ).train()
        params = dict(model.named_parameters())
        for name, expected in ref.items():
            torch.testing.assert_close(params[name].detach(), expected, rtol=1e-5, atol=1e-6, msg=f"fused={fused}: {name}")
