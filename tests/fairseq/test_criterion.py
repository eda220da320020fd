"""The criterion ``ls_seq_label_smoothed_cross_entropy`` against fairseq's own ``label_smoothed_cross_entropy``,
torch's cross-entropy and dense-target formulas, and its refusal of bad options before training."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("fairseq")

LS = ("--criterion", "ls_seq_label_smoothed_cross_entropy")


def _fairseq_criterion(build, eps):
    """fairseq's own criterion, for the same task."""
    from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion

    task = build("--criterion", "label_smoothed_cross_entropy", "--label-smoothing", str(eps))[0]
    return LabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=eps)


def _grads(model):
    return {n: p.grad.detach().clone().double() for n, p in model.named_parameters() if p.grad is not None}


def assert_gradients_close(got, expected, tol=1e-5):
    """Every gradient within ``tol`` of its norm. The attention key biases have an exact gradient of 0 (a
    constant added to every key's score cancels in the softmax): theirs is rounding noise on both sides,
    checked to be below ``tol`` of the largest gradient instead."""
    assert got.keys() == expected.keys()
    scale = max(g.norm() for g in expected.values())
    for name in got:
        if name.endswith("k_proj.bias"):
            assert max(got[name].norm(), expected[name].norm()) <= tol * scale, name
        else:
            assert (got[name] - expected[name]).norm() <= tol * expected[name].norm(), name


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_fairseq_convention_equals_fairseqs_criterion_on_a_batch(build, eps):
    """Loss, nll_loss, sample size and every gradient equal fairseq's. Reference: fairseq's criterion;
    tolerance (float32, another order of operations): 1e-6 relative for the sums, 1e-5 of each gradient's
    norm (:func:`assert_gradients_close`)."""
    _, model, ours, sample = build(*LS, "--label-smoothing", str(eps), "--ls-convention", "fairseq")
    reference = _fairseq_criterion(build, eps)
    model.train()
    loss, size, log = ours(model, sample)
    loss.backward()
    got = _grads(model)
    model.zero_grad()
    ref_loss, ref_size, ref_log = reference(model, sample)
    ref_loss.backward()
    expected = _grads(model)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(log["nll_loss"], ref_log["nll_loss"], rtol=1e-6, atol=0)
    assert size == ref_size == sample["ntokens"] and log["ntokens"] == ref_log["ntokens"]
    assert_gradients_close(got, expected)


@pytest.mark.slow
def test_fairseq_kernel_trains_bit_identically_to_fairseqs_criterion_for_30_updates(
    data_bin, tmp_path, fairseq_train, load_state
):
    """``--ls-kernel fairseq --ls-convention fairseq``: same seed, 30 Adam updates, every parameter and every
    Adam moment bit-identical to fairseq's own ``label_smoothed_cross_entropy`` (``torch.equal``)."""
    common = ["--label-smoothing", "0.1", "--max-update", "30"]
    fairseq_train(data_bin.path, tmp_path / "fairseq", "--criterion", "label_smoothed_cross_entropy", *common)
    fairseq_train(data_bin.path, tmp_path / "ls_seq", *LS, "--ls-convention", "fairseq", "--ls-kernel", "fairseq", *common)
    ref = load_state(tmp_path / "fairseq" / "checkpoint_last.pt")
    got = load_state(tmp_path / "ls_seq" / "checkpoint_last.pt")
    assert got["optimizer_history"][-1]["num_updates"] == ref["optimizer_history"][-1]["num_updates"] == 30
    assert got["model"].keys() == ref["model"].keys() and len(ref["model"]) > 10
    different = [name for name, expected in ref["model"].items() if not torch.equal(got["model"][name], expected)]
    assert different == []
    ref_moments = ref["last_optimizer_state"]["state"]
    got_moments = got["last_optimizer_state"]["state"]
    assert ref_moments.keys() == got_moments.keys()
    for key, state in ref_moments.items():
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(got_moments[key][name], state[name]), (key, name)


