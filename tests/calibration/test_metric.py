"""TokenCalibration and the calibration schema: every measure against an independent reference on the same tokens.

References: torchmetrics' MulticlassCalibrationError (l1/l2/max), netcal's ECE (equal-width and equal-mass bins),
and brute-force numpy written here for the debiased ECE, Brier score, class-wise ECE, top-k calibration, the
sequence-level measure and the bootstrap. Properties: streaming equals one update of the concatenation, the
state does not grow with tokens, half precision equals its float32 upcast, a one-temperature grid keeps (1,).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassCalibrationError

from ls_seq import expected_calibration_error
from ls_seq.calibration.metric import TokenCalibration
from ls_seq.functional.bootstrap import poisson_weights, token_keys

IGNORE = -100
CLASSES = [0, 3, 5]


def rows(n_rows=24, v=12, seed=0, min_len=3, max_len=11):
    """Right-padded (B, L, V) logits and (B, L) labels of varied lengths; labels drawn from a warped softmax
    (sharper for some rows, flatter for others), so the model is over-confident in places and under- in others."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (n_rows,), generator=g)
    width = int(lengths.max())
    logits = 2.5 * torch.randn(n_rows, width, v, generator=g)
    warp = torch.where(torch.rand(n_rows, 1, 1, generator=g) < 0.5, 0.4, 2.0)
    labels = torch.multinomial(F.softmax(logits * warp, -1).reshape(-1, v), 1, generator=g).reshape(n_rows, width)
    labels[torch.arange(width)[None, :] >= lengths[:, None]] = IGNORE
    return logits, labels


def scored(logits, labels):
    keep = labels != IGNORE
    return logits[keep].double(), labels[keep]


def numpy_binned(conf, outcome, n_bins):
    """Per equal-width bin (floor(c * B), c = 1 in the last): count, summed confidence, summed outcome."""
    idx = np.minimum(np.floor(conf * n_bins).astype(int), n_bins - 1)
    return [
        np.array([x[idx == b].sum() if w else (idx == b).sum() for b in range(n_bins)])
        for w, x in ((False, conf), (True, conf), (True, outcome))
    ]


def numpy_ece(conf, outcome, n_bins):
    count, s, c = numpy_binned(conf, outcome, n_bins)
    return float(np.abs(c - s).sum() / len(conf))


def metric_of(logits, labels, **kwargs):
    metric = TokenCalibration(**kwargs)
    metric.update(logits, labels)
    return metric


def test_width_bins_against_torchmetrics_and_brute_force():
    logits, labels = rows()
    result = metric_of(logits, labels).compute()
    z, y = scored(logits, labels)
    probs = F.softmax(z, -1)
    for field, norm in (("ece", "l1"), ("rms", "l2"), ("mce", "max")):
        ref = MulticlassCalibrationError(num_classes=12, n_bins=15, norm=norm)(probs.float(), y)
        torch.testing.assert_close(result[field].float(), ref, rtol=1e-5, atol=1e-6, msg=field)
    conf, pred = probs.max(-1)
    assert float(result.ece) == pytest.approx(numpy_ece(conf.numpy(), (pred == y).double().numpy(), 15), rel=1e-6)
    torch.testing.assert_close(result.nll, F.cross_entropy(z, y), rtol=1e-6, atol=1e-7)
    assert int(result.n_tokens) == int((labels != IGNORE).sum())


def test_equal_width_and_equal_mass_against_netcal():
    """netcal's ECE with equal-interval bins is ours to 1e-6. Its equal-mass bins split at sample quantiles;
    ours merge a fine logit-spaced histogram (a fine bin is never split), so the two agree to 5e-3 here."""
    netcal = pytest.importorskip("netcal.metrics")
    logits, labels = rows(n_rows=300, v=12, seed=3)
    result = metric_of(logits, labels).compute()
    z, y = scored(logits, labels)
    probs, y = F.softmax(z, -1).numpy(), y.numpy()
    assert float(result.ece) == pytest.approx(netcal.ECE(bins=15).measure(probs, y), abs=1e-6)
    adaptive = netcal.ECE(bins=15, equal_intervals=False).measure(probs, y)
    assert abs(float(result.ece) - adaptive) > 1e-3, "the data must tell equal-mass from equal-width bins"
    assert float(result.ece_mass) == pytest.approx(adaptive, abs=5e-3)


