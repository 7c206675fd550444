"""`normnet ablations SWEEP_DIR`: the NormNet paper's Tables IV and V from a sweep's finished trials (each
trial folder's trial.json), whichever agent ran them.

Table IV (ablations.md/.csv/.png): one row per dataset, one column per trial, named by its ablation and
other swept settings, the trial with the experiment's own settings last (the paper's 'NormNet' column);
each cell the mean DSC over the dataset's volumes (%) and its difference to that default trial. The figure
is a heat map of the differences.
Table V (voting.md/.csv/.png), from trials that score one step's checkpoint or one member
(`checkpoint_step`, `inference.member`): one row per dataset and step, the members and their vote as
columns; the figure groups the bars by step.
Both are logged to W&B too when a key is set.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from omegaconf import OmegaConf  # noqa: E402

from ..io import InputError, csv_text, write_figure, write_text  # noqa: E402
from .run import wandb_online  # noqa: E402
from .sweep_file import CHECKPOINT_STEP, NULL  # noqa: E402
from .sweep_folder import read_record  # noqa: E402

MEMBER = "inference.member"
DEFAULT_COLUMN = "NormNet"


@dataclass
class TrialResult:
    folder: str
    label: str
    default: bool
    voting: bool                     # swept checkpoint_step or inference.member: a Table V trial
    step: str | None                 # checkpoint_step, or None (the last)
    member: str | None               # inference.member, or None (the vote)
    dsc: dict[str, float]            # per dataset: mean DSC over its volumes


def _is_null(value: str | None) -> bool:
    return value is None or value in NULL


def _label(parameters: dict[str, str]) -> str:
    """The column name: the ablation's name, then any other swept setting as key=value (none: NormNet)."""
    parts = [] if _is_null(parameters.get("ablation")) else [parameters["ablation"]]
    parts += [f"{k.rsplit('.', 1)[-1]}={v}" for k, v in parameters.items()
              if k not in ("ablation", CHECKPOINT_STEP, MEMBER)]
    return " ".join(parts) or DEFAULT_COLUMN


def finished_trials(sweep_dir: Path) -> list[TrialResult]:
    """Every finished trial of the folder, in the order they were started; two trials of the same swept
    settings (a bayes search may draw a point twice) are told apart by their folder."""
    results = []
    for folder in sorted(p for p in sweep_dir.glob("trial-*") if p.is_dir()):
        record = read_record(folder)
        if not record or record.get("status") != "finished":
            continue
        parameters = record.get("parameters", {})
        dsc = {key.split("/")[1]: value for key, value in record["metrics"].items()
               if key.count("/") == 2 and key.endswith("/dsc")}
        step, member = parameters.get(CHECKPOINT_STEP), parameters.get(MEMBER)
        results.append(TrialResult(folder.name, _label(parameters), record.get("default", False),
                                   CHECKPOINT_STEP in parameters or MEMBER in parameters,
                                   None if _is_null(step) else step, None if _is_null(member) else member, dsc))
    labels = [(r.label, r.step, r.member) for r in results]
    for result, key in zip(results, labels):
        if labels.count(key) > 1:
            result.label = f"{result.label} ({result.folder})"
    return results