@pytest.mark.parametrize("convention", ["uniform", "fairseq"])
def test_fairseq_kernel_equals_the_fused_kernel_on_a_batch(build, convention):
    """The two kernels compute the same loss: ``--ls-kernel fairseq`` (fairseq's formula, for the uniform
    convention with eps = alpha (V - 1) / V) against the fused one. Tolerance (float32, other order of
    operations): 1e-6 relative for the sums, 1e-5 of each gradient's norm; per-token losses to 1e-5."""
    flags = ("--label-smoothing", "0.2", "--ls-convention", convention)
    _, model, fused, sample = build(*LS, *flags)
    exact = build(*LS, *flags, "--ls-kernel", "fairseq")[2]
    assert (fused.kernel, exact.kernel) == ("fused", "fairseq")
    model.train()
    results = {}
    for name, criterion in (("fused", fused), ("fairseq", exact)):
        model.zero_grad()
        loss, _, log = criterion(model, sample)
        loss.backward()
        net_output = model(**sample["net_input"])
        logits, target = criterion.logits_and_target(model, net_output, sample)
        per_token = criterion.compute_loss_from_logits(logits, target, reduce=False)
        results[name] = (loss.detach(), log["nll_loss"], _grads(model), per_token)
    (loss_a, nll_a, grads_a, tok_a), (loss_b, nll_b, grads_b, tok_b) = results["fused"], results["fairseq"]
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-6, atol=0)
    torch.testing.assert_close(nll_b, nll_a, rtol=1e-6, atol=0)
    assert_gradients_close(grads_b, grads_a)
    for a, b in zip(tok_a, tok_b):
        assert a.shape == b.shape == sample["target"].shape
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_fairseq_convention_trains_like_fairseqs_criterion_for_30_updates(data_bin, tmp_path, fairseq_train, load_state):
    """The fused kernel: same seed, same 30 Adam updates: the logged losses are equal and the parameters agree to 1e-6.

    Not bit for bit: the ls-seq loss computes the gradient softmax - target in one pass, fairseq's autograd
    goes through log_softmax, so gradients differ in the last float32 bit. Adam turns that into parameter
    differences of ~1e-7, except for the attention key biases, whose exact gradient is 0 (a constant added
    to every key's score cancels in the softmax): both runs update them by rounding noise, which Adam scales
    to O(lr) steps, so they are compared within the bound 30 updates x lr x 1.01.
    """
    common = ["--label-smoothing", "0.1", "--max-update", "30"]
    ref_log = fairseq_train(data_bin.path, tmp_path / "fairseq", "--criterion", "label_smoothed_cross_entropy", *common)
    got_log = fairseq_train(data_bin.path, tmp_path / "ls_seq", *LS, "--ls-convention", "fairseq", *common)

    def losses(lines):
        return [(s["num_updates"], s["loss"], s["nll_loss"]) for tag, s in lines if tag == "train_inner"]

    assert losses(got_log) == losses(ref_log) and len(losses(ref_log)) == 3  # 3-decimal logs at updates 10, 20, 30
    ref = load_state(tmp_path / "fairseq" / "checkpoint_last.pt")
    got = load_state(tmp_path / "ls_seq" / "checkpoint_last.pt")
    assert got["optimizer_history"][-1]["num_updates"] == ref["optimizer_history"][-1]["num_updates"] == 30
    for name, expected in ref["model"].items():
        if name.endswith("k_proj.bias"):
            assert (got["model"][name] - expected).abs().max() <= 30 * 1e-3 * 1.01, name
        else:
            torch.testing.assert_close(got["model"][name], expected, rtol=0, atol=1e-6, msg=name)


