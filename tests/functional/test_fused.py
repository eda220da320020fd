"""The fused linear + label-smoothed CE against the unfused ``hidden @ W.T (+ b)`` followed by the loss.

References: materialised logits ``hidden @ weight.T + bias`` followed by autograd through the definition
(cross-entropy against a dense smoothed target, float64), torch's ``F.cross_entropy(label_smoothing=)``
(float32) and the unfused ``label_smoothed_cross_entropy`` (bfloat16).
Tolerances: float64 1e-10; float32 1e-5 relative (chunked matmuls sum in another order); bfloat16 inputs and
bfloat16 autocast are compared with the unfused path on the same bfloat16 logits (tolerances stated per test).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from ls_seq import label_smoothed_cross_entropy, smoothing_weights
from ls_seq.functional.fused import fused_linear_label_smoothed_cross_entropy as fused
from ls_seq.functional.fused import fused_smoothed_sums

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


def test_bfloat16_inputs_match_unfused_bfloat16_linear_and_return_bfloat16_gradients():
    """bf16 inputs, no autocast: the matmuls run in bf16 (no float32 copy of W), as ``F.linear`` in bf16 does,
    and the loss statistics in float32. Reference: that unfused bf16 linear, then ls-seq's float32 loss, autograd.
    Tolerances: per-token losses 1e-5 (the same bf16 logits, in chunks), while bf16 rounding of the logits moves
    them by > 1e-3 from the float32 computation (checked, so the test tells the two apart; the code before the
    change computed float32 matmuls and fails here); the mean loss 2**-7 relative to float32; gradients 2**-6
    relative plus 2**-7 of the largest entry (grad_W is accumulated in bf16 over 6 chunks, the reference rounds
    once)."""
    h, w, b, y = _problem(n=(4, 9), d=16, v=300, dtype=torch.bfloat16)
    w = (3 * w.float()).bfloat16()  # logits of a few units: their bf16 rounding shows in the loss
    exact_logits = h.float() @ w.float().T + b.float()
    per_token = fused(h, w, y, 0.1, bias=b, chunk_size=5, reduction="none")
    ref_tokens = label_smoothed_cross_entropy(F.linear(h, w, b), y, 0.1, reduction="none")  # bf16 logits
    torch.testing.assert_close(per_token, ref_tokens, rtol=1e-5, atol=1e-5)
    assert float((ref_tokens - label_smoothed_cross_entropy(exact_logits, y, 0.1, reduction="none")).abs().max()) > 1e-3

    fused_in, ref_in = _leaves(h, w, b), _leaves(h, w, b)
    ours = fused(fused_in[0], fused_in[1], y, 0.1, bias=fused_in[2], chunk_size=5)
    ref = label_smoothed_cross_entropy(F.linear(*ref_in), y, 0.1)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours, label_smoothed_cross_entropy(exact_logits, y, 0.1), rtol=2**-7, atol=0.0)
    for g_ours, g_ref in zip(_grads(ours, fused_in), _grads(ref, ref_in)):
        assert g_ours.dtype == torch.bfloat16
        torch.testing.assert_close(g_ours.float(), g_ref.float(), rtol=2**-6, atol=2**-7 * float(g_ref.abs().max()))


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


# ---- logit transforms (softcap, logit_scale) and z-loss --------------------------------------------------------
# Every test below fails on the code before this change: `logit_scale`, `softcap` and `z_loss` did not exist
# (TypeError), and the fused path ignored autocast and copied a bf16 W to float32.


def _transformed_reference(hidden, weight, bias, labels, alpha, *, reduction="mean", logit_scale=1.0, softcap=None, z_loss=0.0):
    """Plain torch, autograd: ``F.cross_entropy(label_smoothing=alpha)`` on ``softcap(scale * (h @ W.T + b))``
    plus ``z_loss * logsumexp(z)**2`` on the tokens that count."""
    u = hidden @ weight.T if bias is None else hidden @ weight.T + bias  # (..., V)
    z = logit_scale * u
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    z, y = z.reshape(-1, z.shape[-1]), labels.reshape(-1)  # (N, V), (N,)
    mask = y != IGNORE
    per = F.cross_entropy(z, y, label_smoothing=alpha, ignore_index=IGNORE, reduction="none")  # (N,), 0 if ignored
    per = per + z_loss * torch.logsumexp(z, -1).square() * mask
    if reduction == "none":
        return per.reshape(labels.shape)
    return per.sum() if reduction == "sum" else per.sum() / mask.sum().clamp_min(1)


_TOL = {  # (loss, gradients)
    torch.float64: ({"rtol": 1e-10, "atol": 1e-12}, {"rtol": 1e-10, "atol": 1e-12}),
    torch.float32: ({"rtol": 1e-5, "atol": 1e-6}, {"rtol": 1e-4, "atol": 1e-6}),
}


@pytest.mark.parametrize("softcap", [None, 2.0])
@pytest.mark.parametrize("logit_scale", [1.0, 0.37])
@pytest.mark.parametrize("z_loss", [0.0, 0.05])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("reduction", "chunk_size"), [("mean", 4), ("none", 6), ("sum", 100)])
def test_transforms_and_z_loss_equal_torch_autograd(softcap, logit_scale, z_loss, dtype, reduction, chunk_size):
    """Forward and the gradients of hidden, weight and bias against autograd through plain torch, every
    combination of softcap / logit_scale / z_loss. 16 of the 21 tokens count; chunks of 4 and 6 split them
    unevenly (100 is one chunk). Tolerances: float64 1e-10; float32 1e-5 (loss) and 1e-4 (gradients) relative,
    as for the untransformed loss. Logits reach ~+-5, so softcap 2 saturates tanh on part of them."""
    h, w, b, y = _problem(dtype=dtype)
    w = 2 * w
    kw = {"logit_scale": logit_scale, "softcap": softcap, "z_loss": z_loss}
    fused_in, ref_in = _leaves(h, w, b), _leaves(h, w, b)
    ours = fused(fused_in[0], fused_in[1], y, 0.1, bias=fused_in[2], reduction=reduction, chunk_size=chunk_size, **kw)
    ref = _transformed_reference(*ref_in, y, 0.1, reduction=reduction, **kw)
    loss_tol, grad_tol = _TOL[dtype]
    torch.testing.assert_close(ours, ref, **loss_tol)
    for g_ours, g_ref in zip(_grads(ours, fused_in), _grads(ref, ref_in)):
        torch.testing.assert_close(g_ours, g_ref, **grad_tol)


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_gradcheck_float64_with_softcap_scale_and_z_loss(reduction):
    """Numerical Jacobians through the transform and the z-loss (precomputed and per-row recompute paths)."""
    h, w, b, y = _problem(n=(2, 5), d=4, v=7)

    def f(hh, ww, bb):
        kw = {"logit_scale": 0.7, "softcap": 1.5, "z_loss": 0.1}
        return fused(hh, 3 * ww, y, 0.2, bias=bb, reduction=reduction, chunk_size=3, **kw)

    assert torch.autograd.gradcheck(f, tuple(_leaves(h, w, b)))


def test_retain_graph_second_backward_equals_first_with_transforms():
    """The second backward recomputes through the transform; it must match the precomputed first one."""
    h, w, b, y = _problem()
    leaves = _leaves(h, w, b)
    loss = fused(leaves[0], leaves[1], y, 0.1, bias=leaves[2], chunk_size=5, logit_scale=2.0, softcap=3.0, z_loss=0.1)
    first = [g.clone() for g in torch.autograd.grad(loss, leaves, retain_graph=True)]
    for a, c in zip(first, torch.autograd.grad(loss, leaves)):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)


def test_fused_smoothed_sums_with_transforms_equals_the_definition():
    """The hot path: ``loss_sum`` holds the z-loss, ``nll_sum`` is ``sum(lse(z) - z_y)`` of the transformed
    logits without it (float64, 1e-10)."""
    h, w, b, y = _problem(n=(4, 6))
    kw = {"logit_scale": 0.5, "softcap": 2.5, "z_loss": 0.02}
    w_hot, w_q = smoothing_weights(0.1, 29)
    loss_sum, nll_sum = fused_smoothed_sums(h, w, y, w_hot, w_q, bias=b, chunk_size=7, **kw)
    torch.testing.assert_close(loss_sum, _transformed_reference(h, w, b, y, 0.1, reduction="sum", **kw), rtol=1e-10, atol=1e-12)
    z = 2.5 * torch.tanh(0.5 * (h @ w.T + b) / 2.5)
    nll = F.cross_entropy(z.reshape(-1, 29), y.reshape(-1), ignore_index=IGNORE, reduction="sum")
    torch.testing.assert_close(nll_sum, nll, rtol=1e-10, atol=1e-12)
    assert not nll_sum.requires_grad


def test_transforms_and_z_loss_equal_unfused_label_smoothed_cross_entropy_with_priors_and_fairseq():
    """The fused loss equals ls-seq's unfused loss on the transformed logits for the other conventions too."""
    h, w, b, y = _problem()
    z = 3.0 * torch.tanh(1.3 * (h @ w.T + b) / 3.0)
    prior = torch.softmax(torch.randn(29, dtype=torch.float64), 0)
    kw = {"logit_scale": 1.3, "softcap": 3.0, "z_loss": 0.01}
    for extra in ({"convention": "fairseq"}, {"prior": prior}):
        ours = fused(h, w, y, 0.2, bias=b, chunk_size=4, **kw, **extra)
        ref = label_smoothed_cross_entropy(z, y, 0.2, z_loss=0.01, **extra)
        torch.testing.assert_close(ours, ref.double(), rtol=1e-6, atol=1e-6)  # the unfused loss returns float32


