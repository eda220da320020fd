"""Run under ``torchrun --nproc_per_node 2`` (gloo, CPU) by test_two_processes.py; rank 0 writes the results.

Usage: ``torchrun --standalone --nproc_per_node 2 ddp_checks.py OUT_DIR``. The checks share one launch
(process start-up is the expensive part):

1. ``TokenCalibration`` with every measure and an uneven split: the ranks hold 5 and 7 sequences.
2. One optimizer step of ``LabelSmoothingSeq2SeqTrainer`` with 2 ranks x batch 4 x 2 accumulation steps, and
   the same with the fused loss for Marian, GPT-2, Llama and a soft-capped Gemma 2 (``LabelSmoothingTrainer`` for
   the causal LMs); two steps of a Mixtral with its router loss, fused and not, against 1 process over the same
   micro-batches; the evaluation loss on 13 examples (uneven over 2 ranks x batch 4).
3. Calibration on an evaluation set of 13 examples (not a multiple of 2 ranks x batch 4) through each route:
   ``CalibrationCallback`` given the HF way (``callbacks=[...]``, no attach) to ls-seq's trainer (in-loop) and
   to a plain Seq2SeqTrainer (its own pass), and ``CalibrationComputeMetrics`` in a plain Trainer's loop.
4. Training after ``evaluate()`` (transformers then skips the DDP wrapper) raises instead of silently
   skipping the gradient all-reduce.
5. The fused loss under FSDP2 (``fully_shard``, gloo): the pieces the trainer's ``compute_loss`` uses
   (``model_io_of``, ``fused_output_layer``, the loss function's fused sums) on a model sharded per layer the way
   accelerate's transformer auto-wrap does it (``_no_split_modules``) and on one sharded as a whole, 2 ranks x
   batch 4 x 2 accumulation steps. accelerate does not run FSDP on CPU (FSDP v1: "no available devices found"; v2 with ``use_cpu``: DDP
   instead), so the Trainer's FSDP wiring is not run here; this checks what the fused path must get right inside it.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import PartialState

from _helpers.families import calibration_routes, family_collate, family_dataset, family_model, is_causal
from _helpers.tiny import CALIB_CLASSES, CALIB_SPLIT, TEMPERATURES, calibration_rows, tiny_dataset, training_args
from ls_seq.calibration.metric import TokenCalibration
from ls_seq.hf.trainer import (
    LabelSmoothingSeq2SeqTrainer,
    LabelSmoothingSeq2SeqTrainingArguments,
    LabelSmoothingTrainer,
    LabelSmoothingTrainingArguments,
)
from ls_seq.io import atomic_write_bytes, atomic_write_json

FUSED_FAMILIES = ("marian", "gpt2", "llama", "gemma2")
# Mixture of experts: its router loss is not a token mean, so 2 ranks are compared with 1 process over the
# same micro-batches (sequential sampling), fused and not.
MOE_RUNS = {"moe": {}, "moe_fused": {"fused_linear_loss": True, "fused_chunk_size": 7}}


def check_token_calibration(rank: int) -> dict:
    """Every measure; the ranks hold different numbers of whole sequences (5 and 7 rows), in updates of 2 sizes."""
    logits, labels = calibration_rows()
    mine = slice(0, CALIB_SPLIT) if rank == 0 else slice(CALIB_SPLIT, None)
    metric = TokenCalibration(n_bins=10, temperatures=TEMPERATURES, classes=CALIB_CLASSES)
    lg, lb = logits[mine], labels[mine]
    metric.update(lg[:2], lb[:2])
    metric.update(lg[2:], lb[2:])
    out = {k: v.tolist() for k, v in metric.compute().items()}
    out["reliability_count"] = metric.reliability()["count"].tolist()
    out["reliability_mass_count"] = metric.reliability("mass")["count"].tolist()
    return out


class SequentialTrainer(LabelSmoothingTrainer):
    """Examples in order: 2 ranks x batch 4 then take the micro-batches 1 process x 4 x 2 accumulation steps takes."""

    def _get_train_sampler(self, *args, **kwargs):
        return torch.utils.data.SequentialSampler(self.train_dataset)


def ls_trainer(out_dir: Path, name: str, family: str = "marian", cls=None, **overrides):
    """The trainer under test on a tiny model of ``family`` (seed 2) and 16 training examples (seed 5)."""
    causal = is_causal(family)
    args = training_args(
        str(out_dir / name),
        cls=LabelSmoothingTrainingArguments if causal else LabelSmoothingSeq2SeqTrainingArguments,
        label_smoothing_factor=0.1,
        **overrides,
    )
    cls = cls or (LabelSmoothingTrainer if causal else LabelSmoothingSeq2SeqTrainer)
    return cls(
        model=family_model(family, seed=2),
        args=args,
        train_dataset=family_dataset(family, 16, seed=5),
        data_collator=family_collate(family),
    )


def check_moe_step(out_dir: Path, name: str, world: int, **overrides) -> dict:
    """Two SGD steps of a Mixtral with its router loss: 2 ranks x batch 4, or 1 process x 4 x 2 accumulation."""
    trainer = ls_trainer(
        out_dir,
        name,
        "mixtral",
        cls=SequentialTrainer,
        max_steps=2,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2 // world,
        **overrides,
    )
    return train_and_save(trainer, out_dir / f"params_{name}.pt")


def error_of(fn, kind: type[Exception]) -> str:
    try:
        fn()
    except kind as err:
        return str(err)
    return "no error"


def train_and_save(trainer, path: Path) -> dict:
    trainer.train()
    if trainer.is_world_process_zero():
        atomic_write_bytes(path, io_bytes(dict(trainer.model.named_parameters())))
    return next(entry for entry in trainer.state.log_history if "loss" in entry)


def check_trainer_step(out_dir: Path) -> dict:
    trainer = ls_trainer(out_dir, "train", per_device_train_batch_size=4, gradient_accumulation_steps=2)
    return train_and_save(trainer, out_dir / "params.pt")


def check_fused_step(out_dir: Path, family: str) -> dict:
    """The fused loss inside the DDP-wrapped forward, 2 ranks x batch 4 x 2 accumulation steps."""
    trainer = ls_trainer(
        out_dir,
        f"fused_{family}",
        family,
        fused_linear_loss=True,
        fused_chunk_size=7,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
    )
    return train_and_save(trainer, out_dir / f"params_fused_{family}.pt")


def check_fsdp2_fused_step(out_dir: Path, family: str, wrap: str, rank: int, world: int) -> None:
    """One SGD step with the fused loss on an FSDP2-sharded model; rank 0 saves the gathered parameters.

    ``wrap``: ``"layers"`` shards each of ``model._no_split_modules`` and then the root (accelerate's
    transformer auto-wrap), ``"root"`` the root alone (its ``NO_WRAP`` policy)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from _helpers.families import family_examples
    from ls_seq.hf.loss_func import LabelSmoothingLossFunc
    from ls_seq.hf.model_io import model_io_of
    from ls_seq.hf.model_loss import ModelLoss

    model = family_model(family, seed=2).train()
    mio = model_io_of(model)
    mesh = init_device_mesh("cpu", (world,))
    for module in model.modules() if wrap == "layers" else ():
        if type(module).__name__ in model._no_split_modules:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    loss_fn = LabelSmoothingLossFunc(alpha=0.1)
    mine = family_examples(family, 16, seed=5)[rank * 8 : (rank + 1) * 8]
    batches = [family_collate(family)(mine[:4]), family_collate(family)(mine[4:])]
    scored = [mio.scored_labels(batch["labels"], None, loss_fn.ignore_index) for batch in batches]
    n_tokens = torch.tensor(float(sum(int((s != loss_fn.ignore_index).sum()) for s in scored)))
    dist.all_reduce(n_tokens)  # the token count of the whole accumulated batch, every rank
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model_loss = ModelLoss(mio, loss_fn)
    for batch in batches:
        inputs = mio.teacher_forcing_inputs({k: v for k, v in batch.items() if k != "labels"}, batch["labels"])
        if model_loss.needs_probe(True):  # an explicit-path model (Marian): does its loss add terms? (as the trainer)
            model_loss.probe(model, inputs, batch["labels"])
        with model_loss.forward(batch["labels"], denominator=n_tokens, fused=True, chunk_size=7) as record:
            outputs = model(**model_loss.model_inputs(inputs, record))  # the loss is computed inside the sharded forward
        (model_loss.total(outputs, record) * world).backward()  # FSDP averages the gradients over ranks
    optimizer.step()
    params = {n: p.full_tensor() for n, p in model.named_parameters()}  # every parameter still sharded
    if rank == 0:
        atomic_write_bytes(out_dir / f"params_fsdp2_{wrap}_{family}.pt", io_bytes(params))


