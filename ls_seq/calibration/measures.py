r"""The calibration schema: what a calibration pass accumulates and what it reports, one definition per measure.

A :class:`Measure` declares its state (named float64 sums of fixed shape, added across batches and processes),
how one batch's :class:`~ls_seq.functional.statistics.TokenStatistics` update it, and the :class:`Field`\ s it
reports from summed state, each a tensor over the temperature grid. :class:`ls_seq.calibration.schema.CalibrationSchema` runs the enabled
measures; :class:`ls_seq.calibration.metric.TokenCalibration` (streaming, distributed), :class:`ls_seq.CalibrationComputeMetrics`
(HF's evaluation loop), the callback, the CLI and the studies all read their numbers, names and help texts
from here. Adding a measure is one entry in :data:`MEASURES`.

The measures (``T`` temperatures, ``B`` bins; ``N`` scored tokens):

* ``tokens`` (always): ``n_tokens``, ``accuracy``, ``mean_confidence``, ``nll``.
* ``width``: top-label ECE / MCE / RMS and the debiased RMS of Kumar, Liang & Ma (2019), on ``B``
  equal-width bins ``[k/B, (k+1)/B)`` (confidence 1 in the last). State ``3 T B``.
* ``mass``: the same on ``B`` equal-mass (adaptive) bins, merged at compute time from a fixed fine histogram
  of ``F`` bins uniform in ``logit(confidence)``, so each bin holds about ``N / B`` tokens (a fine bin is never
  split). State ``3 T F``.
* ``brier``: the multi-class Brier score ``mean sum_k (p_k - y_k)^2``. State ``T``.
* ``bootstrap``: percentile confidence intervals (and standard errors) of the equal-width ECE, the accuracy
  and the NLL from ``R`` Poisson-bootstrap replicates of the per-bin sums (:mod:`ls_seq.functional.bootstrap`):
  no token is stored, and the weights depend on the token only, so any batching and any number of processes
  give the same intervals. State ``3 R T B + R T``.
* ``classwise``: the class-wise ECE (Kull et al. 2019) over given classes (e.g. the most frequent tokens):
  for class ``c`` every token's ``p_c`` is binned against ``[label = c]``; the mean over classes. State
  ``3 T K B``.
* ``top_k``: top-k confidence calibration: is the label among the ``k`` largest logits as often as their
  probability mass says (binned like ``width``). State ``3 T B + 1``.
* ``sequence``: sequence-level calibration (a row is a sequence): the model probability of the reference,
  ``exp(sum_t log p_t)``, against exact match (every teacher-forced arg-max right), and its geometric mean
  ``exp(mean_t log p_t)`` against the sequence's token accuracy (Kumar & Sarawagi 2019; Ott et al. 2018),
  each on ``B`` equal-width bins. State ``6 T B + 2``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ls_seq.checks import check_alpha, check_positive_int, check_temperatures
from ls_seq.functional.bootstrap import poisson_weights, token_keys
from ls_seq.functional.calibration import binned_errors, merge_equal_mass
from ls_seq.functional.statistics import TokenStatistics, binned_sums, fine_bins, width_bins

__all__ = [
    "DEFAULT_MEASURES",
    "MEASURES",
    "CalibrationConfig",
    "Field",
    "Measure",
    "bootstrap_replicates",
]


@dataclass(frozen=True)
class Field:
    """One reported value: its name (the key in every output), what it is, and which way is better."""

    name: str
    doc: str
    lower_is_better: bool | None = True


@dataclass(frozen=True)
class CalibrationConfig:
    """What a calibration pass measures; checked once, here.

    Args:
        n_bins: equal-width (and equal-mass) bins.
        temperatures: the grid ``T > 0``; None measures T = 1 and reports 0-dim values.
        ignore_index: label value that is not scored (padding, masked prompt tokens).
        measures: names from :data:`MEASURES` (``tokens`` is always included).
        fine_bins: fine histogram of the ``mass`` measure.
        bootstrap_replicates: replicates of the ``bootstrap`` measure.
        bootstrap_level: confidence level of its intervals.
        seed: seed of its Poisson weights.
        top_k: ``k`` of the ``top_k`` measure.
        classes: class ids of the ``classwise`` measure (required for it).
    """

    n_bins: int = 15
    temperatures: tuple[float, ...] | None = None
    ignore_index: int = -100
    measures: tuple[str, ...] = ()
    fine_bins: int = 2048
    bootstrap_replicates: int = 200
    bootstrap_level: float = 0.95
    seed: int = 0
    top_k: int = 5
    classes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        check_positive_int(self.n_bins, "n_bins")
        if self.temperatures is not None:
            object.__setattr__(self, "temperatures", tuple(check_temperatures(self.temperatures)))
        if isinstance(self.ignore_index, bool) or not isinstance(self.ignore_index, int):
            raise TypeError(f"`ignore_index` must be an int, got {type(self.ignore_index).__name__}")
        if isinstance(self.measures, str):
            raise TypeError(f"`measures` must be a sequence of measure names, got the string {self.measures!r}")
        unknown = [m for m in self.measures if m not in MEASURES]
        if unknown:
            raise ValueError(f"`measures` must be names from {sorted(MEASURES)}, got {unknown}")
        names = tuple(dict.fromkeys(("tokens", *self.measures)))  # tokens first, no repeats, order kept
        object.__setattr__(self, "measures", names)
        check_positive_int(self.fine_bins, "fine_bins", minimum=2)
        check_positive_int(self.bootstrap_replicates, "bootstrap_replicates", minimum=2)
        level = check_alpha(self.bootstrap_level, "bootstrap_level", allow_one=False)
        if level <= 0:
            raise ValueError(f"`bootstrap_level` must be in (0, 1), got {level}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"`seed` must be an int, got {type(self.seed).__name__}")
        check_positive_int(self.top_k, "top_k")
        if "classwise" in names:
            if not self.classes:
                raise ValueError("the `classwise` measure needs `classes`: the class (token) ids to measure")
            object.__setattr__(
                self, "classes", tuple(check_positive_int(int(c), f"classes[{i}]", minimum=0) for i, c in enumerate(self.classes))
            )

    @property
    def n_temperatures(self) -> int:
        return 1 if self.temperatures is None else len(self.temperatures)

    def temperature_tensor(self, device: Any = None) -> torch.Tensor:
        return torch.tensor(self.temperatures or (1.0,), dtype=torch.float64, device=device)


@dataclass(frozen=True)
class Groups:
    """Sums kept apart per group (per row of the batch, for HF's per-sample gathers); None: one sum."""

    of_token: torch.Tensor  # (n,) group of each token
    of_row: torch.Tensor  # (n_rows,) group of each row
    n: int


State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Measure:
    """One calibration measure: its state, its update from a batch's token statistics, its fields.

    ``state(config)`` gives each state's shape; ``update(stats, config, groups)`` one batch's increments
    (with ``groups``, a leading group dimension); ``compute(state, config)`` the fields (each ``(T,)``);
    ``reliability(state, config)`` optional per-bin curves ``(T, B)``; ``needs`` the optional token
    statistics it reads (``brier``, ``top_k``, ``classes``).
    """

    name: str
    doc: str
    fields: tuple[Field, ...]
    state: Callable[[CalibrationConfig], dict[str, tuple[int, ...]]]
    update: Callable[[TokenStatistics, CalibrationConfig, Groups | None], State]
    compute: Callable[[State, CalibrationConfig], State]
    reliability: Callable[[State, CalibrationConfig], State] | None = None
    needs: frozenset[str] = field(default_factory=frozenset)


# ---- shared pieces --------------------------------------------------------------------------------------------


def _sums(
    bins: torch.Tensor,
    conf: torch.Tensor,
    outcome: torch.Tensor,
    n_bins: int,
    groups: Groups | None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    if groups is None:
        return binned_sums(bins, conf, outcome, n_bins, weights=weights)
    return binned_sums(bins, conf, outcome, n_bins, group=groups.of_token, n_groups=groups.n, weights=weights)


def _token_sum(values: torch.Tensor, groups: Groups | None) -> torch.Tensor:
    """Sum over tokens (last dim) of ``values`` (``(..., n)``), per group when asked."""
    values = values.double()
    if groups is None:
        return values.sum(-1)
    out = torch.zeros(values.shape[:-1] + (groups.n,), dtype=torch.float64, device=values.device)
    return out.index_add_(-1, groups.of_token, values).movedim(-1, 0)


def _bins_state(
    prefix: str, lead: Callable[[CalibrationConfig], tuple[int, ...]], bins: Callable[[CalibrationConfig], int]
) -> Callable[[CalibrationConfig], dict[str, tuple[int, ...]]]:
    def shapes(config: CalibrationConfig) -> dict[str, tuple[int, ...]]:
        shape = lead(config) + (bins(config),)
        return {f"{prefix}_count": shape, f"{prefix}_confidence": shape, f"{prefix}_correct": shape}

    return shapes


def _bin_triple(state: State, prefix: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return state[f"{prefix}_count"], state[f"{prefix}_confidence"], state[f"{prefix}_correct"]


def _curves(
    count: torch.Tensor, confidence: torch.Tensor, correct: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor
) -> State:
    """Reliability curves: per-bin edges, mean confidence and accuracy (0 in empty bins), count."""
    safe = count.clamp_min(1)
    return {"lower": lower, "upper": upper, "confidence": confidence / safe, "accuracy": correct / safe, "count": count.clone()}


def _width_edges(count: torch.Tensor, n_bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64, device=count.device)
    return edges[:-1].expand_as(count).clone(), edges[1:].expand_as(count).clone()


def _temps(config: CalibrationConfig) -> tuple[int, ...]:
    return (config.n_temperatures,)


def _n(state: State) -> torch.Tensor:
    return state["tokens_n"]


# ---- tokens ---------------------------------------------------------------------------------------------------


def _tokens_state(config: CalibrationConfig) -> dict[str, tuple[int, ...]]:
    t = config.n_temperatures
    return {"tokens_n": (), "tokens_correct": (), "tokens_nll": (t,), "tokens_confidence": (t,)}


def _tokens_update(stats: TokenStatistics, config: CalibrationConfig, groups: Groups | None) -> State:
    ones = torch.ones(stats.n, dtype=torch.float64, device=stats.label.device)
    return {
        "tokens_n": _token_sum(ones, groups),
        "tokens_correct": _token_sum(stats.correct, groups),
        "tokens_nll": _token_sum(-stats.log_prob, groups),
        "tokens_confidence": _token_sum(stats.confidence, groups),
    }


def _tokens_compute(state: State, config: CalibrationConfig) -> State:
    n, t = _n(state).clamp_min(1), config.n_temperatures
    return {
        "n_tokens": _n(state).expand(t).clone(),
        "accuracy": (state["tokens_correct"] / n).expand(t).clone(),
        "mean_confidence": state["tokens_confidence"] / n,
        "nll": state["tokens_nll"] / n,
    }


# ---- equal-width bins --------------------------------------------------------------------------------------


def _width_update(stats: TokenStatistics, config: CalibrationConfig, groups: Groups | None) -> State:
    count, conf, correct = _sums(
        width_bins(stats.confidence, config.n_bins), stats.confidence, stats.correct, config.n_bins, groups
    )
    return {"width_count": count, "width_confidence": conf, "width_correct": correct}


def _width_compute(state: State, config: CalibrationConfig) -> State:
    return binned_errors(*_bin_triple(state, "width"))


def _width_reliability(state: State, config: CalibrationConfig) -> State:
    count, conf, correct = _bin_triple(state, "width")
    return _curves(count, conf, correct, *_width_edges(count, config.n_bins))


# ---- equal-mass bins ---------------------------------------------------------------------------------------


def _mass_update(stats: TokenStatistics, config: CalibrationConfig, groups: Groups | None) -> State:
    count, conf, correct = _sums(
        fine_bins(stats.confidence, config.fine_bins), stats.confidence, stats.correct, config.fine_bins, groups
    )
    return {"mass_count": count, "mass_confidence": conf, "mass_correct": correct}


def _mass_merged(state: State, config: CalibrationConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return merge_equal_mass(*_bin_triple(state, "mass"), config.n_bins)


def _mass_compute(state: State, config: CalibrationConfig) -> State:
    return {f"{k}_mass": v for k, v in binned_errors(*_mass_merged(state, config)).items()}


def _mass_reliability(state: State, config: CalibrationConfig) -> State:
    count, conf, correct = _mass_merged(state, config)
    # Edges of a merged bin: its lowest and highest confidence are not kept; its mean is drawn at its place.
    mean = conf / count.clamp_min(1)
    return _curves(count, conf, correct, mean, mean)


# ---- Brier score -------------------------------------------------------------------------------------------


def _brier_update(stats: TokenStatistics, config: CalibrationConfig, groups: Groups | None) -> State:
    # sum_k (p_k - y_k)^2 = sum_k p_k^2 - 2 p_y + 1
    assert stats.sum_sq is not None  # this measure needs "brier": the schema asked for sum_sq
    per_token = stats.sum_sq.double() - 2 * stats.log_prob.double().exp() + 1  # (T, n)
    return {"brier_sum": _token_sum(per_token, groups)}


def _brier_compute(state: State, config: CalibrationConfig) -> State:
    return {"brier": state["brier_sum"] / _n(state).clamp_min(1)}


# ---- bootstrap ---------------------------------------------------------------------------------------------


def _bootstrap_update(stats: TokenStatistics, config: CalibrationConfig, groups: Groups | None) -> State:
    keys = token_keys(stats.row, stats.column, stats.label, stats.n_rows)
    weights = poisson_weights(keys, config.bootstrap_replicates, config.seed)  # (R, n)
    count, conf, correct = _sums(
        width_bins(stats.confidence, config.n_bins), stats.confidence, stats.correct, config.n_bins, groups, weights=weights
    )
    if groups is None:
        nll = weights.double() @ -stats.log_prob.double().T  # (R, T)
    else:
        nll = weights.double()[:, None, :] * -stats.log_prob.double()[None]  # (R, T, n)
        nll = torch.zeros(nll.shape[:-1] + (groups.n,), dtype=torch.float64, device=nll.device).index_add_(
            -1, groups.of_token, nll
        )
    if groups is not None:  # (R, G, T, B) -> (G, R, T, B): the group dimension leads
        count, conf, correct = (x.movedim(1, 0) for x in (count, conf, correct))
        nll = nll.movedim(-1, 0)  # (G, R, T)
    return {"bootstrap_count": count, "bootstrap_confidence": conf, "bootstrap_correct": correct, "bootstrap_nll": nll}


def bootstrap_replicates(state: State) -> State:
    """The ``(R, T)`` bootstrap replicates of ``ece``, ``accuracy`` and ``nll`` from a summed ``bootstrap`` state.

    Replicate ``r`` weights each token by a Poisson draw that is a function of the token alone
    (:mod:`ls_seq.functional.bootstrap`), so replicate ``r`` of two models scored on the same evaluation set
    is the same resample of it: their difference is a paired bootstrap of the difference.
    """
    count, _, correct = _bin_triple(state, "bootstrap")
    n = count.sum(-1).clamp_min(1e-300)  # (R, T): each replicate's weighted token count
    return {
        "ece": binned_errors(*_bin_triple(state, "bootstrap"))["ece"],  # (R, T)
        "accuracy": correct.sum(-1) / n,
        "nll": state["bootstrap_nll"] / n,
    }


def _bootstrap_compute(state: State, config: CalibrationConfig) -> State:
    replicates = bootstrap_replicates(state)
    tail = (1 - config.bootstrap_level) / 2
    out: State = {}
    for name, values in replicates.items():
        low, high = torch.quantile(values, torch.tensor([tail, 1 - tail], dtype=values.dtype, device=values.device), dim=0)
        out |= {f"{name}_low": low, f"{name}_high": high, f"{name}_std": values.std(dim=0)}
    return out


# ---- class-wise ECE ----------------------------------------------------------------------------------------


def _classwise_update(stats: TokenStatistics, config: CalibrationConfig, groups: Groups | None) -> State:
    assert stats.class_prob is not None and config.classes is not None  # this measure needs "classes"
    prob = stats.class_prob.movedim(1, -1)  # (T, K, n)
    classes = torch.tensor(config.classes, device=prob.device)
    outcome = (stats.label[None, :] == classes[:, None]).expand_as(prob)  # (T, K, n)
    count, conf, correct = _sums(width_bins(prob, config.n_bins), prob, outcome, config.n_bins, groups)
    return {"classwise_count": count, "classwise_confidence": conf, "classwise_correct": correct}


def _classwise_compute(state: State, config: CalibrationConfig) -> State:
    return {"classwise_ece": binned_errors(*_bin_triple(state, "classwise"))["ece"].mean(-1)}  # (T, K) -> (T,)


# ---- top-k -------------------------------------------------------------------------------------------------


def _topk_update(stats: TokenStatistics, config: CalibrationConfig, groups: Groups | None) -> State:
    assert stats.topk_mass is not None and stats.in_topk is not None  # this measure needs "top_k"
    count, conf, correct = _sums(
        width_bins(stats.topk_mass, config.n_bins), stats.topk_mass, stats.in_topk, config.n_bins, groups
    )
    return {"topk_count": count, "topk_confidence": conf, "topk_correct": correct, "topk_in": _token_sum(stats.in_topk, groups)}


def _topk_compute(state: State, config: CalibrationConfig) -> State:
    count, conf, _ = _bin_triple(state, "topk")
    n = count.sum(-1).clamp_min(1)
    return {
        "topk_ece": binned_errors(*_bin_triple(state, "topk"))["ece"],
        "topk_accuracy": (state["topk_in"] / _n(state).clamp_min(1)).expand(config.n_temperatures).clone(),
        "topk_mass": conf.sum(-1) / n,
    }


# ---- sequences ---------------------------------------------------------------------------------------------


def _sequence_update(stats: TokenStatistics, config: CalibrationConfig, groups: Groups | None) -> State:
    device, rows = stats.label.device, stats.n_rows
    per_row = torch.zeros(rows, dtype=torch.float64, device=device)
    n_row = per_row.clone().index_add_(0, stats.row, torch.ones_like(stats.row, dtype=torch.float64))  # (rows,)
    correct_row = per_row.clone().index_add_(0, stats.row, stats.correct.double())  # (rows,)
    logp_row = torch.zeros(config.n_temperatures, rows, dtype=torch.float64, device=device)
    logp_row.index_add_(1, stats.row, stats.log_prob.double())  # (T, rows)
    scored = n_row > 0
    seq_rows = scored.nonzero().squeeze(1)  # the rows that are sequences (they hold a scored token)
    n_row, correct_row, logp_row = n_row[seq_rows], correct_row[seq_rows], logp_row[:, seq_rows]
    exact = (correct_row == n_row).double()  # (S,)
    token_acc = correct_row / n_row  # (S,)
    p_seq, p_mean = logp_row.exp(), (logp_row / n_row).exp()  # (T, S)
    seq_groups = None if groups is None else Groups(groups.of_row[seq_rows], groups.of_row, groups.n)
    b = config.n_bins
    e_count, e_conf, e_correct = _sums(width_bins(p_seq, b), p_seq, exact, b, seq_groups)
    t_count, t_conf, t_correct = _sums(width_bins(p_mean, b), p_mean, token_acc, b, seq_groups)
    ones = torch.ones_like(exact)
    return {
        "sequence_count": e_count,
        "sequence_confidence": e_conf,
        "sequence_correct": e_correct,
        "sequence_token_count": t_count,
        "sequence_token_confidence": t_conf,
        "sequence_token_correct": t_correct,
        "sequence_n": _token_sum(ones, seq_groups),
        "sequence_exact": _token_sum(exact, seq_groups),
    }


def _sequence_compute(state: State, config: CalibrationConfig) -> State:
    t = config.n_temperatures
    n = state["sequence_n"].clamp_min(1)
    return {
        "sequence_ece": binned_errors(*_bin_triple(state, "sequence"))["ece"],
        "sequence_token_ece": binned_errors(*_bin_triple(state, "sequence_token"))["ece"],
        "exact_match": (state["sequence_exact"] / n).expand(t).clone(),
        "n_sequences": state["sequence_n"].expand(t).clone(),
    }


def _sequence_reliability(state: State, config: CalibrationConfig) -> State:
    count, conf, correct = _bin_triple(state, "sequence")
    return _curves(count, conf, correct, *_width_edges(count, config.n_bins))


def _sequence_state(config: CalibrationConfig) -> dict[str, tuple[int, ...]]:
    shapes = _bins_state("sequence", _temps, lambda c: c.n_bins)(config)
    shapes |= _bins_state("sequence_token", _temps, lambda c: c.n_bins)(config)
    return shapes | {"sequence_n": (), "sequence_exact": ()}


MEASURES: dict[str, Measure] = {
    m.name: m
    for m in (
        Measure(
            "tokens",
            "token counts, accuracy, mean confidence and NLL",
            (
                Field("n_tokens", "scored (non-ignored) tokens", None),
                Field("accuracy", "share of tokens whose arg-max is the label", False),
                Field("mean_confidence", "mean largest probability", None),
                Field("nll", "mean negative log-likelihood of the label (nats)"),
            ),
            _tokens_state,
            _tokens_update,
            _tokens_compute,
        ),
        Measure(
            "width",
            "top-label calibration error on equal-width bins",
            (
                Field("ece", "expected calibration error, sum_b n_b/N |acc_b - conf_b|"),
                Field("mce", "maximum calibration error over non-empty bins"),
                Field("rms", "root-mean-square calibration error, sqrt(sum_b n_b/N (acc_b - conf_b)^2)"),
                Field("rms_debiased", "RMS calibration error, debiased (Kumar, Liang & Ma 2019)"),
            ),
            _bins_state("width", _temps, lambda c: c.n_bins),
            _width_update,
            _width_compute,
            _width_reliability,
        ),
        Measure(
            "mass",
            "top-label calibration error on equal-mass (adaptive) bins",
            (
                Field("ece_mass", "ECE on equal-mass bins"),
                Field("mce_mass", "MCE on equal-mass bins"),
                Field("rms_mass", "RMS calibration error on equal-mass bins"),
                Field("rms_debiased_mass", "debiased RMS calibration error on equal-mass bins (Kumar et al.'s estimator)"),
            ),
            _bins_state("mass", _temps, lambda c: c.fine_bins),
            _mass_update,
            _mass_compute,
            _mass_reliability,
        ),
        Measure(
            "brier",
            "multi-class Brier score",
            (Field("brier", "mean over tokens of sum_k (p_k - [k = label])^2"),),
            lambda c: {"brier_sum": (c.n_temperatures,)},
            _brier_update,
            _brier_compute,
            needs=frozenset({"brier"}),
        ),
        Measure(
            "bootstrap",
            "Poisson-bootstrap confidence intervals of the equal-width ECE, the accuracy and the NLL",
            tuple(
                Field(f"{name}_{end}", f"{what} of {name}")
                for name in ("ece", "accuracy", "nll")
                for end, what in (
                    ("low", "lower end of the bootstrap interval"),
                    ("high", "upper end of the bootstrap interval"),
                    ("std", "bootstrap standard error"),
                )
            ),
            lambda c: (
                _bins_state("bootstrap", lambda c: (c.bootstrap_replicates, c.n_temperatures), lambda c: c.n_bins)(c)
                | {"bootstrap_nll": (c.bootstrap_replicates, c.n_temperatures)}
            ),
            _bootstrap_update,
            _bootstrap_compute,
        ),
        Measure(
            "classwise",
            "class-wise ECE over the given classes",
            (Field("classwise_ece", "mean over the classes c of the ECE of p_c against [label = c]"),),
            _bins_state("classwise", lambda c: (c.n_temperatures, len(c.classes or ())), lambda c: c.n_bins),
            _classwise_update,
            _classwise_compute,
            needs=frozenset({"classes"}),
        ),
        Measure(
            "top_k",
            "top-k confidence calibration",
            (
                Field("topk_ece", "ECE of the top-k probability mass against [label in the top k]"),
                Field("topk_accuracy", "share of tokens whose label is among the k largest logits", False),
                Field("topk_mass", "mean probability mass of the k largest logits", None),
            ),
            lambda c: _bins_state("topk", _temps, lambda c: c.n_bins)(c) | {"topk_in": ()},
            _topk_update,
            _topk_compute,
            needs=frozenset({"top_k"}),
        ),
        Measure(
            "sequence",
            "sequence-level calibration (a row is a sequence)",
            (
                Field("sequence_ece", "ECE of the reference's probability exp(sum_t log p_t) against exact match"),
                Field("sequence_token_ece", "ECE of the geometric-mean token probability against the sequence's token accuracy"),
                Field("exact_match", "share of sequences whose every teacher-forced arg-max is right", False),
                Field("n_sequences", "sequences (rows with a scored token)", None),
            ),
            _sequence_state,
            _sequence_update,
            _sequence_compute,
            _sequence_reliability,
        ),
    )
}

# What TokenCalibration and the CLI measure by default: everything that needs no configuration.
DEFAULT_MEASURES = ("width", "mass", "brier", "bootstrap", "top_k", "sequence")


# CalibrationResult, CalibrationSchema and make_config lived here in 0.1 (as ls_seq.functional.measures).
from ls_seq._deprecation import moved_attributes  # noqa: E402

__getattr__ = moved_attributes(
    __name__,
    {
        "CalibrationResult": "ls_seq.calibration.result",
        "CalibrationSchema": "ls_seq.calibration.schema",
        "make_config": "ls_seq.calibration.schema",
    },
)
