"""Run by tests/hf/test_sweeps.py under torchrun --nproc_per_node 2: both sweeps on sharded data, rank 0 writes."""

import sys
from pathlib import Path

import torch
from transformers import DataCollatorForSeq2Seq, MarianMTModel, PreTrainedTokenizerFast

from ls_seq.hf.sweeps import beam_search_sweep, shard_indices, teacher_forced_sweep
from ls_seq.io import atomic_write_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hf"))  # the data of tests/hf/test_sweeps.py
from test_sweeps import SOURCES, TARGETS, TEMPS

out = Path(sys.argv[1])
torch.distributed.init_process_group("gloo")
tok = PreTrainedTokenizerFast.from_pretrained(str(out / "tok"))
model = MarianMTModel.from_pretrained(str(out / "model")).eval()
collator = DataCollatorForSeq2Seq(tok, model=model)
idx = shard_indices(len(SOURCES))  # rank 0: 4 sentences, rank 1: 3
feats = [{"input_ids": tok(SOURCES[i])["input_ids"], "labels": tok(TARGETS[i])["input_ids"]} for i in idx]
batches = [collator(feats[s : s + 3]) for s in range(0, len(feats), 3)]
values = teacher_forced_sweep(model, batches, TEMPS, progress=False).compute()  # synced over both ranks
hyps = beam_search_sweep(model, tok, SOURCES, [1.0, 2.0], num_beams=3, batch_size=4, max_new_tokens=8, progress=False)
if torch.distributed.get_rank() == 0:
    atomic_write_json(
        out / "ddp.json",
        {
            **{k: torch.atleast_1d(values[k]).tolist() for k in ("nll", "ece", "accuracy", "n_tokens")},
            "translations": {repr(t): h for t, h in hyps.items()},
        },
    )
torch.distributed.destroy_process_group()