def test_equal_mass_bins_hold_equal_shares():
    logits, labels = rows(n_rows=300, seed=4)
    metric = metric_of(logits, labels)
    count = metric.reliability("mass")["count"]
    n = float(metric.compute().n_tokens)
    assert count.sum() == n and float(count.max() - count.min()) <= 0.02 * n


def test_debiased_rms_against_kumar_et_al_formula():
    """Kumar, Liang & Ma (2019): per bin (c_mean - a_mean)^2 - a (1 - a) / (n_b - 1), weighted, floored at 0."""
    logits, labels = rows(n_rows=200, seed=5)
    metric = metric_of(logits, labels)
    result = metric.compute()
    z, y = scored(logits, labels)
    conf, pred = F.softmax(z, -1).max(-1)
    conf, correct = conf.numpy(), (pred == y).double().numpy()

    def debiased(assign, n_bins):
        total = 0.0
        for b in range(n_bins):
            sel = assign == b
            if sel.sum() < 2:
                continue
            acc, c = correct[sel].mean(), conf[sel].mean()
            total += sel.mean() * ((c - acc) ** 2 - acc * (1 - acc) / (sel.sum() - 1))
        return math.sqrt(max(total, 0.0))

    width = np.minimum(np.floor(conf * 15).astype(int), 14)
    assert float(result.rms_debiased) == pytest.approx(debiased(width, 15), rel=1e-6)
    # equal-mass: the bins of the merged reliability curve, recovered by each token's confidence rank
    mass_counts = metric.reliability("mass")["count"].numpy().astype(int)
    order = np.argsort(conf, kind="stable")
    assign = np.empty(len(conf), dtype=int)
    assign[order] = np.repeat(np.arange(15), mass_counts)
    assert float(result.rms_debiased_mass) == pytest.approx(debiased(assign, 15), rel=1e-5)
    assert float(result.rms_debiased) < float(result.rms), "the debiased estimate removes the sampling variance"


def test_brier_classwise_and_top_k_against_dense_formulas():
    logits, labels = rows(n_rows=40, seed=6)
    temps = [0.7, 1.0, 1.6]
    result = metric_of(logits, labels, temperatures=temps, classes=CLASSES, top_k=3).compute()
    z, y = scored(logits, labels)
    for i, t in enumerate(temps):
        p = F.softmax(z / t, -1)
        onehot = F.one_hot(y, 12).double()
        assert float(result.brier[i]) == pytest.approx(float(((p - onehot) ** 2).sum(-1).mean()), rel=1e-6)
        per_class = [numpy_ece(p[:, c].numpy(), (y == c).double().numpy(), 15) for c in CLASSES]
        assert float(result.classwise_ece[i]) == pytest.approx(float(np.mean(per_class)), rel=1e-6)
        top = p.topk(3, dim=-1)
        mass, hit = top.values.sum(-1).numpy(), (top.indices == y[:, None]).any(-1).double().numpy()
        assert float(result.topk_ece[i]) == pytest.approx(numpy_ece(mass, hit, 15), rel=1e-6)
        assert float(result.topk_accuracy[i]) == pytest.approx(hit.mean())
        assert float(result.topk_mass[i]) == pytest.approx(mass.mean(), rel=1e-6)


def test_sequence_level_calibration_against_a_loop_over_rows():
    logits, labels = rows(n_rows=60, v=5, seed=7, max_len=5)  # short rows over 5 classes: exact matches happen
    temps = [1.0, 2.0]
    result = metric_of(logits, labels, temperatures=temps).compute()
    for i, t in enumerate(temps):
        p_seq, exact, p_mean, token_acc = [], [], [], []
        for row_logits, row_labels in zip(logits, labels):
            keep = row_labels != IGNORE
            logp = F.log_softmax(row_logits[keep].double() / t, -1)
            lp = logp.gather(1, row_labels[keep][:, None]).sum()
            right = (row_logits[keep].argmax(-1) == row_labels[keep]).double()
            p_seq.append(float(lp.exp()))
            p_mean.append(float((lp / keep.sum()).exp()))
            exact.append(float(right.all()))
            token_acc.append(float(right.mean()))
        assert 0 < np.mean(exact) < 1
        assert float(result.sequence_ece[i]) == pytest.approx(numpy_ece(np.array(p_seq), np.array(exact), 15), rel=1e-6)
        assert float(result.sequence_token_ece[i]) == pytest.approx(
            numpy_ece(np.array(p_mean), np.array(token_acc), 15), rel=1e-6
        )
        assert float(result.exact_match[i]) == pytest.approx(np.mean(exact))
        assert int(result.n_sequences[i]) == 60


