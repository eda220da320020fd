"""The single-pass label-smoothed CE kernel against torch's native loss and a dense float64 reference.

References: ``F.cross_entropy(label_smoothing=alpha, reduction="none")`` (uniform target) and the
definition ``-sum_k target_k log_softmax(z)_k`` with an explicit dense target in float64 (prior). Tolerances:
float32 1e-5 relative (the kernel sums 32k terms pairwise, as torch does); bfloat16 logits are compared with
their exact float32 upcast, so only the final bf16 rounding of the gradient (2**-8 relative) differs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ls_seq import label_smoothed_cross_entropy
from ls_seq.functional import _kernels
from ls_seq.functional._kernels import chunk_rows_for, label_smoothed_ce_rows

IGNORE = -100


def _rows(n=37, v=50, pad=(3, 10, 11), seed=0, dtype=torch.float32, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    z = (scale * torch.randn(n, v, generator=g, dtype=torch.float64)).to(dtype)  # (N, V)
    y = torch.randint(0, v, (n,), generator=g)  # (N,)
    y[list(pad)] = IGNORE
    mask = y != IGNORE
    return z, y, torch.where(mask, y, torch.zeros_like(y)), mask


def _dense(z, y, mask, w_hot, w_q, q=None):
    """Per-row loss and NLL against an explicit dense target, float64 (the definition)."""
    z = z.double()
    v = z.shape[1]
    q = torch.full((v,), 1.0 / v, dtype=torch.float64) if q is None else q.double()
    target = w_q * q.expand(z.shape[0], v).clone()  # (N, V)
    target[torch.arange(z.shape[0]), y] += w_hot
    log_p = F.log_softmax(z, -1)  # (N, V)
    loss = -(target * log_p).sum(-1) * mask
    nll = -log_p.gather(1, y[:, None]).squeeze(1) * mask
    return loss, nll


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 32, 100])
@pytest.mark.parametrize("alpha", [0.0, 0.1, 1.0])
def test_values_and_gradient_equal_torch_native(chunk_size, alpha):
    """Chunk sizes that do not divide N = 37 (and one larger than N) give torch's loss and gradient."""
    z, y, y_safe, mask = _rows()
    a = z.clone().requires_grad_()
    b = z.clone().requires_grad_()
    loss, _ = label_smoothed_ce_rows(a, y_safe, mask, 1 - alpha, alpha, chunk_size=chunk_size)
    ref = F.cross_entropy(b, y, label_smoothing=alpha, reduction="none")
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    weights = torch.rand(z.shape[0])  # an arbitrary upstream gradient per row
    (loss * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)
    assert torch.count_nonzero(a.grad[~mask]) == 0


@pytest.mark.parametrize("chunk_size", [4, 37])
def test_prior_matches_dense_reference(chunk_size):
    z, _, y_safe, mask = _rows(v=13)
    prior = torch.distributions.Dirichlet(torch.ones(13, dtype=torch.float64)).sample()
    prior = prior / prior.sum()  # sums to 1 in float64, as the closed form lse - w_hot z_y - w_q <q, z> assumes
    x = z.double().requires_grad_()
    loss, nll = label_smoothed_ce_rows(x, y_safe, mask, 0.7, 0.3, prior=prior, chunk_size=chunk_size)
    ref_loss, ref_nll = _dense(z, y_safe, mask, 0.7, 0.3, prior)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(nll, ref_nll, rtol=1e-12, atol=1e-12)
    # Gradient of the definition: softmax - target, on counted rows only.
    target = 0.3 * prior.double().expand(z.shape[0], 13).clone()
    target[torch.arange(z.shape[0]), y_safe] += 0.7
    loss.sum().backward()
    torch.testing.assert_close(x.grad, (F.softmax(z.double(), -1) - target) * mask[:, None], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("with_prior", [False, True])
@pytest.mark.parametrize("output", ["loss", "nll", "both"])
def test_gradcheck_float64(with_prior, output):
    """Analytical against numerical Jacobians; gradcheck differentiates repeatedly, which also covers the
    recompute path taken once the precomputed gradient has been handed over."""
    z, _, y_safe, mask = _rows(n=9, v=7, pad=(2,), scale=1.0, dtype=torch.float64)
    prior = torch.softmax(torch.randn(7, dtype=torch.float64), 0) if with_prior else None

    def f(x):
        loss, nll = label_smoothed_ce_rows(x, y_safe, mask, 0.75, 0.25, prior=prior, chunk_size=4)
        return {"loss": loss, "nll": nll, "both": (loss, nll)}[output]

    assert torch.autograd.gradcheck(f, (z.clone().requires_grad_(),))


def test_gradient_through_loss_and_nll_together():
    """``d(a*loss + b*nll)``: the NLL term adds ``w_q (q - onehot)`` to the stored ``softmax - target``."""
    z, _, y_safe, mask = _rows()
    a = z.double().requires_grad_()
    loss, nll = label_smoothed_ce_rows(a, y_safe, mask, 0.8, 0.2, chunk_size=5)
    (2.0 * loss.sum() + 3.0 * nll.sum()).backward()
    b = z.double().requires_grad_()
    ref_loss, ref_nll = _dense(b, y_safe, mask, 0.8, 0.2)
    (2.0 * ref_loss.sum() + 3.0 * ref_nll.sum()).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)