def _linear_under_autocast(h, w, b):
    linear = torch.nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    with torch.no_grad():
        linear.weight.copy_(w)
        if b is not None:
            linear.bias.copy_(b)
    return linear


@pytest.mark.parametrize("softcap", [None, 2.0])
def test_bfloat16_autocast_matches_nn_linear_under_autocast(softcap):
    """float32 parameters under ``torch.autocast("cpu", bfloat16)``: the matmuls run in bf16, like the unfused
    reference (``nn.Linear`` under autocast, then the transform and ls-seq's loss on the bf16 logits upcast to
    float32). Tolerances: per-token losses 1e-5 from that reference, while they are > 1e-3 from the float32
    computation (checked: before the change autocast was switched off inside, the fused loss was the float32
    one and fails here); the mean loss 2**-7 relative to float32; gradients (float32, like the parameters)
    2**-6 relative plus 2**-7 of their largest entry, for the summed path (gradients made in forward) and the
    per-token path (recomputed in backward)."""
    h, w, b, y = _problem(n=(4, 16), d=32, v=500, dtype=torch.float32)
    w = 4 * w
    kw = {"softcap": softcap, "z_loss": 1e-3}

    def transform(logits):
        return logits.float() if softcap is None else softcap * torch.tanh(logits.float() / softcap)

    exact_tokens = _transformed_reference(h, w, b, y, 0.1, reduction="none", **kw)
    for reduction in ("none", "mean"):
        linear = _linear_under_autocast(h, w, b)
        x_ref, x = h.clone().requires_grad_(), h.clone().requires_grad_()
        wf, bf = w.clone().requires_grad_(), b.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours = fused(x, wf, y, 0.1, bias=bf, chunk_size=10, reduction=reduction, **kw)
            logits = linear(x_ref)  # (B, T, V)
        assert logits.dtype == torch.bfloat16
        ref = label_smoothed_cross_entropy(transform(logits), y, 0.1, reduction=reduction, z_loss=1e-3)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
        if reduction == "none":
            assert float((ref.detach() - exact_tokens).abs().max()) > 1e-3  # bf16 and float32 matmuls are told apart
        else:
            torch.testing.assert_close(ours, exact_tokens.sum() / (y != IGNORE).sum(), rtol=2**-7, atol=0.0)
        _grads(ours, [])  # backward, with the same per-token weights on both sides
        _grads(ref, [])
        for g_ours, g_ref in [(x.grad, x_ref.grad), (wf.grad, linear.weight.grad), (bf.grad, linear.bias.grad)]:
            assert g_ours.dtype == torch.float32
            torch.testing.assert_close(g_ours, g_ref, rtol=2**-6, atol=2**-7 * float(g_ref.abs().max()))