def test_bootstrap_interval_against_replicates_computed_here():
    """The streaming Poisson bootstrap equals ECE recomputed per replicate from the same token weights."""
    logits, labels = rows(n_rows=50, seed=8)
    result = metric_of(logits, labels, bootstrap_replicates=300, seed=11).compute()
    keep = labels != IGNORE
    row, col = keep.nonzero(as_tuple=True)
    weights = poisson_weights(token_keys(row, col, labels[keep], labels.shape[0]), 300, seed=11).double().numpy()
    z, y = scored(logits, labels)
    conf, pred = F.softmax(z, -1).max(-1)
    conf, correct = conf.numpy(), (pred == y).double().numpy()
    idx = np.minimum(np.floor(conf * 15).astype(int), 14)
    eces = []
    for w in weights:
        gaps = [abs((w * (correct - conf))[idx == b].sum()) for b in range(15)]
        eces.append(sum(gaps) / w.sum())
    low, high = np.quantile(eces, [0.025, 0.975])
    # ls-seq's confidences are float32, the reference's float64: 1e-6
    assert float(result.ece_low) == pytest.approx(low, rel=1e-6) and float(result.ece_high) == pytest.approx(high, rel=1e-6)
    assert float(result.ece_std) == pytest.approx(np.std(eces, ddof=1), rel=1e-6)
    nll = -F.log_softmax(z, -1).gather(1, y[:, None]).squeeze(1).numpy()
    for name, per_token in (("accuracy", correct), ("nll", nll)):
        values = [(w * per_token).sum() / w.sum() for w in weights]
        low, high = np.quantile(values, [0.025, 0.975])
        assert float(result[f"{name}_low"]) == pytest.approx(low, rel=1e-6), name
        assert float(result[f"{name}_high"]) == pytest.approx(high, rel=1e-6), name
    assert weights.mean() == pytest.approx(1.0, abs=0.02) and weights.var() == pytest.approx(1.0, abs=0.05)
    # a classic multinomial bootstrap of the same tokens gives about the same spread
    g = np.random.default_rng(0)
    classic = [numpy_ece(conf[s], correct[s], 15) for s in (g.integers(0, len(conf), len(conf)) for _ in range(400))]
    assert float(result.ece_std) == pytest.approx(np.std(classic), rel=0.3)


def test_any_batching_and_padding_give_the_same_state():
    """100 updates of single rows, padded to other widths, equal one update of the whole batch: every measure,
    the bootstrap included (its weights depend on the token, not on the batch)."""
    logits, labels = rows(n_rows=100, seed=9)
    temps = [0.8, 1.0, 1.3]
    whole = metric_of(logits, labels, temperatures=temps, classes=CLASSES)
    streaming = TokenCalibration(temperatures=temps, classes=CLASSES)
    sizes = set()
    for i in range(100):
        extra = i % 4  # a different padding width for every row
        row_logits = F.pad(logits[i : i + 1], (0, 0, 0, extra), value=float("nan"))
        row_labels = F.pad(labels[i : i + 1], (0, extra), value=IGNORE)
        streaming.update(row_logits, row_labels)
        sizes.add(sum(getattr(streaming, name).numel() for name in streaming._defaults))
    assert len(sizes) == 1 and sizes.pop() == streaming.state_size, "the state does not grow with tokens"
    a, b = whole.compute(), streaming.compute()
    assert a.keys() == b.keys() and len(a) >= 24
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-9, atol=1e-12, msg=key)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_equals_its_float32_upcast(dtype):
    logits, labels = rows(seed=10)
    half = logits.to(dtype)
    got = metric_of(half, labels, temperatures=[0.5, 1.0, 2.0]).compute()
    ref = metric_of(half.float(), labels, temperatures=[0.5, 1.0, 2.0]).compute()
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], rtol=0, atol=0, msg=key)


