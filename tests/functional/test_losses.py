"""Label-smoothing losses against torch, a dense soft-target formula and fairseq's formula (restated)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ls_seq import (
    LabelSmoothedCrossEntropy,
    confidence_penalty_loss,
    distillation_loss,
    label_smoothed_cross_entropy,
)

IGNORE = -100


def _batch(b=3, t=5, v=11, pad_frac=0.3, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(b, t, v, generator=g)).to(dtype)
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[torch.rand(b, t, generator=g) < pad_frac] = IGNORE
    return logits, labels


def _dense_reference(logits, labels, alpha, prior=None, reduction="mean"):
    """Cross-entropy against an explicit dense smoothed target (the definition, in float64)."""
    v = logits.shape[-1]
    z = logits.reshape(-1, v).double()
    y = labels.reshape(-1)
    mask = y != IGNORE
    q = torch.full((v,), 1.0 / v, dtype=torch.float64) if prior is None else prior.double()
    target = alpha * q.expand(len(y), v).clone()
    target[mask, y[mask]] += 1 - alpha
    per = -(target * F.log_softmax(z, -1)).sum(-1) * mask
    if reduction == "none":
        return per.reshape(labels.shape)
    return per.sum() if reduction == "sum" else per.sum() / mask.sum()


def _fairseq_reference(logits, labels, epsilon):
    """fairseq's ``label_smoothed_nll_loss`` (criterions/label_smoothed_cross_entropy.py), restated, reduce=True."""
    lprobs = F.log_softmax(logits.reshape(-1, logits.shape[-1]).double(), -1)
    target = labels.reshape(-1, 1)
    pad_mask = target.eq(IGNORE)
    safe = target.masked_fill(pad_mask, 0)
    nll_loss = -lprobs.gather(dim=-1, index=safe).masked_fill(pad_mask, 0.0)
    smooth_loss = -lprobs.sum(dim=-1, keepdim=True).masked_fill(pad_mask, 0.0)
    eps_i = epsilon / (lprobs.size(-1) - 1)
    loss = (1.0 - epsilon - eps_i) * nll_loss + eps_i * smooth_loss
    return loss.sum(), nll_loss.sum()


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_uniform_equals_torch_cross_entropy(alpha, reduction):
    logits, labels = _batch()
    ours = label_smoothed_cross_entropy(logits, labels, alpha, reduction=reduction)
    ref = F.cross_entropy(logits.transpose(1, 2), labels, label_smoothing=alpha, reduction=reduction)
    if reduction == "none":  # torch leaves 0 at ignored positions too
        ref = ref * (labels != IGNORE)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_gradient_equals_torch_cross_entropy():
    logits, labels = _batch()
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    label_smoothed_cross_entropy(a, labels, 0.2).backward()
    F.cross_entropy(b.transpose(1, 2), labels, label_smoothing=0.2).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_prior_equals_dense_soft_target(reduction):
    logits, labels = _batch(v=13)
    prior = torch.distributions.Dirichlet(torch.ones(13)).sample()
    ours = label_smoothed_cross_entropy(logits, labels, 0.3, prior=prior, reduction=reduction)
    torch.testing.assert_close(ours.double(), _dense_reference(logits, labels, 0.3, prior, reduction), rtol=1e-5, atol=1e-5)


def test_uniform_prior_equals_no_prior():
    logits, labels = _batch()
    uniform = torch.full((11,), 1 / 11)
    torch.testing.assert_close(
        label_smoothed_cross_entropy(logits, labels, 0.1, prior=uniform), label_smoothed_cross_entropy(logits, labels, 0.1)
    )


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_fairseq_convention_equals_fairseq_formula(eps):
    logits, labels = _batch()
    loss, nll = label_smoothed_cross_entropy(logits, labels, eps, convention="fairseq", reduction="sum", return_nll=True)
    ref_loss, ref_nll = _fairseq_reference(logits, labels, eps)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(nll.double(), ref_nll, rtol=1e-5, atol=1e-4)


def test_fairseq_equals_uniform_with_rescaled_alpha():
    """1 - eps on the true class and eps/(V-1) elsewhere is uniform smoothing with alpha = eps V / (V - 1)."""
    logits, labels = _batch(v=11)
    eps = 0.1
    torch.testing.assert_close(
        label_smoothed_cross_entropy(logits, labels, eps, convention="fairseq"),
        label_smoothed_cross_entropy(logits, labels, eps * 11 / 10),
    )