class _LargestTensor(TorchDispatchMode):
    """Records the largest storage any op returns (buffers written with ``out=`` included)."""

    def __init__(self):
        super().__init__()
        self.largest = (0, "")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes() > self.largest[0]:
                self.largest = (t.untyped_storage().nbytes(), f"{func} -> {t.dtype} {tuple(t.shape)}")
        return out


@pytest.mark.parametrize("hidden_dtype", [torch.bfloat16, torch.float32])
def test_bfloat16_weight_is_never_copied_to_float32(hidden_dtype):
    """No tensor of forward or backward is as large as a float32 copy of W (V * d * 4 bytes): the bf16 W is
    used as it is, its gradient is bf16 (V * d * 2), and a float32 chunk of 16 x V logits is 4x smaller.
    Fails before the change: ``weight.to(float32)`` made exactly that copy. float32 hidden states with a bf16 W
    (the hot path's mixed case) are cast to bf16, not W to float32."""
    v, d = 2000, 64
    h, w, b, y = _problem(n=(3, 16), d=d, v=v, dtype=torch.bfloat16)
    x = h.to(hidden_dtype).requires_grad_()
    wb, bb = w.clone().requires_grad_(), b.clone().requires_grad_()
    w_hot, w_q = smoothing_weights(0.1, v)
    with _LargestTensor() as mode:
        loss, _ = fused_smoothed_sums(x, wb, y, w_hot, w_q, bias=bb, chunk_size=16, softcap=30.0, z_loss=1e-4)
        loss.backward()
    assert mode.largest[0] < v * d * 4, mode.largest
    assert wb.grad.dtype == torch.bfloat16 and x.grad.dtype == hidden_dtype
    h32, w32, b32 = h.float(), w.float(), b.float()  # the same values in float32
    ref = _transformed_reference(h32, w32, b32, y, 0.1, reduction="sum", softcap=30.0, z_loss=1e-4)
    torch.testing.assert_close(loss, ref, rtol=2**-7, atol=0.0)  # within bf16 accuracy of float32