def test_temperature_grid_entry_equals_a_separate_pass():
    logits, labels = rows(seed=12)
    temps = [0.5, 1.0, 1.3, 2.0]
    sweep = metric_of(logits, labels, temperatures=temps)
    result = sweep.compute()
    for i, t in enumerate(temps):
        one = metric_of(logits / t, labels).compute()
        for key in one:
            if key.startswith("ece_") and key != "ece_mass":  # the bootstrap: a different draw of the same spread
                continue
            torch.testing.assert_close(result[key][i], one[key], rtol=1e-5, atol=1e-6, msg=f"{key} at T={t}")
    torch.testing.assert_close(sweep.temperatures, torch.tensor(temps, dtype=torch.float64))


def test_one_temperature_grid_keeps_its_shape_and_result_is_typed():
    logits, labels = rows(seed=13)
    grid = metric_of(logits, labels, temperatures=[1.5]).compute()
    assert all(v.shape == (1,) for v in grid.values())
    scalar = metric_of(logits, labels).compute()
    assert all(v.shape == () for v in scalar.values())
    assert scalar.ece is scalar["ece"] and "equal-width" not in scalar.describe("ece")
    assert grid.temperatures == (1.5,) and grid.best_temperature("nll") == 1.5
    with pytest.raises(AttributeError, match="no calibration field 'eces'"):
        _ = scalar.eces
    assert set(grid.to_dict()) == set(grid) | {"temperatures"}


def test_ece_functional_equals_the_metric():
    logits, labels = rows(seed=14)
    result = metric_of(logits, labels).compute()
    torch.testing.assert_close(result.ece, expected_calibration_error(logits, labels, 15))
    torch.testing.assert_close(result.mce, expected_calibration_error(logits, labels, 15, norm="max"))
    torch.testing.assert_close(result.rms, expected_calibration_error(logits, labels, 15, norm="l2"))


def test_reliability_is_consistent_with_compute():
    logits, labels = rows(seed=15)
    metric = metric_of(logits, labels, n_bins=12)
    rel, out = metric.reliability(), metric.compute()
    assert float(rel["count"].sum()) == float(out.n_tokens)
    ece = (rel["count"] * (rel["accuracy"] - rel["confidence"]).abs()).sum() / rel["count"].sum()
    torch.testing.assert_close(ece, out.ece)
    torch.testing.assert_close(rel["upper"] - rel["lower"], torch.full((12,), 1 / 12, dtype=torch.float64))
    nonempty = rel["count"] > 0
    assert (
        (rel["confidence"][nonempty] >= rel["lower"][nonempty]) & (rel["confidence"][nonempty] <= rel["upper"][nonempty])
    ).all()
    mass = metric.reliability("mass")
    ece_mass = (mass["count"] * (mass["accuracy"] - mass["confidence"]).abs()).sum() / mass["count"].sum()
    torch.testing.assert_close(ece_mass, out.ece_mass)
    assert float(metric.reliability("sequence")["count"].sum()) == float(out.n_sequences)
    with pytest.raises(ValueError, match="`binning` must be one of"):
        metric.reliability("quantile")


def test_measures_can_be_chosen_and_are_checked():
    logits, labels = rows(seed=16)
    small = metric_of(logits, labels, measures=["width"])
    assert sorted(small.compute()) == ["accuracy", "ece", "mce", "mean_confidence", "n_tokens", "nll", "rms", "rms_debiased"]
    assert small.state_size == 3 * 15 + 2 + 2
    with pytest.raises(ValueError, match="`measures` must be names from"):
        TokenCalibration(measures=["width", "calibration"])
    with pytest.raises(ValueError, match="needs `classes`"):
        TokenCalibration(measures=["classwise"])


def test_reset_and_compute_before_update():
    metric = TokenCalibration()
    with pytest.raises(RuntimeError, match="before any non-ignored token"), pytest.warns(UserWarning):
        metric.compute()
    logits, labels = rows(seed=17)
    metric.update(logits, labels)
    metric.reset()
    assert float(metric.tokens_n) == 0
    with pytest.raises(RuntimeError, match="update"):
        metric.reliability()


def test_import_ls_seq_loads_no_heavy_module():
    """`import ls_seq` costs little more than torch: torchmetrics, transformers & co. load on first use."""
    import subprocess
    import sys

    heavy = ("torchmetrics", "transformers", "datasets", "matplotlib", "evaluate", "accelerate")
    code = f"import sys, ls_seq; ls_seq.label_smoothed_cross_entropy; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