def test_retain_graph_second_backward_equals_first():
    z, _, y_safe, mask = _rows()
    x = z.clone().requires_grad_()
    loss, _ = label_smoothed_ce_rows(x, y_safe, mask, 0.9, 0.1, chunk_size=6)
    (first,) = torch.autograd.grad(loss.sum(), x, retain_graph=True)
    first = first.clone()
    (second,) = torch.autograd.grad(loss.sum(), x)
    torch.testing.assert_close(second, first)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_logits_are_computed_in_float32_and_get_a_half_gradient(dtype):
    z, y, y_safe, mask = _rows(v=300, dtype=dtype)
    a = z.clone().requires_grad_()
    loss, nll = label_smoothed_ce_rows(a, y_safe, mask, 0.9, 0.1, chunk_size=8)
    exact = z.float().requires_grad_()  # the same values, exactly representable in float32
    ref = F.cross_entropy(exact, y, label_smoothing=0.1, reduction="none")
    assert loss.dtype == torch.float32 and nll.dtype == torch.float32
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    loss.sum().backward()
    ref.sum().backward()
    assert a.grad.dtype == dtype
    # one rounding of a value of magnitude <= 1 to the half dtype
    torch.testing.assert_close(a.grad.float(), exact.grad, rtol=0, atol=torch.finfo(dtype).eps)


def test_all_ignored_rows_give_zero_loss_and_zero_gradient():
    z, _, _, _ = _rows()
    mask = torch.zeros(z.shape[0], dtype=torch.bool)
    x = z.clone().requires_grad_()
    loss, nll = label_smoothed_ce_rows(x, torch.zeros(z.shape[0], dtype=torch.long), mask, 0.9, 0.1, chunk_size=4)
    assert torch.count_nonzero(loss) == 0 and torch.count_nonzero(nll) == 0
    loss.sum().backward()
    assert torch.count_nonzero(x.grad) == 0


def test_without_grad_values_equal_and_logits_untouched():
    z, _, y_safe, mask = _rows()
    before = z.clone()
    with torch.no_grad():
        loss, nll = label_smoothed_ce_rows(z.clone().requires_grad_(), y_safe, mask, 0.9, 0.1, chunk_size=5)
    ref_loss, ref_nll = _dense(z, y_safe, mask, 0.9, 0.1)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(nll.double(), ref_nll, rtol=1e-5, atol=1e-5)
    assert torch.equal(z, before)
    assert not loss.requires_grad


def test_fully_masked_row_of_minus_inf_is_ignored_without_nan():
    """A padded row whose logits are all -inf (e.g. fully masked) must not leak NaN into loss or gradient."""
    z, _, y_safe, mask = _rows()
    z[3] = float("-inf")  # row 3 is padding
    x = z.clone().requires_grad_()
    loss, _ = label_smoothed_ce_rows(x, y_safe, mask, 0.9, 0.1, chunk_size=4)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(x.grad).all()