@pytest.mark.parametrize(
    ("kwargs", "exc", "pattern"),
    [
        ({"softcap": 0.0}, ValueError, r"`softcap` must be finite and > 0, got 0.0"),
        ({"softcap": -30.0}, ValueError, r"`softcap` must be finite and > 0, got -30.0"),
        ({"softcap": float("nan")}, ValueError, r"`softcap` must be finite and > 0, got nan"),
        ({"softcap": float("inf")}, ValueError, r"`softcap` must be finite and > 0, got inf"),
        ({"softcap": "30"}, TypeError, r"`softcap` must be a real number"),
        ({"logit_scale": 0.0}, ValueError, r"`logit_scale` must be finite and > 0, got 0.0"),
        ({"logit_scale": -0.0625}, ValueError, r"`logit_scale` must be finite and > 0, got -0.0625"),
        ({"z_loss": -1e-4}, ValueError, r"`z_loss` must be finite and >= 0, got -0.0001"),
        ({"z_loss": float("nan")}, ValueError, r"`z_loss` must be finite and >= 0, got nan"),
    ],
)
def test_bad_transform_or_z_loss_is_refused_naming_the_argument(kwargs, exc, pattern):
    h, w, b, y = _problem()
    with pytest.raises(exc, match=pattern):
        fused(h, w, y, 0.1, bias=b, **kwargs)