def test_alpha_zero_is_nll_and_return_nll_is_nll():
    logits, labels = _batch()
    nll_ref = F.cross_entropy(logits.transpose(1, 2), labels)
    torch.testing.assert_close(label_smoothed_cross_entropy(logits, labels, 0.0), nll_ref)
    _, nll = label_smoothed_cross_entropy(logits, labels, 0.4, return_nll=True)
    torch.testing.assert_close(nll, nll_ref)


def test_all_ignored_gives_zero_loss_and_zero_gradient():
    logits, _ = _batch()
    labels = torch.full(logits.shape[:-1], IGNORE)
    x = logits.clone().requires_grad_()
    loss = label_smoothed_cross_entropy(x, labels, 0.1)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(x.grad) == 0


def test_padding_changes_nothing():
    """Adding padded positions (with arbitrary logits) leaves the mean loss and the real gradients unchanged."""
    logits, labels = _batch(pad_frac=0.0)
    extra = 100 * torch.randn(3, 4, 11)
    padded_logits = torch.cat([logits, extra], dim=1).requires_grad_()
    padded_labels = torch.cat([labels, torch.full((3, 4), IGNORE)], dim=1)
    x = logits.clone().requires_grad_()
    a = label_smoothed_cross_entropy(x, labels, 0.1)
    b = label_smoothed_cross_entropy(padded_logits, padded_labels, 0.1)
    a.backward()
    b.backward()
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(padded_logits.grad[:, :5], x.grad)
    assert torch.count_nonzero(padded_logits.grad[:, 5:]) == 0


def test_num_items_in_batch_makes_accumulation_exact():
    """Summing the losses of micro-batches, each divided by the total token count, equals the full-batch mean."""
    logits, labels = _batch(b=8)
    full = label_smoothed_cross_entropy(logits, labels, 0.1)
    n = int((labels != IGNORE).sum())
    parts = sum(
        label_smoothed_cross_entropy(logits[i : i + 2], labels[i : i + 2], 0.1, num_items_in_batch=torch.tensor(n))
        for i in range(0, 8, 2)
    )
    torch.testing.assert_close(parts, full)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_input_is_computed_in_float32(dtype):
    logits, labels = _batch(dtype=dtype)
    ours = label_smoothed_cross_entropy(logits, labels, 0.1)
    ref = F.cross_entropy(logits.float().transpose(1, 2), labels, label_smoothing=0.1)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_extreme_logits_stay_finite():
    logits, labels = _batch()
    logits = torch.sign(logits) * 1e4
    x = logits.clone().requires_grad_()
    loss = label_smoothed_cross_entropy(x, labels, 0.1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    torch.testing.assert_close(loss.double(), _dense_reference(logits, labels, 0.1), rtol=1e-5, atol=1e-2)


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 4),
    v=st.integers(2, 40),
    alpha=st.floats(0.0, 1.0),
    pad=st.floats(0.0, 0.9),
    seed=st.integers(0, 2**16),
)
def test_matches_dense_reference_property(b, v, alpha, pad, seed):
    logits, labels = _batch(b=b, t=3, v=v, pad_frac=pad, seed=seed)
    if not (labels != IGNORE).any():
        labels[0, 0] = 0
    ours = label_smoothed_cross_entropy(logits, labels, alpha)
    torch.testing.assert_close(ours.double(), _dense_reference(logits, labels, alpha), rtol=1e-5, atol=1e-5)