def test_uniform_convention_equals_ls_seq_and_torch_cross_entropy(build):
    """``--ls-convention uniform``: the loss is ``label_smoothed_cross_entropy(..., convention="uniform")`` (exact)
    and torch's ``cross_entropy(label_smoothing=alpha)`` (reference, 1e-6 relative)."""
    from ls_seq import label_smoothed_cross_entropy

    _, model, criterion, sample = build(*LS, "--label-smoothing", "0.2", "--ls-convention", "uniform")
    loss, _, log = criterion(model, sample)
    with torch.no_grad():
        logits = model(**sample["net_input"])[0]
    target, pad = sample["target"], criterion.padding_idx
    ls_loss, ls_nll = label_smoothed_cross_entropy(
        logits, target, 0.2, convention="uniform", reduction="sum", ignore_index=pad, return_nll=True
    )
    assert torch.equal(loss.detach(), ls_loss) and torch.equal(log["nll_loss"], ls_nll)
    flat = logits.reshape(-1, logits.shape[-1])
    ref = F.cross_entropy(flat, target.reshape(-1), ignore_index=pad, label_smoothing=0.2, reduction="sum")
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(
        log["nll_loss"], F.cross_entropy(flat, target.reshape(-1), ignore_index=pad, reduction="sum"), rtol=1e-6, atol=0
    )


def test_unigram_prior_is_the_training_targets_token_frequencies(build, data_bin):
    """``--ls-prior unigram`` counts the binarised training targets: every target token and one ``</s>`` per
    sentence, plus 1 per class. Reference: the same count over the tokenized text file, mapped through the
    dictionary (exact in float64); the loss against a dense target built from it (1e-5 relative)."""
    task, model, criterion, sample = build(*LS, "--label-smoothing", "0.1", "--ls-prior", "unigram")
    vocab = task.target_dictionary
    counts = torch.zeros(len(vocab), dtype=torch.float64)
    for line in data_bin.token_lines("train"):
        for token in line.split():
            counts[vocab.index(token)] += 1
        counts[vocab.eos()] += 1
    expected = (counts + 1.0) / (counts.sum() + len(vocab))
    torch.testing.assert_close(criterion.prior, expected, rtol=0, atol=1e-15)
    # the source side has tokens the target never uses: a joined dictionary's counts would be another prior
    assert criterion.prior[vocab.index("▁a")] == expected[vocab.index("▁a")]

    loss, _, _ = criterion(model, sample)
    with torch.no_grad():
        logits = model(**sample["net_input"])[0].double()
    mask = sample["target"] != criterion.padding_idx
    log_p = F.log_softmax(logits, -1)[mask]  # (n, V)
    dense = 0.9 * F.one_hot(sample["target"][mask], len(vocab)).double() + 0.1 * expected  # (n, V)
    torch.testing.assert_close(loss.detach().double(), -(dense * log_p).sum(), rtol=1e-5, atol=0)


