"""What a study over several seeds shares: the loop over seeds, one directory per seed, each metric summarised.

A study run with ``--seeds 42 43 44`` runs its single-seed study once per seed in ``output_dir/seed_<s>/``
(:func:`seed_dir`) through the one loop both studies use (:func:`run_seed_loop`: the run directory, resume, the
seeds added on resume, several processes), then summarises each model's metrics over the seeds (:func:`summarise`: mean, sample
standard deviation and 95% Student-t interval, with every seed's value) and reports them
(:func:`summary_table`); the claims are decided with :mod:`ls_seq.studies.claims`.

Examples:
    >>> summary = summarise({42: {"ece": 0.10}, 43: {"ece": 0.14}}, {"ece": ("ece",)})
    >>> round(summary["ece"]["mean"], 4), summary["ece"]["values"]
    (0.12, {'42': 0.1, '43': 0.14})
    >>> summary_table([("alpha 0", summary)], ["ece"])[2]
    '| alpha 0 | 0.12 ± 0.028 [-0.1341, 0.3741] |'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "TRAJECTORY_FIGURE",
    "Processes",
    "lookup",
    "report_header",
    "run_seed_loop",
    "seed_dir",
    "summarise",
    "summary_table",
    "trajectory_png",
]

TRAJECTORY_FIGURE = "calibration_along_training.png"


def seed_dir(output_dir: str | Path, seed: int) -> Path:
    """The directory of one seed's whole single-seed study."""
    return Path(output_dir) / f"seed_{seed}"


class Processes(Protocol):
    """What the loop needs of a process group (accelerate's ``PartialState`` has it): one main process, a barrier."""

    @property
    def is_main_process(self) -> bool: ...

    def wait_for_everyone(self) -> None: ...


class _OneProcess:
    is_main_process = True

    def wait_for_everyone(self) -> None:
        pass


def run_seed_loop(
    output_dir: str | Path,
    kind: str,
    config: dict[str, Any],
    *,
    command: str,
    resume: bool,
    overwrite: bool,
    extendable: Mapping[str, str],
    run_seed: Callable[[int, Path, bool, Mapping[str, Any]], dict[str, Any]],
    aggregate: Callable[[dict[int, dict[str, Any]], list[str]], dict[str, Any]],
    write_report: Callable[[Path, dict[str, Any], dict[int, dict[str, Any]]], None],
    processes: Processes | None = None,
) -> dict[str, Any]:
    """Run a study once per seed of ``config["seeds"]`` in ``output_dir/seed_<s>/``, then summarise and report.

    ``output_dir`` is opened as a :class:`~ls_seq.studies.run_dir.RunDirectory` of ``kind`` holding ``config`` (on
    the main process; the others read it), so ``--resume`` is checked against it and may extend what
    ``extendable`` names (seeds appended, say). For each seed, ``run_seed(seed, directory, resume, config)`` runs
    the single-seed study, resuming only a seed whose directory already holds a run. ``aggregate(results,
    commands)`` builds the summary over seeds from ``{seed: results}``; the main process writes it with
    ``write_report(output_dir, summary, results)``. Returns the summary.
    """
    from ls_seq.io import read_json
    from ls_seq.studies.run_dir import RUN_CONFIG_NAME, RunDirectory

    processes = processes or _OneProcess()
    output_dir = Path(output_dir)
    run = RunDirectory(output_dir, kind)
    if processes.is_main_process:
        config = run.open(config, command=command, resume=resume, overwrite=overwrite, extendable=dict(extendable))
    processes.wait_for_everyone()
    try:
        if not processes.is_main_process:
            config = read_json(run.config_path)["config"]
        results = {}
        for seed in config["seeds"]:
            directory = seed_dir(output_dir, seed)
            results[seed] = run_seed(seed, directory, resume and (directory / RUN_CONFIG_NAME).is_file(), config)
        summary = aggregate(results, run.commands or [command])
        if processes.is_main_process:
            write_report(output_dir, summary, results)
        processes.wait_for_everyone()
        return summary
    finally:
        run.close()


def lookup(entry: Any, path: Sequence[str]) -> Any:
    """``entry[path[0]][path[1]]...``, or None where a key is missing."""
    for key in path:
        if not isinstance(entry, Mapping) or key not in entry:
            return None
        entry = entry[key]
    return entry


def summarise(by_seed: Mapping[int, Any], metrics: Mapping[str, Sequence[str]]) -> dict[str, dict[str, Any]]:
    """Per metric ``name -> path`` (a key path into each seed's entry): ``mean``, ``std``, ``n``, ``low``,
    ``high`` (:func:`ls_seq.studies.significance.seed_interval`) and ``values`` (seed -> value). A metric missing
    from a seed's entry is left out."""
    from ls_seq.studies.significance import seed_interval

    out = {}
    for name, path in metrics.items():
        values = {seed: lookup(entry, path) for seed, entry in sorted(by_seed.items())}
        if not values or any(v is None for v in values.values()):
            continue
        out[name] = {**seed_interval(list(values.values())), "values": {str(s): v for s, v in values.items()}}
    return out


def summary_table(
    rows: Sequence[tuple[str, Mapping[str, Mapping[str, Any]]]], names: Sequence[str], *, label: str = ""
) -> list[str]:
    """Markdown lines: one row per ``(label, summarise(...))``, a column per metric: ``mean ± std [low, high]``."""
    lines = [f"| {label} | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for row_label, summary in rows:
        cells = []
        for name in names:
            v = summary.get(name)
            if v is None:
                cells.append("-")
            elif v["std"] is None:
                cells.append(f"{v['mean']:.4g}")
            else:
                cells.append(f"{v['mean']:.4g} ± {v['std']:.2g} [{v['low']:.4g}, {v['high']:.4g}]")
        lines.append(f"| {row_label} | " + " | ".join(cells) + " |")
    return lines


def trajectory_png(along: Mapping[str, Mapping[int, Sequence[Any]]], n_seeds: int, *, x_label: str) -> bytes:
    """The calibration-along-training figure over seeds (mean and range), as PNG bytes:
    ``along[label][seed]`` is that run's :class:`~ls_seq.studies.trajectory.TrajectoryPoint` list, and ``x_label``
    names what their ``step`` counts (EN-DE: optimizer steps; vision: epochs)."""
    from ls_seq.io import figure_bytes
    from ls_seq.studies.trajectory import plot_trajectory, trajectory_curves

    title = f"Validation calibration along training, {n_seeds} seeds"
    return figure_bytes(plot_trajectory(trajectory_curves(along), x_label=x_label, title=title))


def report_header(title: str, config: Mapping[str, Any], setting: str) -> list[str]:
    """The first lines of a seeds report: title, the command (and resumes), the setting and each seed's report.

    ``config`` holds ``command``, ``resumed_with`` and ``seeds``; ``setting`` is one sentence on what ran.
    """
    seeds = config["seeds"]
    return [
        f"# {title} over {len(seeds)} seeds",
        "",
        f"Command: `{config['command']}`" + "".join(f"; resumed with `{c}`" for c in config["resumed_with"]),
        "",
        f"{setting}; seeds {', '.join(map(str, seeds))}; each seed's own report: "
        + ", ".join(f"[seed_{s}/report.md](seed_{s}/report.md)" for s in seeds)
        + ".",
        "",
    ]