def test_module_equals_function():
    logits, labels = _batch()
    prior = torch.softmax(torch.randn(11), 0)
    module = LabelSmoothedCrossEntropy(0.2, prior=prior, reduction="sum")
    torch.testing.assert_close(
        module(logits, labels), label_smoothed_cross_entropy(logits, labels, 0.2, prior=prior, reduction="sum")
    )
    assert "alpha=0.2" in repr(module)


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_confidence_penalty_against_dense_formula(beta):
    logits, labels = _batch()
    log_p = F.log_softmax(logits.double(), -1)
    mask = labels != IGNORE
    nll = -log_p.gather(-1, labels.clamp_min(0)[..., None]).squeeze(-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    ref = ((nll - beta * entropy) * mask).sum() / mask.sum()
    torch.testing.assert_close(confidence_penalty_loss(logits, labels, beta).double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize("beta", [1.0, 0.3])
@pytest.mark.parametrize("t2_scaling", [False, True])
def test_distillation_against_dense_formula(temperature, beta, t2_scaling):
    student, labels = _batch()
    teacher = 2 * torch.randn_like(student)
    mask = labels != IGNORE
    p_t = F.softmax(teacher.double() / temperature, -1)
    soft = -(p_t * F.log_softmax(student.double() / temperature, -1)).sum(-1)
    if t2_scaling:
        soft = soft * temperature**2
    hard = F.cross_entropy(student.double().transpose(1, 2), labels, reduction="none")
    ref = ((beta * soft + (1 - beta) * hard) * mask).sum() / mask.sum()
    ours = distillation_loss(student, teacher, labels, temperature=temperature, beta=beta, t2_scaling=t2_scaling)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-5)


def test_distillation_gives_no_gradient_to_teacher_and_equals_soft_target_ls():
    """Distilling from a teacher whose softmax is the LS target equals label smoothing (up to the target entropy)."""
    student = torch.randn(6, 5, requires_grad=True)
    teacher = torch.randn(6, 5, requires_grad=True)
    distillation_loss(student, teacher, temperature=2.0).backward()
    assert teacher.grad is None and student.grad is not None
    labels = torch.randint(0, 5, (6,))
    target = torch.full((6, 5), 0.1 / 5)
    target[torch.arange(6), labels] += 0.9
    torch.testing.assert_close(
        distillation_loss(student, target.log(), labels), label_smoothed_cross_entropy(student, labels, 0.1)
    )


# ---- target distributions (MixUp, CutMix) and their composition with smoothing -------------------------------


def test_soft_targets_against_a_dense_formula_and_timms_mixup_order():
    """timm's mixup_target smooths each one-hot (off = a/K, on = 1 - a + a/K) and then mixes them with lam;
    ls-seq smooths the mixed target. Both must give -sum_k target_k log p_k with the same target."""
    from ls_seq.functional.mixing import mix_targets

    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(8, 10, generator=g), torch.randint(0, 10, (8,), generator=g)
    perm, lam, alpha = torch.randperm(8, generator=g), 0.7, 0.1
    off, on = alpha / 10, 1 - alpha + alpha / 10
    y1 = torch.full((8, 10), off).scatter(1, labels[:, None], on)
    y2 = torch.full((8, 10), off).scatter(1, labels[perm][:, None], on)
    timm_target = lam * y1 + (1 - lam) * y2
    ref = -(timm_target * torch.log_softmax(logits, -1)).sum(-1).mean()
    mixed = mix_targets(labels, 10, lam, perm)
    torch.testing.assert_close(label_smoothed_cross_entropy(logits, mixed, alpha), ref, rtol=1e-6, atol=1e-6)
    # one-hot targets are the class-index loss, padding rows (all 0) are ignored
    onehot = torch.nn.functional.one_hot(labels, 10).float()
    onehot[2] = 0
    hard = labels.clone()
    hard[2] = -100
    torch.testing.assert_close(
        label_smoothed_cross_entropy(logits, onehot, alpha), label_smoothed_cross_entropy(logits, hard, alpha)
    )


def test_soft_targets_refuse_what_is_not_a_distribution():
    logits = torch.randn(3, 4)
    with pytest.raises(ValueError, match="must sum to 1"):
        label_smoothed_cross_entropy(logits, torch.full((3, 4), 0.5), 0.1)
    with pytest.raises(ValueError, match="must have the shape of `logits`"):
        label_smoothed_cross_entropy(logits, torch.full((3, 5), 0.2), 0.1)
    with pytest.raises(ValueError, match="non-negative"):
        label_smoothed_cross_entropy(logits, torch.tensor([[1.5, -0.5, 0.0, 0.0]] * 3), 0.1)


def test_cutmix_box_leaves_the_share_it_reports():
    from ls_seq.functional.mixing import cutmix_box

    g = torch.Generator().manual_seed(1)
    for lam in (0.2, 0.5, 0.9):
        top, bottom, left, right, kept = cutmix_box(32, 24, lam, generator=g)
        assert 0 <= top <= bottom <= 32 and 0 <= left <= right <= 24
        assert kept == pytest.approx(1 - (bottom - top) * (right - left) / (32 * 24))


# ---- z-loss ------------------------------------------------------------------------------------------------------
# These fail on the code before the change: `z_loss` did not exist (TypeError).


def _torch_z_loss_reference(logits, labels, alpha, z_loss, reduction="mean"):
    """``F.cross_entropy(label_smoothing=alpha)`` plus ``z_loss * logsumexp(z)**2`` on counted tokens (float32)."""
    z, y = logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1)
    mask = y != IGNORE
    per = F.cross_entropy(z, y, label_smoothing=alpha, ignore_index=IGNORE, reduction="none")
    per = per + z_loss * torch.logsumexp(z, -1).square() * mask
    if reduction == "none":
        return per.reshape(labels.shape)
    return per.sum() if reduction == "sum" else per.sum() / mask.sum()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("z_loss", [0.0, 1e-4, 0.1])
