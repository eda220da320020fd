"""The census in CI: a fixed sample of transformers' generation classes through every ls-seq route.

Reference and tolerances: ``census.census_core`` (``F.cross_entropy(label_smoothing=alpha)`` on the aligned
logits plus the model's own extra terms, autograd gradients; loss rtol 1e-5 / atol 1e-6, gradients within a
relative norm of 1e-4). A route may be exact, refused by ls-seq with a reason, or skipped because the tiny
model itself cannot be built; it must never be silently different (``differs``) or crash (``error``).

The full census (every class, ``docs/census.md``) is ``python tests/census/census.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from census.census_core import ROUTES, check_class
from census.sample import SAMPLE
from census.tiny_models import registry_classes

DOC = Path(__file__).resolve().parents[2] / "docs" / "census.md"
ALLOWED = {"exact", "refused", "skipped"}
# Skips that are the tiny model's own trouble (its config, its inputs), never ls-seq's.
MODEL_SKIPS = ("skipped: build:", "skipped: inputs:", "skipped: forward:")


@pytest.fixture(scope="module")
def results():
    torch.set_num_threads(1)
    entries = registry_classes()
    return {name: check_class(entries[name], timeout=120) for name in SAMPLE}


def test_the_sample_is_in_the_registries():
    missing = sorted(set(SAMPLE) - set(registry_classes()))
    assert not missing, f"sample classes no longer in transformers' registries: {missing}"


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("name", SAMPLE)
def test_route_is_exact_or_refused(results, name, route):
    res = results[name]
    status = res.routes[route]
    assert status.split(":", 1)[0] in ALLOWED, f"{name} {route}: {status} (model loss: {res.model_loss})"
    if status.startswith("skipped"):
        assert status.startswith(MODEL_SKIPS), f"{name} {route}: skipped for a reason of the census: {status}"


def test_the_core_sample_builds():
    """The families the promise is about must not hide behind a skip."""
    entries = registry_classes()
    for name in (
        "LlamaForCausalLM",
        "MixtralForCausalLM",
        "Gemma2ForCausalLM",
        "BartForConditionalGeneration",
        "T5ForConditionalGeneration",
        "WhisperForConditionalGeneration",
    ):
        res = check_class(entries[name], routes=("R1",))
        assert not res.routes["R1"].startswith("skipped"), f"{name}: {res.routes['R1']}"


def test_every_registry_class_is_in_the_census_doc():
    """A transformers upgrade that adds classes shows here: rerun the census to cover them."""
    if not DOC.exists():
        pytest.fail(f"{DOC} is missing: run `python tests/census/census.py` to generate it")
    listed = set(re.findall(r"^\| [^|]+ \| `([^`]+)` \|", DOC.read_text(), flags=re.MULTILINE))
    missing = sorted(set(registry_classes()) - listed)
    assert not missing, (
        f"{len(missing)} class(es) of transformers' registries are not in docs/census.md ({missing[:10]}...): "
        "rerun `python tests/census/census.py` (full registries) and commit the new docs/census.md"
    )
