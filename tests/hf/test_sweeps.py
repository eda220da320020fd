"""Temperature sweeps against separate per-temperature passes, and their bookkeeping.

References: (1) for the teacher-forced sweep, one independent forward pass per temperature with NLL from
``torch.nn.functional.cross_entropy(logits / T)`` and ECE from a direct 15-bin histogram; (2) for the BLEU
sweep, one full ``generate(input_ids=...)`` call per temperature (encoder re-run each time).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    DataCollatorForSeq2Seq,
    LogitsProcessorList,
    MarianConfig,
    MarianMTModel,
)

from ls_seq.hf.generation import BeamSearchTemperature
from ls_seq.hf.sweeps import (
    beam_search_sweep,
    best_temperature,
    corpus_bleu,
    distinct_share,
    shard_indices,
    teacher_forced_sweep,
)
from ls_seq.io import read_json
from ls_seq.studies.en_de.tokenizer import train_joint_tokenizer

TEMPS = [0.5, 0.8, 1.0, 1.5, 3.0]
SOURCES = [
    "A man in a blue shirt.",
    "Two dogs play in the snow.",
    "A woman sings.",
    "Children run on a beach.",
    "An old man reads a newspaper outside.",
    "A dog.",
    "People walk down a busy street at night.",
]
TARGETS = [
    "Ein Mann in einem blauen Hemd.",
    "Zwei Hunde spielen im Schnee.",
    "Eine Frau singt.",
    "Kinder rennen am Strand.",
    "Ein alter Mann liest draußen eine Zeitung.",
    "Ein Hund.",
    "Menschen gehen nachts eine belebte Straße entlang.",
]
HERE = Path(__file__).resolve().parent


def tiny_setup(seed: int = 0, train_steps: int = 0):
    """A tokenizer trained on the toy pairs and a random 1+1-layer Marian model (d_model 16, no dropout).

    ``train_steps`` Adam steps on the seven pairs make beam search depend on the source and the temperature
    (8 steps: the beams differ across sentences and across ``TEMPS``; many more and the model is so sure
    that no temperature changes anything).
    """
    tok = train_joint_tokenizer((SOURCES + TARGETS) * 3, vocab_size=120)
    torch.manual_seed(seed)
    cfg = MarianConfig(
        vocab_size=len(tok),
        decoder_vocab_size=len(tok),
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=64,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        scale_embedding=True,
    )
    model = MarianMTModel(cfg).eval()
    with torch.no_grad():  # a peakier output layer, so temperatures change confidences and beams
        model.lm_head.weight.mul_(4.0)
    if train_steps:
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
        batch = batches(tok, model, range(7), batch_size=7)[0]
        for _ in range(train_steps):
            optimizer.zero_grad()
            model(**batch).loss.backward()
            optimizer.step()
        model.eval()
    return tok, model


def batches(tok, model, idx, batch_size=3):
    collator = DataCollatorForSeq2Seq(tok, model=model)
    feats = [{"input_ids": tok(SOURCES[i])["input_ids"], "labels": tok(TARGETS[i])["input_ids"]} for i in idx]
    return [collator(feats[s : s + batch_size]) for s in range(0, len(feats), batch_size)]


def reference_per_temperature(model, batch_list, temperature, n_bins=15):
    """NLL, ECE and accuracy at one temperature, computed directly from a fresh forward pass."""
    logits, labels = [], []
    with torch.no_grad():
        for b in batch_list:
            b = dict(b)
            lab = b.pop("labels")
            z = model(**b).logits.double()
            keep = lab != -100
            logits.append(z[keep]), labels.append(lab[keep])
    z, y = torch.cat(logits) / temperature, torch.cat(labels)
    nll = F.cross_entropy(z, y).item()
    p = z.softmax(-1)
    conf, pred = p.max(-1)
    correct = (pred == y).double()
    bins = (conf * n_bins).floor().clamp(max=n_bins - 1).long()
    ece = sum(abs(correct[bins == b].sum() - conf[bins == b].sum()).item() for b in range(n_bins)) / len(y)
    return nll, ece, correct.mean().item()


def test_teacher_forced_sweep_equals_one_pass_per_temperature():
    tok, model = tiny_setup()
    batch_list = batches(tok, model, range(len(SOURCES)))
    calls = []
    handle = model.register_forward_hook(lambda *a: calls.append(1))
    metric = teacher_forced_sweep(model, batch_list, TEMPS, progress=False)
    handle.remove()
    assert len(calls) == len(batch_list)  # one forward pass per batch for all five temperatures
    got = metric.compute()
    for k, t in enumerate(TEMPS):
        nll, ece, acc = reference_per_temperature(model, batch_list, t)
        torch.testing.assert_close(got["nll"][k].item(), nll, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got["ece"][k].item(), ece, rtol=0, atol=1e-5)
        torch.testing.assert_close(got["accuracy"][k].item(), acc, rtol=0, atol=1e-12)
    assert len({round(v, 6) for v in got["ece"].tolist()}) > 1  # the temperatures did change something


def test_teacher_forced_sweep_ignores_padding_and_batching():
    tok, model = tiny_setup()
    one = teacher_forced_sweep(model, batches(tok, model, range(7), batch_size=7), TEMPS, progress=False).compute()
    many = teacher_forced_sweep(model, batches(tok, model, range(7), batch_size=2), TEMPS, progress=False).compute()
    for key in ("nll", "ece", "accuracy", "n_tokens"):
        torch.testing.assert_close(one[key], many[key], rtol=1e-6, atol=1e-9, msg=key)
    n_target_tokens = sum(len(tok(t)["input_ids"]) for t in TARGETS)  # padding excluded, </s> included
    assert float(one["n_tokens"].reshape(-1)[0]) == n_target_tokens


@pytest.mark.parametrize(("sort_by_length", "temperatures_per_call"), [(False, 1), (True, 1), (True, 2), (False, 5)])
def test_beam_search_sweep_equals_separate_generate_calls(sort_by_length, temperatures_per_call):
    """Whatever the batching (sorted by length or not) and however many temperatures share a generate call
    (groups of 2 over 5 temperatures leave an uneven last group), each temperature's translations are those of
    one plain ``generate`` per batch in input order."""
    tok, model = tiny_setup(train_steps=8)
    encoder_calls = []
    handle = model.get_encoder().register_forward_hook(lambda *a: encoder_calls.append(1))
    seen = []
    got = beam_search_sweep(
        model,
        tok,
        SOURCES,
        TEMPS,
        num_beams=3,
        batch_size=4,
        max_new_tokens=8,
        progress=False,
        sort_by_length=sort_by_length,
        temperatures_per_call=temperatures_per_call,
        on_temperature=lambda t, hyps: seen.append((t, len(hyps))),
    )
    handle.remove()
    # The encoder ran once per batch of 4 // temperatures_per_call sentences, not once per temperature.
    assert len(encoder_calls) == -(-len(SOURCES) // max(1, 4 // temperatures_per_call))
    assert seen == [(t, len(SOURCES)) for t in TEMPS]  # reported as each temperature finished, in order
    for t in TEMPS:
        expected = []
        for s in range(0, len(SOURCES), 4):
            enc = tok(SOURCES[s : s + 4], padding=True, return_tensors="pt")
            out = model.generate(
                **enc,
                num_beams=3,
                do_sample=False,
                max_new_tokens=8,
                logits_processor=LogitsProcessorList([BeamSearchTemperature(t)]),
            )
            expected += tok.batch_decode(out, skip_special_tokens=True)
        assert got[t] == expected, t
    assert len({tuple(h) for h in got.values()}) >= 3  # the temperatures change the beams: a swap would show
    assert len(set(got[1.0])) >= 2


def test_block_temperatures_equal_one_processor_per_block():
    """The grouped sweep's processor, row block by row block, against ``BeamSearchTemperature`` (bit-equal)."""
    from ls_seq.hf.sweeps import _BlockTemperatures

    scores = torch.log_softmax(torch.randn(3 * 8, 50, generator=torch.Generator().manual_seed(0)), dim=-1)
    temps = [0.7, 1.0, 2.5]
    out = _BlockTemperatures(temps, 8, torch.device("cpu"))(torch.zeros(24, 1, dtype=torch.long), scores)
    for g, t in enumerate(temps):
        ref = BeamSearchTemperature(t)(torch.zeros(8, 1, dtype=torch.long), scores[g * 8 : (g + 1) * 8])
        assert torch.equal(out[g * 8 : (g + 1) * 8], ref), t
    with pytest.raises(RuntimeError, match="rows"):
        _BlockTemperatures(temps, 8, torch.device("cpu"))(torch.zeros(8, 1, dtype=torch.long), scores[:8])


