"""TokenCalibration: streaming equals one-shot, sweeps equal separate passes, torchmetrics agreement, state size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassCalibrationError

from ls_seq import expected_calibration_error
from ls_seq.metrics import TokenCalibration

IGNORE = -100


def _seq_batches(n_batches=4, v=17, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n_batches):
        t = 3 + i  # sequence lengths differ between batches
        logits = 2 * torch.randn(2, t, v, generator=g)
        labels = torch.randint(0, v, (2, t), generator=g)
        labels[:, -1] = IGNORE
        out.append((logits, labels))
    return out


def _flat(batches):
    v = batches[0][0].shape[-1]
    return torch.cat([b[0].reshape(-1, v) for b in batches]), torch.cat([b[1].reshape(-1) for b in batches])


def test_streaming_equals_one_shot_and_functional():
    batches = _seq_batches()
    streaming = TokenCalibration(n_bins=15)
    for logits, labels in batches:
        streaming.update(logits, labels)
    logits, labels = _flat(batches)
    one_shot = TokenCalibration(n_bins=15)
    one_shot.update(logits, labels)
    a, b = streaming.compute(), one_shot.compute()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a["ece"], expected_calibration_error(logits, labels, 15))
    torch.testing.assert_close(a["mce"], expected_calibration_error(logits, labels, 15, norm="max"))
    torch.testing.assert_close(a["rms"], expected_calibration_error(logits, labels, 15, norm="l2"))


def test_values_against_torch_and_torchmetrics():
    logits, labels = _flat(_seq_batches(v=9))
    metric = TokenCalibration()
    metric.update(logits, labels)
    out = metric.compute()
    keep = labels != IGNORE
    z, y = logits[keep], labels[keep]
    torch.testing.assert_close(out["nll"].float(), F.cross_entropy(z, y), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out["accuracy"].float(), (z.argmax(-1) == y).float().mean())
    torch.testing.assert_close(out["mean_confidence"].float(), F.softmax(z, -1).max(-1).values.mean(), rtol=1e-6, atol=1e-6)
    assert int(out["n_tokens"]) == int(keep.sum())
    ref = MulticlassCalibrationError(num_classes=9, n_bins=15, norm="l1")(F.softmax(z, -1), y)
    torch.testing.assert_close(out["ece"].float(), ref, rtol=1e-5, atol=1e-6)


def test_temperature_sweep_entry_equals_separate_pass():
    temps = [0.5, 1.0, 1.3, 2.0]
    batches = _seq_batches()
    sweep = TokenCalibration(temperatures=temps)
    for logits, labels in batches:
        sweep.update(logits, labels)
    result = sweep.compute()
    rel = sweep.reliability()
    assert result["ece"].shape == (4,) and rel["count"].shape == (4, 15)
    for i, t in enumerate(temps):
        single = TokenCalibration()
        for logits, labels in batches:
            single.update(logits / t, labels)
        one = single.compute()
        for key in one:
            torch.testing.assert_close(result[key][i], one[key], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(rel["count"][i], single.reliability()["count"])
    torch.testing.assert_close(sweep.temperatures, torch.tensor(temps, dtype=torch.float64))


def test_state_size_does_not_grow_with_tokens():
    metric = TokenCalibration(n_bins=10, temperatures=[1.0, 2.0])
    sizes = []
    for logits, labels in _seq_batches(n_batches=5):
        metric.update(logits, labels)
        sizes.append(sum(getattr(metric, name).numel() for name in metric._defaults))
    assert len(set(sizes)) == 1 and sizes[0] == 3 * 2 * 10 + 2 + 2


def test_reliability_is_consistent_with_compute():
    metric = TokenCalibration(n_bins=12)
    for logits, labels in _seq_batches():
        metric.update(logits, labels)
    rel, out = metric.reliability(), metric.compute()
    assert float(rel["count"].sum()) == float(out["n_tokens"])
    ece = (rel["count"] * (rel["accuracy"] - rel["confidence"]).abs()).sum() / rel["count"].sum()
    torch.testing.assert_close(ece, out["ece"])
    torch.testing.assert_close(rel["upper"] - rel["lower"], torch.full((12,), 1 / 12, dtype=torch.float64))
    nonempty = rel["count"] > 0
    assert ((rel["confidence"][nonempty] >= rel["lower"][nonempty]) & (rel["confidence"][nonempty] <= rel["upper"][nonempty])).all()


def test_bfloat16_within_tolerance_of_float32():
    logits, labels = _flat(_seq_batches(n_batches=6, v=50))
    a, b = TokenCalibration(), TokenCalibration()
    a.update(logits, labels)
    b.update(logits.bfloat16(), labels)
    ra, rb = a.compute(), b.compute()
    assert abs(float(ra["nll"] - rb["nll"])) < 0.02
    assert abs(float(ra["ece"] - rb["ece"])) < 0.02


def test_reset_and_compute_before_update():
    metric = TokenCalibration()
    with pytest.raises(RuntimeError, match="before any non-ignored token"), pytest.warns(UserWarning):
        metric.compute()
    logits, labels = _flat(_seq_batches())
    metric.update(logits, labels)
    metric.reset()
    assert float(metric.n_tokens) == 0
    with pytest.raises(RuntimeError, match="update"):
        metric.reliability()
