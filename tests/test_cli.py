"""The ``ls-seq calibrate`` command agrees with the library and refuses bad input before writing anything."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file

from ls_seq import fit_temperature
from ls_seq.cli import main
from ls_seq.metrics import TokenCalibration


def _save(tmp_path, **tensors):
    path = tmp_path / "logits.safetensors"
    save_file(tensors, str(path))
    return path


def test_calibrate_writes_what_the_metric_computes(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(4, 6, 9, generator=g)
    labels = torch.multinomial(torch.softmax(logits.view(-1, 9), -1), 1, generator=g).view(4, 6)
    labels[:, -2:] = -100
    path = _save(tmp_path, logits=logits, labels=labels)
    out_dir = tmp_path / "out"
    assert main(["calibrate", str(path), "--temperatures", "1.0", "2.0", "--output_dir", str(out_dir)]) == 0
    saved = json.loads((out_dir / "calibration.json").read_text())
    metric = TokenCalibration(temperatures=[1.0, 2.0])
    metric.update(logits, labels)
    expected = metric.compute()
    assert [row["ece"] for row in saved["sweep"]] == expected["ece"].tolist()
    assert saved["nll_optimal_temperature"] == fit_temperature(logits, labels)
    assert (out_dir / "reliability.png").stat().st_size > 0
    assert "NLL-optimal temperature" in capsys.readouterr().out


def test_calibrate_refuses_bad_input_and_writes_nothing(tmp_path, capsys):
    path = _save(tmp_path, logits=torch.randn(3, 4), labels=torch.tensor([0, 1, 7]))
    out_dir = tmp_path / "out"
    assert main(["calibrate", str(path), "--output_dir", str(out_dir)]) == 2
    assert "`labels` must be in [0, 4)" in capsys.readouterr().err
    assert main(["calibrate", str(path), "--temperatures", "0", "--output_dir", str(out_dir)]) == 2
    assert "must be finite and > 0" in capsys.readouterr().err
    assert main(["calibrate", str(tmp_path / "missing.safetensors")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not out_dir.exists()