def test_shards_cover_every_sample_once():
    for n in range(12):
        for world in (1, 2, 3, 4):
            shards = [shard_indices(n, r, world) for r in range(world)]
            assert sorted(i for s in shards for i in s) == list(range(n))


def test_bookkeeping_helpers():
    points = [
        {"temperature": 0.8, "nll": 2.0, "ece": 0.1},
        {"temperature": 1.0, "nll": 1.9, "ece": 0.1},
        {"temperature": 1.2, "nll": 2.1, "ece": 0.05},
    ]
    assert best_temperature(points, "nll") == 1.0 and best_temperature(points, "ece") == 1.2
    assert best_temperature(points[:2], "ece") == 0.8  # ties: the first
    assert distinct_share(["a", "a", "b", "a"]) == 0.5
    assert corpus_bleu(TARGETS, TARGETS) == pytest.approx(100.0)
    assert corpus_bleu(["x"] * len(TARGETS), TARGETS) < 1.0
    with pytest.raises(ValueError, match="hypotheses"):
        corpus_bleu(["a"], ["a", "b"])


@pytest.mark.distributed
def test_two_processes_give_the_one_process_sweeps(tmp_path):
    """torchrun, 2 gloo processes, 7 sentences (uneven shards): the same numbers and translations as here."""
    tok, model = tiny_setup()
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "tok")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(HERE.parent / "_helpers" / "sweeps_ddp.py"),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = read_json(tmp_path / "ddp.json")
    ref = teacher_forced_sweep(model, batches(tok, model, range(7)), TEMPS, progress=False).compute()
    for key in ("nll", "ece", "accuracy", "n_tokens"):
        torch.testing.assert_close(
            torch.tensor(got[key], dtype=torch.float64), torch.atleast_1d(ref[key]).double(), rtol=1e-6, atol=1e-9, msg=key
        )
    hyps = beam_search_sweep(model, tok, SOURCES, [1.0, 2.0], num_beams=3, batch_size=4, max_new_tokens=8, progress=False)
    assert got["translations"] == {"1.0": hyps[1.0], "2.0": hyps[2.0]}
