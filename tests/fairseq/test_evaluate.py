"""``fairseq-generate`` at a temperature: T = 1 is plain ``fairseq-generate`` (the CLI, in its own process), and
fairseq's beam search renormalises the scaled logits, ``log_softmax(z / T)``, as ls-seq's HF sweep does."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("fairseq")

GEN = {"beam": 4, "max_len_b": 12, "batch_size": 8, "n_sentences": 24}  # 30 updates: short outputs suffice


def _bleu_line(path):
    return next(line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("Generate "))


def _scores(path):
    return [float(line.split("\t")[1]) for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("H-")]


def test_temperature_1_is_plain_fairseq_generate(trained, data_bin, tmp_path):
    """``--temperature 1`` gives the hypotheses, scores and BLEU of plain ``fairseq-generate`` run as a command
    (reference: the CLI's stdout), and the BLEU of the sweep's T = 1 point is that of plain generation."""
    from ls_seq_fairseq.evaluate import generate, read_hypotheses
    from ls_seq_fairseq.study import _detokenize, evaluation_from_fairseq

    ckpt, data = trained["checkpoint"], data_bin.path
    at_1 = generate(ckpt, data, "test2", tmp_path / "t1", temperature=1.0, **GEN)
    plain = generate(ckpt, data, "test2", tmp_path / "plain", temperature=None, **GEN)
    assert at_1 == plain and len(plain) == 24
    out_1, out_plain = tmp_path / "t1" / "generate-test2.txt", tmp_path / "plain" / "generate-test2.txt"
    assert _scores(out_1) == _scores(out_plain) and _bleu_line(out_1) == _bleu_line(out_plain)

    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "fairseq_cli.generate",
            str(data),
            "--path",
            str(ckpt),
            "--gen-subset",
            "test2",
            "--beam",
            "4",
            "--max-len-a",
            "0",
            "--max-len-b",
            "12",
            "--batch-size",
            "8",
            "--cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"},
    )
    assert cli.returncode == 0, cli.stderr[-3000:]
    (tmp_path / "cli.txt").write_text(cli.stdout, encoding="utf-8")
    assert read_hypotheses(tmp_path / "cli.txt", 24) == plain

    test = data_bin.splits["test"]
    text = _detokenize(data_bin.tokenizer, plain)
    ev = evaluation_from_fairseq({}, test, None, {1.0: _detokenize(data_bin.tokenizer, at_1)}, [1.0], 24)
    from ls_seq.hf.sweeps import corpus_bleu

    assert ev.sweep_bleu.bleu(1.0) == corpus_bleu(text, test.target[:24]) and ev.teacher_forced is None


def test_other_temperatures_change_the_search(trained, data_bin, tmp_path):
    """The flag acts: at T = 0.5 and 2 the hypotheses' scores differ from T = 1's."""
    from ls_seq_fairseq.evaluate import generate

    runs = {}
    for t in (0.5, 1.0, 2.0):
        generate(trained["checkpoint"], data_bin.path, "test2", tmp_path / repr(t), temperature=t, **GEN)
        runs[t] = _scores(tmp_path / repr(t) / "generate-test2.txt")
    assert runs[0.5] != runs[1.0] and runs[2.0] != runs[1.0]


def test_fairseq_beam_search_scores_are_log_softmax_of_scaled_logits(trained, data_bin):
    """What ``--temperature`` does in fairseq's beam search (sequence_generator.py, EnsembleModel.forward_decoder):
    the step's log-probabilities are ``log_softmax(z / T)``, renormalised, not ``log_softmax(z) / T``.
    Reference: the decoder's logits scaled and normalised by torch (1e-6)."""
    from fairseq import checkpoint_utils
    from fairseq.sequence_generator import EnsembleModel

    from ls_seq_fairseq.evaluate import trusted_checkpoints

    with trusted_checkpoints():
        models, _, task = checkpoint_utils.load_model_ensemble_and_task(
            [str(trained["checkpoint"])], arg_overrides={"data": str(data_bin.path)}
        )
    model = models[0].eval()
    task.load_dataset("test")
    sample = task.dataset("test").collater([task.dataset("test")[i] for i in range(4)])
    ensemble = EnsembleModel([model])
    ensemble.has_incremental = False  # decode the whole prefix each call, as the reference below does
    with torch.no_grad():
        encoder_out = ensemble.forward_encoder(sample["net_input"])
        prefix = sample["net_input"]["prev_output_tokens"][:, :3]
        for t in (0.5, 2.0):
            got, _ = ensemble.forward_decoder(prefix, encoder_out, [{}], temperature=t)  # (B, V)
            logits = model.decoder(prefix, encoder_out=encoder_out[0])[0][:, -1, :]  # (B, V)
            torch.testing.assert_close(got, F.log_softmax(logits / t, dim=-1), rtol=1e-6, atol=1e-6)
            assert not torch.allclose(got, F.log_softmax(logits, dim=-1) / t, atol=1e-3)


def test_read_hypotheses_refuses_an_incomplete_file(tmp_path):
    from ls_seq_fairseq.evaluate import read_hypotheses

    path = tmp_path / "generate-test.txt"
    path.write_text("S-1\ta b\nH-1\t-0.5\t▁ein ▁Hund\nH-0\t-0.1\t▁ein\n", encoding="utf-8")
    assert read_hypotheses(path, 2) == ["▁ein", "▁ein ▁Hund"]  # in id order, not file order
    with pytest.raises(ValueError, match=r"holds 2 hypotheses, expected ids 0..2 \(missing e.g. \[2\]\)"):
        read_hypotheses(path, 3)
