"""2 processes equal 1: torchrun --nproc_per_node 2 (gloo, CPU) runs ddp_checks.py once; each test checks one part.

References are computed here, in one process: TokenCalibration on all tokens, a hand-made SGD step on the
whole batch (``_helpers.families.sgd_reference``), and each calibration route under a 1-process Trainer.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _helpers.families import calibration_routes, family_examples, family_model, sgd_reference
from _helpers.tiny import (
    CALIB_CLASSES,
    TEMPERATURES,
    VOCAB,
    calibration_rows,
    collate,
    model_logits,
    tiny_dataset,
    tiny_examples,
    tiny_model,
)

from ls_seq.calibration.metric import TokenCalibration
from ls_seq.io import read_json

pytestmark = pytest.mark.distributed
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")])),
    }  # distributed.*
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(HERE.parent / "_helpers" / "ddp_checks.py"),
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return {
        "results": read_json(out / "results.json"),
        "params": torch.load(out / "params.pt", weights_only=True),
        "stdout": proc.stdout,
        "out": out,
    }


def test_token_calibration_uneven_split_equals_one_process(ddp_run):
    """Every measure, the bootstrap interval included, sums across processes to the 1-process numbers."""
    got = ddp_run["results"]["token_calibration"]
    logits, labels = calibration_rows()
    ref = TokenCalibration(n_bins=10, temperatures=TEMPERATURES, classes=CALIB_CLASSES)
    ref.update(logits, labels)
    result = ref.compute()
    assert {"ece_low", "ece_mass", "classwise_ece", "sequence_ece", "brier"} <= set(result)
    for name, value in result.items():
        torch.testing.assert_close(torch.tensor(got[name], dtype=torch.float64), value, rtol=1e-9, atol=1e-12, msg=name)
    torch.testing.assert_close(torch.tensor(got["reliability_count"], dtype=torch.float64), ref.reliability()["count"])
    torch.testing.assert_close(torch.tensor(got["reliability_mass_count"], dtype=torch.float64), ref.reliability("mass")["count"])


def test_trainer_step_on_two_ranks_equals_one_big_batch(ddp_run):
    """2 ranks x batch 4 x 2 accumulation steps == one SGD step on the token-mean loss of all 16 examples."""
    base = tiny_model("marian", seed=2)
    ref = copy.deepcopy(base).train()
    full = collate(tiny_examples(16, seed=5))
    logits = model_logits(ref, full)
    loss = F.cross_entropy(logits.reshape(-1, VOCAB), full["labels"].reshape(-1), label_smoothing=0.1)
    loss.backward()
    params = ddp_run["params"]
    for name, p in ref.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(params[name], (p - 0.5 * p.grad).detach(), rtol=1e-5, atol=1e-6, msg=name)
    log = ddp_run["results"]["trainer_log"]
    nll = F.cross_entropy(logits.reshape(-1, VOCAB), full["labels"].reshape(-1))
    assert log["loss"] == pytest.approx(loss.item(), rel=1e-5)
    assert log["nll_loss"] == pytest.approx(nll.item(), rel=1e-5)
    trainers = 1 + 4 + 2 * 2  # the step, the fused families, two logged steps of each MoE run
    assert ddp_run["stdout"].count("'nll_loss'") == trainers, "only the main process prints the training logs"


def test_trainer_eval_loss_on_two_ranks_is_the_token_mean(ddp_run):
    """13 examples over 2 ranks x batch 4 (accelerate repeats 3 samples to fill the last global batch): the
    evaluation loss is the exact token mean of the whole set, as in one process (it was HF's mean of per-batch
    means, which moves with the batch size and the number of processes)."""
    model = tiny_model("marian", seed=2).eval()
    batch = collate(tiny_examples(13, seed=9))
    with torch.no_grad():
        logits = model_logits(model, batch)
    expected = F.cross_entropy(logits.reshape(-1, VOCAB), batch["labels"].reshape(-1), label_smoothing=0.1)
    assert ddp_run["results"]["eval_loss"] == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("name", ["moe", "moe_fused"])
def test_moe_router_loss_on_two_ranks_equals_one_process(ddp_run, tmp_path, name):
    """A Mixtral's router loss is not a token mean, so the reference is 1 process over the same micro-batches
    (4 x 2 accumulation steps, in order), fused or not: same parameters after 2 steps, same logged loss."""
    from _helpers.ddp_checks import MOE_RUNS, check_moe_step

    one = check_moe_step(tmp_path, name, 1, **MOE_RUNS[name])
    two = ddp_run["results"]["moe_logs"][name]
    ref = torch.load(tmp_path / f"params_{name}.pt", weights_only=True)
    params = torch.load(ddp_run["out"] / f"params_{name}.pt", weights_only=True)
    for key, expected in ref.items():
        torch.testing.assert_close(params[key], expected, rtol=1e-5, atol=1e-6, msg=key)
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
    assert two["nll_loss"] == pytest.approx(one["nll_loss"], rel=1e-5)


@pytest.mark.parametrize("family", ["marian", "gpt2", "llama", "gemma2"])
def test_fused_loss_on_two_ranks_equals_one_big_batch(ddp_run, family):
    """The fused loss runs inside the DDP-wrapped forward, so gradients are all-reduced: 2 ranks x 4 x 2 == 16."""
    ref, ref_loss, ref_nll = sgd_reference(family, family_model(family, seed=2), family_examples(family, 16, seed=5), 0.1, 0.5)
    params = torch.load(ddp_run["out"] / f"params_fused_{family}.pt", weights_only=True)
    for name, expected in ref.items():
        torch.testing.assert_close(params[name], expected, rtol=1e-5, atol=1e-6, msg=name)
    log = ddp_run["results"]["fused_logs"][family]
    assert log["loss"] == pytest.approx(ref_loss, rel=1e-5)
    assert log["nll_loss"] == pytest.approx(ref_nll, rel=1e-5)


@pytest.mark.parametrize("wrap", ["layers", "root"])
@pytest.mark.parametrize("family", ["marian", "gpt2", "llama", "gemma2"])
def test_fused_loss_under_fsdp2_equals_one_big_batch(ddp_run, family, wrap):
    """The fused loss attached inside the sharded forward: FSDP's backward hooks fire, the gradients are
    reduce-scattered, and 2 ranks x 4 x 2 equal one step on all 16 examples, sharded per layer or as a whole.
    Before the loss was attached ahead of FSDP's post-forward hook, a causal LM sharded as a whole never
    reached FSDP's backward (its outputs are only the empty logits, which the loss does not depend on): its
    gradients were neither reduced nor resharded, and GPT-2's parameters came out 0.12 from the reference."""
    ref, _, _ = sgd_reference(family, family_model(family, seed=2), family_examples(family, 16, seed=5), 0.1, 0.5)
    params = torch.load(ddp_run["out"] / f"params_fsdp2_{wrap}_{family}.pt", weights_only=True)
    for name, expected in ref.items():
        torch.testing.assert_close(params[name], expected, rtol=1e-5, atol=1e-6, msg=name)