def test_public_loss_on_a_large_vocabulary_uses_several_chunks(monkeypatch):
    """V = 40000 with 2**20-logit chunks of 26 rows: N = 64 spans three chunks (the last one partial)."""
    monkeypatch.setattr(_kernels, "_CHUNK_ELEMENTS", 1 << 20)
    n, v = 64, 40_000
    assert chunk_rows_for(n, v) == 26
    g = torch.Generator().manual_seed(1)
    z = 4 * torch.randn(2, n // 2, v, generator=g)
    y = torch.randint(0, v, (2, n // 2), generator=g)
    y[1, -5:] = IGNORE
    a = z.clone().requires_grad_()
    b = z.double().requires_grad_()
    loss = label_smoothed_cross_entropy(a, y, 0.1)
    # float64 reference: torch's float32 (B, V, T) path is itself off by ~1e-5 in the gradient here.
    ref = F.cross_entropy(b.transpose(1, 2), y, label_smoothing=0.1)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-4, atol=1e-8)


def test_public_loss_num_items_scales_the_gradient():
    z, y, _, _ = _rows()
    a = z.clone().requires_grad_()
    b = z.clone().requires_grad_()
    label_smoothed_cross_entropy(a, y, 0.1, num_items_in_batch=100).backward()
    (F.cross_entropy(b, y, label_smoothing=0.1, reduction="sum") / 100).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("vocab", [7, 300, 1280, 32001])
@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_topk_equals_torch_topk_and_max(vocab, k, dtype):
    """``row_topk`` (block maxima) against ``torch.topk`` (values, exactly) and ``torch.max`` (the arg-max
    first: the first maximum). bfloat16 rows of rounded values hold many ties; rows with a constant value,
    a maximum in the partial last block and a -inf entry are included."""
    g = torch.Generator().manual_seed(vocab + k)
    z = torch.randn(40, vocab, generator=g)
    if dtype == torch.bfloat16:
        z = (4 * z).round()
    z = z.to(dtype)
    z[0] = 1.0  # every entry tied
    z[1, -1] = 100.0  # the maximum in the last (partial) block
    z[2, vocab // 2] = float("-inf")
    values, indices = _kernels.row_topk(z, k)
    assert values.dtype == dtype and indices.shape == (40, k)
    assert torch.equal(values, z.topk(k, dim=1).values)
    assert torch.equal(indices[:, 0], z.max(dim=1).indices)
    assert torch.equal(z.gather(1, indices), values)
    assert all(len(set(row.tolist())) == k for row in indices)  # k distinct entries


# ---- z-loss (PaLM, OLMo): z_loss * lse(z)**2 per counted row, on the loss only --------------------------------
# These fail on the code before the change: `z_loss` did not exist (TypeError).


def _dense_z_loss(z, y, mask, w_hot, w_q, z_loss):
    """The dense definition plus ``z_loss * logsumexp(z)**2`` on counted rows, float64."""
    loss, nll = _dense(z, y, mask, w_hot, w_q)
    return loss + z_loss * torch.logsumexp(z.double(), -1).square() * mask, nll


@pytest.mark.parametrize("chunk_size", [3, 37])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_z_loss_values_and_gradient_equal_autograd_of_the_definition(chunk_size, dtype):
    """Loss, NLL (without the z-loss) and the gradient of ``sum(w * loss)`` against autograd through the dense
    float64 definition, on the logits' exact float32 upcast. Tolerance: 1e-5 (float32 arithmetic), and one
    rounding of the gradient to the logits' dtype."""
    z, _, y_safe, mask = _rows(dtype=dtype)
    a = z.clone().requires_grad_()
    loss, nll = label_smoothed_ce_rows(a, y_safe, mask, 0.9, 0.1, chunk_size=chunk_size, z_loss=0.02)
    b = z.double().requires_grad_()
    ref_loss, ref_nll = _dense_z_loss(b, y_safe, mask, 0.9, 0.1, 0.02)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(nll.double(), ref_nll, rtol=1e-5, atol=1e-5)
    weights = torch.rand(z.shape[0], dtype=torch.float64)
    (loss.double() * weights).sum().backward()
    (ref_loss * weights).sum().backward()
    assert a.grad.dtype == dtype
    eps = 1e-6 if dtype == torch.float32 else torch.finfo(dtype).eps
    torch.testing.assert_close(a.grad.double(), b.grad, rtol=eps, atol=eps)
    assert torch.count_nonzero(a.grad[~mask]) == 0


@pytest.mark.parametrize("output", ["loss", "nll", "both"])
def test_gradcheck_float64_with_z_loss(output):
    """Numerical Jacobians with the z-loss, also through the NLL (whose softmax is then recomputed)."""
    z, _, y_safe, mask = _rows(n=9, v=7, pad=(2,), scale=1.0, dtype=torch.float64)

    def f(x):
        loss, nll = label_smoothed_ce_rows(x, y_safe, mask, 0.75, 0.25, chunk_size=4, z_loss=0.3)
        return {"loss": loss, "nll": nll, "both": (loss, nll)}[output]

    assert torch.autograd.gradcheck(f, (z.clone().requires_grad_(),))


def test_z_loss_gradient_through_loss_and_nll_together():
    """``d(a*loss + b*nll)`` with the z-loss against the dense definition (float64, 1e-10)."""
    z, _, y_safe, mask = _rows()
    a = z.double().requires_grad_()
    loss, nll = label_smoothed_ce_rows(a, y_safe, mask, 0.8, 0.2, chunk_size=5, z_loss=0.05)
    (2.0 * loss.sum() + 3.0 * nll.sum()).backward()
    b = z.double().requires_grad_()
    ref_loss, ref_nll = _dense_z_loss(b, y_safe, mask, 0.8, 0.2, 0.05)
    (2.0 * ref_loss.sum() + 3.0 * ref_nll.sum()).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)
