"""``python -m ls_seq_fairseq.timed_train FLAGS``: ``fairseq-train`` that also logs each validation's wall-clock.

fairseq's validation logs its metrics but not how long it took, and the calibration along training must show its
cost (``timings.json``: its share of training). This runs fairseq-train's own ``cli_main`` with its
``validate`` wrapped: after every validation one JSON line ``{"validation_num_updates": n,
"validation_seconds": s}`` goes to the ``fairseq_cli.train`` logger, which writes it to ``--log-file`` (fairseq
attaches the file to that logger) beside the validation's own line. Nothing else changes.
"""

import json
import logging
import time

from fairseq_cli import train as fairseq_train

__all__ = ["main"]


def _timed(validate):
    def timed_validate(cfg, trainer, task, epoch_itr, subsets):
        start = time.perf_counter()
        losses = validate(cfg, trainer, task, epoch_itr, subsets)
        seconds = round(time.perf_counter() - start, 4)
        logging.getLogger("fairseq_cli.train").info(
            json.dumps({"validation_num_updates": trainer.get_num_updates(), "validation_seconds": seconds})
        )
        return losses

    return timed_validate


def main() -> None:
    """fairseq-train's command line, with the validation timed."""
    fairseq_train.validate = _timed(fairseq_train.validate)  # looked up at call time by validate_and_save
    fairseq_train.cli_main()


if __name__ == "__main__":
    main()