def test_z_loss_equals_torch_cross_entropy_plus_lse_squared(reduction, z_loss):
    """Forward and gradient against autograd through torch's loss plus the z-loss (float32, 1e-5)."""
    logits, labels = _batch(v=37)
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    loss = label_smoothed_cross_entropy(a, labels, 0.1, reduction=reduction, z_loss=z_loss)
    ref = _torch_z_loss_reference(b, labels, 0.1, z_loss, reduction)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    weights = torch.rand(loss.shape)
    (loss * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


def test_z_loss_is_not_part_of_the_nll_and_smoothed_sums_carry_it():
    """``return_nll``'s NLL and ``smoothed_sums``' ``nll_sum`` are unchanged by the z-loss; ``loss_sum`` holds it."""
    from ls_seq.functional.losses import smoothed_sums, smoothing_weights

    logits, labels = _batch(v=37)
    _, nll = label_smoothed_cross_entropy(logits, labels, 0.1, return_nll=True, z_loss=0.5)
    _, nll_plain = label_smoothed_cross_entropy(logits, labels, 0.1, return_nll=True)
    torch.testing.assert_close(nll, nll_plain)
    w_hot, w_q = smoothing_weights(0.1, 37)
    x = logits.clone().requires_grad_()
    loss_sum, nll_sum = smoothed_sums(x, labels, w_hot, w_q, None, IGNORE, z_loss=0.5)
    y = logits.clone().requires_grad_()
    ref = _torch_z_loss_reference(y, labels, 0.1, 0.5, "sum")
    torch.testing.assert_close(loss_sum, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(nll_sum, nll * (labels != IGNORE).sum(), rtol=1e-5, atol=1e-5)
    loss_sum.backward()
    ref.backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-6)


def test_z_loss_with_target_distributions_against_a_dense_formula():
    """Soft targets (MixUp): the dense cross-entropy plus ``z_loss * lse**2`` on non-padding rows (float64 ref)."""
    logits, _ = _batch(v=7)
    targets = torch.softmax(torch.randn(logits.shape), -1)
    targets[0, 1] = 0.0  # a padding row
    mask = targets.sum(-1) > 0
    loss = label_smoothed_cross_entropy(logits, targets, 0.2, z_loss=0.1, reduction="none")
    z = logits.double()
    smoothed = 0.8 * targets.double() + 0.2 / 7
    ref = (-(smoothed * F.log_softmax(z, -1)).sum(-1) + 0.1 * torch.logsumexp(z, -1).square()) * mask
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("value", "exc", "pattern"),
    [
        (-0.1, ValueError, r"`z_loss` must be finite and >= 0, got -0.1"),
        (float("inf"), ValueError, r"`z_loss` must be finite and >= 0, got inf"),
        ("0.1", TypeError, r"`z_loss` must be a real number >= 0"),
    ],
)
def test_bad_z_loss_is_refused_naming_the_argument(value, exc, pattern):
    logits, labels = _batch()
    with pytest.raises(exc, match=pattern):
        label_smoothed_cross_entropy(logits, labels, 0.1, z_loss=value)