def test_prior_file_and_confidence_penalty(build, tmp_path):
    """A prior from a JSON file is used as given; ``--confidence-penalty beta`` subtracts ``beta * H(p)``.
    Reference: dense target and torch's entropy in float64, 1e-5 relative; gradients of both terms 1e-5."""
    vocab = len(build(*LS)[0].target_dictionary)
    prior = torch.rand(vocab, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    prior /= prior.sum()
    path = tmp_path / "prior.json"
    path.write_text(json.dumps(prior.tolist()))
    _, model, criterion, sample = build(*LS, "--label-smoothing", "0.1", "--ls-prior", str(path), "--confidence-penalty", "0.5")
    torch.testing.assert_close(criterion.prior, prior, rtol=0, atol=0)
    loss, _, log = criterion(model, sample)
    loss.backward()
    got = _grads(model)
    model.zero_grad()
    logits = model(**sample["net_input"])[0].double()
    mask = sample["target"] != criterion.padding_idx
    log_p = F.log_softmax(logits, -1)[mask]  # (n, V)
    dense = 0.9 * F.one_hot(sample["target"][mask], vocab).double() + 0.1 * prior
    entropy = -(log_p.exp() * log_p).sum()
    ref = -(dense * log_p).sum() - 0.5 * entropy
    ref.backward()
    torch.testing.assert_close(loss.detach().double(), ref.detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(
        log["nll_loss"].double(), -log_p.gather(1, sample["target"][mask][:, None]).sum().detach(), rtol=1e-5, atol=0
    )
    assert_gradients_close(got, _grads(model))  # float32 against float64


def test_reduce_metrics_logs_fairseqs_loss_and_nll_in_base_2(build):
    """``loss``/``nll_loss``/``ppl`` are fairseq's (sums / tokens / ln 2); training steps carry no calibration."""
    from fairseq.logging import metrics

    _, model, criterion, sample = build(*LS, "--label-smoothing", "0.1")
    model.train()
    _, _, log = criterion(model, sample)
    assert not any(k.startswith("_calibration") for k in log)
    with metrics.aggregate(new_root=True) as agg:
        type(criterion).reduce_metrics([log, log])
        values = agg.get_smoothed_values()
    assert values["loss"] == round(float(log["loss"]) / sample["ntokens"] / math.log(2), 3)
    assert values["nll_loss"] == round(float(log["nll_loss"]) / sample["ntokens"] / math.log(2), 3)
    assert "ece" not in values


# ------------------------------------------------------------------------------------------------------
# Bad input: fairseq's argument error, or a ValueError naming the option, before any training


def _write_prior(path, n):
    path.write_text(json.dumps([1.0 / n] * n))
    return str(path)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--label-smoothing", "1.0"], r"`label_smoothing` must be in \[0, 1\), got 1.0"),
        (["--label-smoothing", "-0.1"], r"`label_smoothing` must be in \[0, 1\), got -0.1"),
        (["--calibration-temperatures", "0,1.5"], r"`calibration_temperatures\[0\]` must be finite and > 0, got 0.0"),
        (["--calibration-temperatures", "1.0,-2"], r"`calibration_temperatures\[1\]` must be finite and > 0, got -2.0"),
        (["--ls-prior", "PRIOR_V+1"], r"`ls_prior` must have shape \(\d+,\) to match the logits, got \(\d+,\)"),
        (["--ls-prior", "unigram", "--ls-convention", "fairseq"], r"needs --ls-convention uniform"),
        (
            ["--ls-prior", "no/such/file.json"],
            r"`ls_prior` must be one of \('uniform', 'unigram'\) or the path of an existing file",
        ),
        (["--confidence-penalty", "-1"], r"`confidence_penalty` must be finite and >= 0, got -1.0"),
        (["--ls-kernel", "fairseq", "--ls-prior", "unigram"], r"`ls_kernel` 'fairseq' smooths towards the uniform"),
        (["--calibration-bins", "0"], r"`calibration_bins` must be an int >= 1, got 0"),
    ],
)
def test_bad_options_raise_before_training(build, data_bin, tmp_path, fairseq_train, flags, message):
    vocab = len(build(*LS)[0].target_dictionary)
    flags = [_write_prior(tmp_path / "prior.json", vocab + 1) if f == "PRIOR_V+1" else f for f in flags]
    with pytest.raises(ValueError, match=message):
        fairseq_train(data_bin.path, tmp_path / "ckpt", *LS, "--max-update", "5", *flags)
    assert not list((tmp_path / "ckpt").glob("*.pt"))  # nothing trained, nothing saved


def test_unknown_convention_is_fairseqs_argument_error(data_bin, tmp_path, fairseq_train, capsys):
    with pytest.raises(SystemExit) as exit_info:
        fairseq_train(data_bin.path, tmp_path, *LS, "--ls-convention", "hinton")
    assert exit_info.value.code == 2
    assert "argument --ls-convention: invalid choice: 'hinton' (choose from 'uniform', 'fairseq')" in capsys.readouterr().err
