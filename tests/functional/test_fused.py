"""The fused linear + label-smoothed CE against the unfused ``hidden @ W.T (+ b)`` followed by the loss.

References: materialised logits ``hidden @ weight.T + bias`` followed by autograd through the definition
(cross-entropy against a dense smoothed target, float64), torch's ``F.cross_entropy(label_smoothing=)``
(float32) and the unfused ``label_smoothed_cross_entropy`` (bfloat16).
Tolerances: float64 1e-10; float32 1e-5 relative (chunked matmuls sum in another order); bfloat16 inputs are
compared with the unfused loss on their exact float32 upcast, since the fused path computes in float32.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ls_seq import label_smoothed_cross_entropy, smoothing_weights
from ls_seq.functional.fused import fused_linear_label_smoothed_cross_entropy as fused

IGNORE = -100


def _problem(n=(3, 7), d=8, v=29, pad=0.25, seed=0, dtype=torch.float64, with_bias=True):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*n, d, generator=g, dtype=torch.float64).to(dtype)  # (B, T, d)
    weight = (torch.randn(v, d, generator=g, dtype=torch.float64) / d**0.5).to(dtype)  # (V, d)
    bias = torch.randn(v, generator=g, dtype=torch.float64).to(dtype) if with_bias else None  # (V,)
    labels = torch.randint(0, v, n, generator=g)  # (B, T)
    labels[torch.rand(n, generator=g) < pad] = IGNORE
    return hidden, weight, bias, labels


def _leaves(*tensors):
    return [None if t is None else t.detach().clone().requires_grad_() for t in tensors]


def _unfused(hidden, weight, bias, labels, alpha, *, convention="uniform", prior=None, reduction="mean"):
    """Materialised logits and the definition: cross-entropy against a dense smoothed target, autograd."""
    logits = hidden @ weight.T  # (B, T, V)
    if bias is not None:
        logits = logits + bias
    v = logits.shape[-1]
    w_hot, w_q = smoothing_weights(alpha, v, convention)
    q = torch.full((v,), 1.0 / v, dtype=logits.dtype) if prior is None else prior.to(logits.dtype)
    mask = labels != IGNORE  # (B, T)
    target = w_q * q + w_hot * F.one_hot(labels.clamp_min(0), v).to(logits.dtype)  # (B, T, V)
    per_token = -(target * F.log_softmax(logits, -1)).sum(-1) * mask  # (B, T)
    if reduction == "none":
        return per_token
    return per_token.sum() if reduction == "sum" else per_token.sum() / mask.sum().clamp_min(1)


def _grads(loss, tensors):
    if loss.dim():
        loss = (loss * torch.linspace(0.5, 2.0, loss.numel(), dtype=loss.dtype).reshape(loss.shape)).sum()
    loss.backward()
    return [None if t is None else t.grad for t in tensors]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("chunk_size", [1, 4, 6, 100])
@pytest.mark.parametrize("with_bias", [True, False])
def test_float64_equals_unfused_loss_and_gradients(reduction, chunk_size, with_bias):
    """Chunk sizes 4 and 6 do not divide the 16 counted tokens; 100 exceeds them."""
    h, w, b, y = _problem(with_bias=with_bias)
    fused_in = _leaves(h, w, b)
    ref_in = _leaves(h, w, b)
    ours = fused(fused_in[0], fused_in[1], y, 0.1, bias=fused_in[2], reduction=reduction, chunk_size=chunk_size)
    ref = _unfused(*ref_in, y, 0.1, reduction=reduction)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    for g_ours, g_ref in zip(_grads(ours, fused_in), _grads(ref, ref_in)):
        if g_ref is None:
            assert g_ours is None
        else:
            torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck_float64(reduction):
    """Numerical Jacobians for hidden, weight and bias (per-row recompute path for "none")."""
    h, w, b, y = _problem(n=(2, 5), d=4, v=7)

    def f(hh, ww, bb):
        return fused(hh, ww, y, 0.2, bias=bb, reduction=reduction, chunk_size=3)

    assert torch.autograd.gradcheck(f, tuple(_leaves(h, w, b)))


def test_float32_equals_torch_native_on_materialised_logits():
    h, w, b, y = _problem(n=(4, 33), d=32, v=1000, dtype=torch.float32)
    fused_in, ref_in = _leaves(h, w, b), _leaves(h, w, b)
    ours = fused(fused_in[0], fused_in[1], y, 0.1, bias=fused_in[2], chunk_size=50)
    logits = ref_in[0] @ ref_in[1].T + ref_in[2]  # (B, T, V)
    ref = F.cross_entropy(logits.reshape(-1, 1000), y.reshape(-1), label_smoothing=0.1)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    for g_ours, g_ref in zip(_grads(ours, fused_in), _grads(ref, ref_in)):
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-6)


def test_bfloat16_is_computed_in_float32_and_returns_bfloat16_gradients():
    h, w, b, y = _problem(n=(4, 9), d=16, v=300, dtype=torch.bfloat16)
    fused_in = _leaves(h, w, b)
    exact_in = _leaves(h.float(), w.float(), b.float())  # the same values in float32
    ours = fused(fused_in[0], fused_in[1], y, 0.1, bias=fused_in[2], chunk_size=7)
    ref = label_smoothed_cross_entropy(exact_in[0] @ exact_in[1].T + exact_in[2], y, 0.1)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    for g_ours, g_ref in zip(_grads(ours, fused_in), _grads(ref, exact_in)):
        assert g_ours.dtype == torch.bfloat16
        # one rounding of the float32 gradient to bfloat16
        torch.testing.assert_close(g_ours.float(), g_ref, rtol=2**-8, atol=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_fairseq_convention_and_prior_equal_unfused(eps):
    h, w, b, y = _problem()
    torch.testing.assert_close(
        fused(h, w, y, eps, bias=b, convention="fairseq", chunk_size=5),
        _unfused(h, w, b, y, eps, convention="fairseq"),
        rtol=1e-10,
        atol=1e-12,
    )
    prior = torch.softmax(torch.randn(29, dtype=torch.float64), 0)
    fused_in, ref_in = _leaves(h, w, b), _leaves(h, w, b)
    ours = fused(fused_in[0], fused_in[1], y, 0.3, bias=fused_in[2], prior=prior, chunk_size=5)
    ref = _unfused(*ref_in, y, 0.3, prior=prior)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    for g_ours, g_ref in zip(_grads(ours, fused_in), _grads(ref, ref_in)):
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-12)


def test_num_items_in_batch_makes_micro_batches_add_up():
    h, w, b, y = _problem(n=(8, 5))
    n = int((y != IGNORE).sum())
    full_in, parts_in = _leaves(h, w, b), _leaves(h, w, b)
    full = fused(full_in[0], full_in[1], y, 0.1, bias=full_in[2])
    parts = sum(
        fused(parts_in[0][i : i + 2], parts_in[1], y[i : i + 2], 0.1, bias=parts_in[2], num_items_in_batch=n)
        for i in range(0, 8, 2)
    )
    torch.testing.assert_close(parts, full, rtol=1e-12, atol=1e-12)
    for g_parts, g_full in zip(_grads(parts, parts_in), _grads(full, full_in)):
        torch.testing.assert_close(g_parts, g_full, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_ignored_gives_zero_loss_and_zero_gradients(reduction):
    h, w, b, _ = _problem()
    y = torch.full(h.shape[:-1], IGNORE)
    leaves = _leaves(h, w, b)
    loss = fused(leaves[0], leaves[1], y, 0.1, bias=leaves[2], reduction=reduction)
    assert torch.count_nonzero(loss) == 0
    for grad in _grads(loss, leaves):
        assert grad is not None and torch.count_nonzero(grad) == 0


def test_padding_rows_get_zero_gradient_and_change_nothing():
    h, w, b, y = _problem(pad=0.0)
    extra = 50 * torch.randn(3, 4, 8, dtype=torch.float64)
    padded_h = torch.cat([h, extra], dim=1).requires_grad_()  # (3, 11, d)
    padded_y = torch.cat([y, torch.full((3, 4), IGNORE)], dim=1)
    x = h.clone().requires_grad_()
    a = fused(x, w, y, 0.1, bias=b, chunk_size=4)
    c = fused(padded_h, w, padded_y, 0.1, bias=b, chunk_size=4)
    torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)
    a.backward()
    c.backward()
    torch.testing.assert_close(padded_h.grad[:, :7], x.grad, rtol=1e-12, atol=1e-12)
    assert torch.count_nonzero(padded_h.grad[:, 7:]) == 0


def test_only_the_tensors_that_need_it_get_gradients_and_no_grad_gives_the_same_value():
    h, w, b, y = _problem()
    frozen_w = w.clone()
    x = h.clone().requires_grad_()
    loss = fused(x, frozen_w, y, 0.1, bias=b)
    loss.backward()
    assert x.grad is not None and frozen_w.grad is None
    with torch.no_grad():
        torch.testing.assert_close(fused(h, w, y, 0.1, bias=b), loss.detach())


def test_retain_graph_second_backward_equals_first():
    h, w, b, y = _problem()
    leaves = _leaves(h, w, b)
    loss = fused(leaves[0], leaves[1], y, 0.1, bias=leaves[2], chunk_size=5)
    first = [g.clone() for g in torch.autograd.grad(loss, leaves, retain_graph=True)]
    second = torch.autograd.grad(loss, leaves)
    for a, c in zip(first, second):
        torch.testing.assert_close(a, c)


@pytest.mark.parametrize(
    ("kwargs", "exc", "pattern"),
    [
        ({"hidden": [1.0]}, TypeError, "`hidden` must be a torch.Tensor"),
        ({"weight": torch.ones(29, 8, dtype=torch.float32)}, TypeError, "`weight` must have the dtype"),
        ({"weight": torch.ones(29, 5, dtype=torch.float64)}, ValueError, "`hidden` must have shape"),
        ({"weight": torch.ones(29, dtype=torch.float64)}, ValueError, "`weight` must have shape"),
        ({"labels": torch.zeros(3, 7)}, TypeError, "`labels` must be an integer tensor"),
        ({"labels": torch.full((3, 7), 29)}, ValueError, r"`labels` must be in \[0, 29\)"),
        ({"labels": torch.zeros(7, 3, dtype=torch.long)}, ValueError, "`labels` must have the shape"),
        ({"bias": torch.ones(5, dtype=torch.float64)}, ValueError, "`bias` must have shape"),
        ({"bias": torch.ones(29, dtype=torch.long)}, TypeError, "`bias` must be a floating-point"),
        ({"alpha": 1.5}, ValueError, "`alpha` must be in"),
        ({"convention": "torch"}, ValueError, "`convention` must be one of"),
        ({"reduction": "avg"}, ValueError, "`reduction` must be one of"),
        ({"chunk_size": 0}, ValueError, "`chunk_size` must be an int >= 1"),
        ({"chunk_size": 2.5}, TypeError, "`chunk_size` must be an int"),
        ({"num_items_in_batch": "8"}, TypeError, "`num_items_in_batch` must be"),
        ({"prior": torch.ones(29)}, ValueError, "`prior` must sum to 1"),
        ({"prior": torch.ones(29) / 29, "convention": "fairseq"}, ValueError, "`prior` is only defined"),
    ],
)
def test_bad_input_is_refused_naming_the_argument(kwargs, exc, pattern):
    h, w, b, y = _problem()
    args = {"hidden": h, "weight": w, "labels": y, "bias": b} | kwargs
    with pytest.raises(exc, match=pattern):
        fused(args.pop("hidden"), args.pop("weight"), args.pop("labels"), **args)
