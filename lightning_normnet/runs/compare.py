"""`normnet compare`: the Table III layout of the NormNet paper from the saved per-volume results of runs.

A run folder (train or evaluate, of any method) holds evaluation.json, whose last validation lists
every scored volume, each scored on its scan's own grid; a cross-validation folder (fold*/) pools its
folds. Methods are grouped as label-free or (semi-)supervised, as their evaluation file says (the method
registry decides it when the run is scored); per dataset the table gives DSC / PSC / SEN as mean +/- std
over volumes (%), the best mean of each column in bold.
Only the datasets every run was scored on are compared (others are named and left out); within them,
runs scored on different volumes are refused: a comparison is only fair on the same volumes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path


from ..io import InputError, check_output_folder, csv_text, write_figure, write_text
from ..scores import VolumeScore, read_evaluation, summarize

COLUMNS = ("dsc", "psc", "sen")
GROUPS = ("label-free", "(semi-)supervised")


@dataclass
class MethodResult:
    name: str
    label_free: bool
    scores: list[VolumeScore]

    @property
    def group(self) -> str:
        return GROUPS[0] if self.label_free else GROUPS[1]

    def volumes(self) -> set[tuple[str, str]]:
        return {s.volume for s in self.scores}


def load_run(path: str | Path) -> MethodResult:
    """The last validation of a run folder, or of every fold of a cross-validation folder, pooled."""
    path = Path(path)
    folds = sorted(p.parent for p in path.glob("fold*/evaluation.json"))
    evaluations = [read_evaluation(folder) for folder in folds or [path]]
    for evaluation in evaluations:
        if not evaluation.finished:
            steps = [v.step for v in evaluation.validations]
            raise InputError(f"{evaluation.folder}: its training stopped before its end (last validation at step "
                             f"{steps[-1] if steps else 'none'}): resume it with `normnet train --run-dir "
                             f"{evaluation.folder} ...`, or leave it out of the comparison.")
    first = evaluations[0]
    return MethodResult(first.run + (" (cv)" if folds else ""), first.label_free,
                        [s for e in evaluations for s in e.last.volumes])


def shared_datasets(results: list[MethodResult]) -> tuple[list[str], list[str]]:
    """The datasets every run was scored on, and notes on those left out (e.g. Inf-Net's test slices)."""
    per_run = [{d for d, _ in r.volumes()} for r in results]
    shared = sorted(set.intersection(*per_run))
    notes = [f"{d}: only in {', '.join(r.name for r, sets in zip(results, per_run) if d in sets)}; left out"
             for d in sorted(set.union(*per_run) - set(shared))]
    if not shared:
        raise InputError("the runs share no dataset: " + "; ".join(f"{r.name} has {sorted(s)}" for r, s in
                                                                  zip(results, per_run)))
    return shared, notes


def check_same_volumes(results: list[MethodResult], datasets: list[str]) -> None:
    """Within the shared datasets, every run must have scored the same volumes."""
    def volumes(result: MethodResult) -> set[tuple[str, str]]:
        return {v for v in result.volumes() if v[0] in datasets}

    reference = results[0]
    for other in results[1:]:
        missing, extra = volumes(reference) - volumes(other), volumes(other) - volumes(reference)
        if missing or extra:
            shown = ", ".join(f"{d}/{Path(n).name}" for d, n in sorted(missing | extra)[:5])
            raise InputError(f"{other.name} and {reference.name} were scored on different volumes "
                             f"({len(missing)} only in {reference.name}, {len(extra)} only in {other.name}: {shown}).")


def comparison_rows(results: list[MethodResult]) -> tuple[list[str], list[tuple[str, str, dict]]]:
    """Shared datasets, and per method (group, name, {(dataset, key): (mean, std)}), label-free first."""
    datasets, _ = shared_datasets(results)
    ordered = sorted(results, key=lambda r: (not r.label_free, r.name))
    summaries = [summarize(r.scores) for r in ordered]
    return datasets, [(r.group, r.name, {(d, k): summary[d][k][:2] for d in datasets for k in COLUMNS})
                      for r, summary in zip(ordered, summaries)]


def render(results: list[MethodResult]) -> tuple[str, str]:
    """(markdown, csv) of the comparison; the best mean per column in bold."""
    datasets, rows = comparison_rows(results)
    best = {c: max((s[c][0] for _, _, s in rows if not math.isnan(s[c][0])), default=math.nan)
            for c in [(d, k) for d in datasets for k in COLUMNS]}
    header = ["group", "method"] + [f"{d} {k.upper()}" for d in datasets for k in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    table = []
    for group, name, stats in rows:
        cells = []
        for column in [(d, k) for d in datasets for k in COLUMNS]:
            mean, std = stats[column]
            text = "n/a" if math.isnan(mean) else f"{100 * mean:.1f} ± {100 * std:.1f}"
            cells.append(f"**{text}**" if not math.isnan(mean) and mean == best[column] else text)
        lines.append(f"| {group} | {name} | " + " | ".join(cells) + " |")
        table.append([group, name] + [v for d in datasets for k in COLUMNS for v in stats[(d, k)]])
    csv_header = ["group", "method"] + [f"{d} {k} {s}" for d in datasets for k in COLUMNS for s in ("mean", "std")]
    return "\n".join(lines), csv_text(csv_header, table)


def box_plot(results: list[MethodResult], path: Path) -> None:
    """Per dataset, box plots of the per-volume Dice of every method."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets, _ = comparison_rows(results)
    results = sorted(results, key=lambda r: (not r.label_free, r.name))     # the table's order
    figure, axes = plt.subplots(1, len(datasets), figsize=(3 + 2 * len(results) * len(datasets), 4), squeeze=False)
    for axis, dataset in zip(axes[0], datasets):
        values = [[100 * s.dsc for s in m.scores if s.dataset == dataset] for m in results]
        axis.boxplot(values)
        axis.set_xticks(range(1, len(results) + 1), [m.name for m in results], rotation=30, ha="right")
        axis.set_title(dataset)
        axis.set_ylabel("DSC per volume (%)")
    figure.tight_layout()
    write_figure(figure, path)


def compare(runs: list[str | Path], out_dir: str | Path) -> str:
    if len(runs) < 2:
        raise InputError("compare needs at least two run folders.")
    check_output_folder(out_dir, what="comparison")
    results = [load_run(r) for r in runs]
    datasets, notes = shared_datasets(results)
    check_same_volumes(results, datasets)
    for note in notes:
        print(note)
    markdown, table = render(results)
    out_dir = Path(out_dir)
    write_text(out_dir / "compare.md", markdown + "\n")
    write_text(out_dir / "compare.csv", table)
    box_plot(results, out_dir / "compare.png")
    return markdown