def table4(trials: list[TrialResult], out: Path) -> str:
    """Table IV: markdown, CSV and heat map in `out`; returns the markdown."""
    default = next((t for t in trials if t.default), None)
    order = [t for t in trials if t is not default] + ([default] if default else [])
    datasets = sorted({d for t in order for d in t.dsc})
    header = [t.label if t is not default else DEFAULT_COLUMN for t in order]
    lines = ["| dataset | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    rows, differences = [], np.full((len(datasets), len(order)), np.nan)
    for i, dataset in enumerate(datasets):
        cells = []
        for j, trial in enumerate(order):
            value = trial.dsc.get(dataset)
            base = default.dsc.get(dataset) if default else None
            diff = None if value is None or base is None else 100 * (value - base)
            differences[i, j] = np.nan if diff is None else diff
            cells.append("n/a" if value is None else f"{100 * value:.1f}" if trial is default or diff is None
                         else f"{100 * value:.1f} ({diff:+.1f})")
            rows.append([dataset, header[j], trial.folder, None if value is None else round(100 * value, 2),
                         None if diff is None or trial is default else round(diff, 2)])
        lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
    note = ("DSC (%) per dataset, mean over its volumes; in brackets the difference to the default trial "
            f"({default.folder}, column {DEFAULT_COLUMN})." if default else
            "DSC (%) per dataset, mean over its volumes. No trial ran the experiment's own settings, so no "
            "differences are given.")
    markdown = "\n".join(lines) + "\n\n" + note + "\n"
    write_text(out / "ablations.md", markdown)
    write_text(out / "ablations.csv", csv_text(["dataset", "column", "trial", "dsc", "difference"], rows))
    figure, axis = plt.subplots(figsize=(1.1 * len(order) + 2, 0.7 * len(datasets) + 1.6))
    # at least +/- 5 DSC points, so that a small difference looks small
    limit = max(5.0, float(np.nanmax(np.abs(differences)))) if np.isfinite(differences).any() else 5.0
    shown = axis.imshow(np.nan_to_num(differences), cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    figure.colorbar(shown, ax=axis, label="difference (DSC points)")
    for i, dataset in enumerate(datasets):
        for j, trial in enumerate(order):
            value, diff = trial.dsc.get(dataset), differences[i, j]
            text = "n/a" if value is None else f"{100 * value:.1f}" + (
                "" if trial is default or np.isnan(diff) else f"\n({diff:+.1f})")
            dark = np.isfinite(diff) and abs(diff) > 0.6 * limit
            axis.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    axis.set_xticks(range(len(order)), header, rotation=45, ha="right")
    axis.set_yticks(range(len(datasets)), datasets)
    axis.set_title("DSC (%); colour: difference to the default trial" if default else "DSC (%)")
    write_figure(figure, out / "ablations.png")
    return markdown


def table5(trials: list[TrialResult], out: Path) -> str:
    """Table V: per dataset (and other swept settings, if any) and step, each member alone and their vote."""
    steps = sorted({t.step or "last" for t in trials}, key=lambda s: (s == "last", int(s) if s != "last" else 0))
    members = sorted({t.member for t in trials if t.member is not None}, key=int)
    settings = list(dict.fromkeys(t.label for t in trials))
    header = [f"model_{m}" for m in members] + ["voting"]
    datasets = sorted({d for t in trials for d in t.dsc})
    cell = {(d, t.label, t.step or "last", t.member): t.dsc.get(d) for t in trials for d in t.dsc}
    groups = [(d, label) for d in datasets for label in settings]
    named = len(settings) > 1

    def row_name(dataset: str, label: str) -> str:
        return f"{dataset} ({label})" if named else dataset

    lines = ["| dataset | iterations | " + " | ".join(header) + " |", "|---" * (len(header) + 2) + "|"]
    rows = []
    for dataset, label in groups:
        for step in steps:
            values = [cell.get((dataset, label, step, m)) for m in members + [None]]
            lines.append(f"| {row_name(dataset, label)} | {step} | " +
                         " | ".join("n/a" if v is None else f"{100 * v:.1f}" for v in values) + " |")
            rows.append([row_name(dataset, label), step] + [None if v is None else round(100 * v, 2) for v in values])
    markdown = "\n".join(lines) + "\n\nDSC (%) of each member alone and of their vote, per checkpoint step.\n"
    write_text(out / "voting.md", markdown)
    write_text(out / "voting.csv", csv_text(["dataset", "iterations"] + header, rows))
    figure, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups) + 1, 3.2), squeeze=False)
    width = 0.8 / len(header)
    for axis, (dataset, label) in zip(axes[0], groups):
        for k, (name, member) in enumerate(zip(header, members + [None])):
            heights = [100 * (cell.get((dataset, label, s, member)) or 0.0) for s in steps]
            axis.bar(np.arange(len(steps)) + k * width, heights, width, label=name,
                     color="black" if member is None else None)
        axis.set_xticks(np.arange(len(steps)) + 0.4 - width / 2, steps)
        axis.set_xlabel("iterations")
        axis.set_ylabel("DSC (%)")
        axis.set_title(row_name(dataset, label))
    axes[0][-1].legend(fontsize=7, loc="lower right")
    write_figure(figure, out / "voting.png")
    return markdown


def write_tables(sweep_dir: str | Path, out: str | Path | None = None) -> str:
    """Tables IV and V of the sweep's finished trials, written to `out` (the sweep folder by default)."""
    sweep_dir = Path(sweep_dir)
    out = Path(out) if out else sweep_dir
    trials = finished_trials(sweep_dir)
    if not trials:
        raise InputError(f"{sweep_dir}: no finished trial (trial-*/trial.json) to tabulate yet.")
    voting = [t for t in trials if t.voting]
    ablation = [t for t in trials if not t.voting]
    text = []
    if ablation:
        text.append(f"Ablations ({out / 'ablations.md'}):\n{table4(ablation, out)}")
    if voting:
        text.append(f"Voting ({out / 'voting.md'}):\n{table5(voting, out)}")
    _log_to_wandb(trials, sweep_dir, out, bool(ablation), bool(voting))
    report = "\n".join(text)
    print(report)
    return report


def _log_to_wandb(trials: list[TrialResult], sweep_dir: Path, out: Path, ablation: bool, voting: bool) -> None:
    """The tables and figures as one W&B run in the sweep's group and project, when a key is set."""
    if not wandb_online():
        return
    import wandb

    logging = OmegaConf.load(sweep_dir / trials[0].folder / "config.yaml").logging
    run = wandb.init(project=logging.project, group=logging.group, job_type="ablations",
                     name=f"{logging.group or sweep_dir.name}-tables", dir=str(out))
    for name, present in (("ablations", ablation), ("voting", voting)):
        if present:
            with open(out / f"{name}.csv") as table:
                rows = list(csv.reader(table))
            run.log({name: wandb.Table(columns=rows[0], data=rows[1:]),
                     f"{name}_figure": wandb.Image(str(out / f"{name}.png"))})
    run.finish()