def test_unsynchronised_training_is_refused(ddp_run):
    assert "DistributedDataParallel" in ddp_run["results"]["evaluate_then_train_error"]


CALIBRATION_KEYS = (
    "ece",
    "mce",
    "rms",
    "nll",
    "accuracy",
    "mean_confidence",
    "best_temperature",
    "brier",
    "topk_ece",
    "sequence_ece",
    "exact_match",
    "ece_at_best_temperature",
    "nll_at_best_temperature",
)


def test_every_calibration_route_on_two_ranks_equals_one_process(ddp_run, tmp_path):
    """13 examples: the last global batch of 2 ranks x 4 holds 3 samples accelerate repeats; none may count."""
    two = ddp_run["results"]["calibration"]
    n_tokens = {"in_loop": None, "callback": sum(len(x) for x in tiny_dataset(13, seed=11)["labels"]), "metrics_pair": None}
    for route, one in calibration_routes(tmp_path, plot=False).items():
        if n_tokens[route] is not None:
            assert one["eval_n_tokens"] == n_tokens[route]
        assert two[route]["eval_n_tokens"] == one["eval_n_tokens"], f"{route}: padding samples counted twice"
        for key in CALIBRATION_KEYS:
            assert two[route][f"eval_{key}"] == pytest.approx(one[f"eval_{key}"], rel=1e-5, abs=1e-7), f"{route}: {key}"
    assert (ddp_run["out"] / "calib" / "eval_reliability_step0.png").is_file()
