"""The `token_ece` evaluate module loads offline from the installed package and equals TokenCalibration."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ls_seq.calibration.metric import TokenCalibration
from ls_seq.evaluate_metrics import token_ece_path


def test_token_ece_path_is_inside_the_installed_package():
    import ls_seq

    path = Path(token_ece_path())
    assert (path / "token_ece.py").is_file()
    assert Path(ls_seq.__file__).parent in path.parents


def test_evaluate_load_by_path_matches_token_calibration():
    evaluate = pytest.importorskip("evaluate")  # imported lazily: it takes seconds
    metric = evaluate.load(token_ece_path())  # offline: a local path, no hub lookup
    g = torch.Generator().manual_seed(0)
    lengths = [3, 7, 1, 5]  # examples of different lengths, one with padding labels
    logits = [torch.randn(n, 12, generator=g) * 3 for n in lengths]
    labels = [torch.randint(0, 12, (n,), generator=g) for n in lengths]
    labels[1][-2:] = -100
    for lg, lb in zip(logits[:2], labels[:2]):  # streaming (add) and one-shot (compute) inputs together
        metric.add(predictions=lg.tolist(), references=lb.tolist())
    out = metric.compute(
        predictions=[x.tolist() for x in logits[2:]], references=[y.tolist() for y in labels[2:]], n_bins=8, temperature=1.5
    )

    ref = TokenCalibration(n_bins=8, temperatures=[1.5])
    ref.update(torch.cat(logits), torch.cat(labels))
    expected = ref.compute()
    for name in ("ece", "mce", "rms", "nll", "accuracy", "mean_confidence"):
        assert out[name] == pytest.approx(float(expected[name].reshape(-1)[0]), rel=1e-5, abs=1e-7), name
    assert out["n_tokens"] == sum(lengths) - 2
    nll = torch.nn.functional.cross_entropy(torch.cat(logits) / 1.5, torch.cat(labels))
    assert out["nll"] == pytest.approx(float(nll), rel=1e-5)


def test_mismatched_shapes_are_reported():
    evaluate = pytest.importorskip("evaluate")
    metric = evaluate.load(token_ece_path())
    with pytest.raises(ValueError, match="predictions\\[0\\]"):
        metric.compute(predictions=[[[0.0, 1.0]] * 3], references=[[0, 1]])
