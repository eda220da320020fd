"""Token-level expected calibration error as a HuggingFace ``evaluate`` metric (wraps ls-seq's TokenCalibration)."""

from __future__ import annotations

import datasets
import evaluate
import torch

from ls_seq.calibration.measures import DEFAULT_MEASURES, MEASURES
from ls_seq.calibration.metric import TokenCalibration

_DESCRIPTION = """
Token-level calibration of a sequence model under teacher forcing. Every non-ignored target token is one
prediction: its confidence is the largest softmax probability and it is correct when the arg-max equals the
label. With `n_bins` equal-width bins [k/B, (k+1)/B), `n_b` tokens, `s_b` summed confidence and `c_b`
correct tokens in bin b of N tokens:

    ECE = sum_b |c_b - s_b| / N        MCE = max_b |c_b - s_b| / n_b        RMS = sqrt(sum_b n_b (acc_b - conf_b)^2 / N)

computed by `ls_seq.calibration.metric.TokenCalibration` (so the numbers equal the CalibrationCallback's).
"""

_KWARGS_DESCRIPTION = (
    """
Args:
    predictions: per example, the logits of each target position, shape (T, V) (T may vary by example).
    references: per example, the T target token ids; `ignore_index` (-100) marks padding.
    n_bins (int, default 15): number of confidence bins.
    ignore_index (int, default -100): label value that is not scored.
    temperature (float, default 1.0): logits are divided by it before the softmax.
Returns:
    every field of TokenCalibration's default measures, as floats (n_tokens and n_sequences as ints); each
    example is one sequence:
"""
    + "\n".join(f"    {f.name}: {f.doc}" for m in ("tokens", *DEFAULT_MEASURES) for f in MEASURES[m].fields)
    + """
Examples:
    >>> import evaluate
    >>> from ls_seq.evaluate_metrics import token_ece_path
    >>> metric = evaluate.load(token_ece_path())
    >>> out = metric.compute(predictions=[[[4.0, 0.0], [0.0, 4.0]]], references=[[0, 0]], n_bins=10)
    >>> round(out["ece"], 4), out["n_tokens"]
    (0.482, 2)
"""
)

_CITATION = """
@inproceedings{muller2019does,
  title={When Does Label Smoothing Help?},
  author={M{\\"u}ller, Rafael and Kornblith, Simon and Hinton, Geoffrey E},
  booktitle={Advances in Neural Information Processing Systems},
  year={2019}
}
@inproceedings{guo2017calibration,
  title={On Calibration of Modern Neural Networks},
  author={Guo, Chuan and Pleiss, Geoff and Sun, Yu and Weinberger, Kilian Q},
  booktitle={International Conference on Machine Learning},
  year={2017}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TokenEce(evaluate.Metric):
    """Token-level ECE/MCE/RMS calibration error, NLL and accuracy of teacher-forced logits."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("float32"))),
                    "references": datasets.Sequence(datasets.Value("int64")),
                }
            ),
            reference_urls=["https://arxiv.org/abs/1906.02629", "https://arxiv.org/abs/1706.04599"],
        )

    def _compute(self, predictions, references, n_bins=15, ignore_index=-100, temperature=1.0):
        metric = TokenCalibration(n_bins=n_bins, ignore_index=ignore_index, temperatures=[temperature])
        for i, (logits, labels) in enumerate(zip(predictions, references)):
            logits = torch.as_tensor(logits, dtype=torch.float32)  # (T, V)
            labels = torch.as_tensor(labels, dtype=torch.long)  # (T,)
            if logits.dim() != 2 or logits.shape[0] != labels.shape[0]:
                raise ValueError(
                    f"predictions[{i}] must have shape (T, V) with T = len(references[{i}]) = {labels.shape[0]}, "
                    f"got {tuple(logits.shape)}"
                )
            metric.update(logits, labels)
        values = metric.compute()
        # one temperature: every value is a single number (0-dim or shape (1,))
        out = {k: float(v.reshape(-1)[0]) for k, v in values.items()}
        out["n_tokens"] = int(out["n_tokens"])
        out["n_sequences"] = int(out["n_sequences"])
        return out