def io_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    """``torch.save`` of the detached tensors, in memory (written atomically by the caller)."""
    buffer = io.BytesIO()
    torch.save({n: t.detach() for n, t in tensors.items()}, buffer)
    return buffer.getvalue()


def check_eval_loss(out_dir: Path) -> float:
    """13 examples: the last global batch of 2 ranks x 4 holds 3 samples accelerate repeats.

    A trainer of its own: in transformers 5.24, evaluate() before train() under DDP leaves the model
    unwrapped for training (no gradient all-reduce), so it must not share the trainer of the step check.
    """
    return ls_trainer(out_dir, "eval").evaluate(eval_dataset=tiny_dataset(13, seed=9))["eval_loss"]


def check_evaluate_then_train_is_refused(out_dir: Path) -> str:
    """transformers leaves the model without DDP when evaluate() precedes train(); the trainer must say so."""
    trainer = ls_trainer(out_dir, "evalfirst")
    trainer.evaluate(eval_dataset=tiny_dataset(8, seed=9))
    return error_of(trainer.train, RuntimeError)


def main() -> None:
    out_dir = Path(sys.argv[1])
    state = PartialState(cpu=True)  # gloo process group, the one the Trainer will use too
    assert state.num_processes == 2 and dist.is_initialized(), "run me with torchrun --nproc_per_node 2"
    results = {
        "world_size": state.num_processes,
        "token_calibration": check_token_calibration(state.process_index),
        "trainer_log": check_trainer_step(out_dir),
        "fused_logs": {family: check_fused_step(out_dir, family) for family in FUSED_FAMILIES},
        "eval_loss": check_eval_loss(out_dir),
        "moe_logs": {name: check_moe_step(out_dir, name, state.num_processes, **kw) for name, kw in MOE_RUNS.items()},
        "calibration": calibration_routes(out_dir),
        "evaluate_then_train_error": check_evaluate_then_train_is_refused(out_dir),
    }
    for family in FUSED_FAMILIES:
        for wrap in ("layers", "root"):
            check_fsdp2_fused_step(out_dir, family, wrap, state.process_index, state.num_processes)
    if state.is_main_process:
        atomic_write_json(out_dir / "results.json", results)
    state.wait_for_everyone()


if __name__ == "__main__":
    main()
