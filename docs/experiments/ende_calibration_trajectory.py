"""When does the hard-target EN-DE model become over-confident? Calibration of one model along its training.

Trains one ``tiny``-preset model (``LabelSmoothingSeq2SeqTrainer``, the study's optimizer and schedule) and
every ``--every`` steps measures, teacher-forced on the test split, the token NLL, the 15-bin ECE and
accuracy at T = 1, and the temperatures of the 0.8-2.0 grid with the lowest ECE and NLL. A best
temperature above 1 means over-confidence (the paper's hard-target finding). Writes ``--out`` (JSON) after
every measurement. Used for the "Training longer" section of docs/en_de.md:

    python docs/experiments/ende_calibration_trajectory.py --data_dir ../shared/data/multi30k \\
        --tokenizer outputs/en_de_tiny/tokenizer --alpha 0.0 --max_steps 3000 --every 250 --dropout 0.0 \\
        --out outputs/trajectory_a0_d0.json

``--tokenizer`` is the study's (``<output_dir>/tokenizer`` of a tiny run), so the model is the study's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import DataCollatorForSeq2Seq, MarianMTModel, TrainerCallback, set_seed

from ls_seq.hf.sweeps import best_temperature, teacher_forced_sweep
from ls_seq.hf.trainer import LabelSmoothingSeq2SeqTrainer
from ls_seq.io import atomic_write_json
from ls_seq.studies.en_de.data import _batches, _tokenize, load_corpora
from ls_seq.studies.en_de.presets import PAPER_TEMPERATURES, apply_overrides, build_model_config, get_preset
from ls_seq.studies.en_de.tokenizer import load_or_train_tokenizer
from ls_seq.studies.en_de.training import training_arguments

GRID = list(PAPER_TEMPERATURES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--tokenizer", required=True, help="the study's tokenizer directory")
    parser.add_argument("--alpha", type=float, default=0.0)
    parser.add_argument("--max_steps", type=int, default=3000)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--dropout", type=float, default=None, help="override the preset's 0.1")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    preset = apply_overrides(get_preset("tiny"), max_steps=args.max_steps, dropout=args.dropout)
    corpora = load_corpora(
        "multi30k",
        data_dir=args.data_dir,
        cache_dir=None,
        split_names={"train": "train", "validation": "val", "test": "test_2016_flickr"},
        max_samples={"train": None, "validation": None, "test": None},
    )
    tok = load_or_train_tokenizer(args.tokenizer, [], preset.vocab_size)
    train = _tokenize(corpora["train"], tok, preset.max_length)
    test = _tokenize(corpora["test"], tok, preset.max_length)
    set_seed(42)
    model = MarianMTModel(build_model_config(preset, len(tok), tok.pad_token_id, tok.eos_token_id))
    collator = DataCollatorForSeq2Seq(tok, model=model)
    test_batches = list(_batches(test, list(range(len(test))), collator, preset.eval_batch_size))
    log: list[dict] = []

    class Measure(TrainerCallback):
        def on_step_end(self, train_args, state, control, model=None, **kwargs):
            if state.global_step % args.every:
                return
            model.eval()
            values = teacher_forced_sweep(model, test_batches, GRID, n_bins=15, progress=False).compute()
            model.train()
            ece, nll, i1 = values["ece"].tolist(), values["nll"].tolist(), GRID.index(1.0)
            points = [{"temperature": t, "ece": e, "nll": n} for t, e, n in zip(GRID, ece, nll)]
            log.append(
                {
                    "step": state.global_step,
                    "epoch": round(float(state.epoch), 3),
                    "nll": nll[i1],
                    "ece": ece[i1],
                    "accuracy": float(values["accuracy"][i1]),
                    "best_ece_temperature": best_temperature(points, "ece"),
                    "best_nll_temperature": best_temperature(points, "nll"),
                }
            )
            print(json.dumps(log[-1]), flush=True)
            atomic_write_json(Path(args.out), log)

    train_args = training_arguments(
        args.alpha,
        preset,
        str(Path(args.out).with_suffix("")) + "_checkpoints",
        seed=42,
        logging_steps=100,
        save_strategy="no",
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = LabelSmoothingSeq2SeqTrainer(
        model=model,
        args=train_args,
        train_dataset=train,
        data_collator=collator,
        processing_class=tok,
        callbacks=[Measure()],
    )
    trainer.train()


if __name__ == "__main__":
    main()
