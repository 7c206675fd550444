"""What an evaluation records, written and read here only: one typed record per scored volume (or
COVID-SemiSeg slice), and a run's evaluation files, versioned by SCHEMA.

    evaluation.json  {"schema", "method", "run", "label_free", "finished", "validations": [{"step", "volumes",
                     "summary"}]}; "finished": whether the scored model's training ran to its end (files
                     written before runs recorded it lack the key and are read as finished)
    volumes.csv      one row per volume and validation: the VolumeScore fields
    evaluation.md    the latest validation as a table (mean +/- std per dataset, in %)

Every volume is scored on the scan's own grid: the prediction is brought back there
(`preprocessing.to_original_grid`) and compared with the lesion mask as the dataset ships it, so
methods working on different grids count the same voxels.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from .datasets.cache import ScanTruth
from .inference import VolumePrediction
from .io import InputError, csv_text, read_document, write_text
from .metrics import METRIC_KEYS, SEGMENTATION_KEYS, bright_voxel_metrics, segmentation_metrics
from .preprocessing import to_original_grid

SCHEMA = 2
EVALUATION = "evaluation.json"
NAN = math.nan


@dataclass(frozen=True)
class VolumeScore:
    """One scored volume (or slice). A metric that was not computed, or whose denominator is empty (PSC
    of an empty prediction), is NaN and is left out of the means."""
    dataset: str
    name: str
    source: str = ""
    dsc: float = NAN
    psc: float = NAN
    sen: float = NAN
    spec: float = NAN
    bright_precision: float = NAN
    bright_sensitivity: float = NAN
    bright_specificity: float = NAN
    bright_auc: float = NAN
    s_alpha: float = NAN
    e_phi_mean: float = NAN
    mae: float = NAN

    @property
    def volume(self) -> tuple[str, str]:
        """(dataset, volume), the volume named by its source file where known: two phantom sets of other
        settings (same case names) do not pass for the same volumes."""
        return self.dataset, self.source or self.name

    def metric(self, key: str) -> float:
        return getattr(self, key)


def score_prediction(prediction: VolumePrediction, lung_on_grid: torch.Tensor, truth: ScanTruth, dataset: str,
                     name: str, source: str, tau: float) -> tuple[VolumeScore, np.ndarray]:
    """The prediction brought back onto the scan's own grid and scored there against the lesion mask:
    Table III (and specificity inside the lung M'); with a healthy vote, Table II on the bright lung voxels
    (H' >= tau) that the vote covers (M' where the model grid's lung mask M reaches). Returns the score and
    the lesion mask on the scan's grid."""
    def back(volume: torch.Tensor, linear: bool = False) -> torch.Tensor:
        array = volume[0, 0].detach().float().cpu().numpy() if linear else volume[0, 0].detach().cpu().numpy()
        return torch.from_numpy(to_original_grid(array, truth.model_grid, truth.grid, linear))

    lesion = back(prediction.lesion)
    truth_lesion, lung, image = (torch.from_numpy(a) for a in (truth.lesion, truth.lung, truth.image))
    metrics = segmentation_metrics(lesion, truth_lesion, lung)
    if prediction.healthy is not None:
        voted = lung & back(lung_on_grid)
        metrics.update(bright_voxel_metrics(back(prediction.healthy), back(prediction.healthy_probability, True),
                                            image, voted, truth_lesion, tau))
    return VolumeScore(dataset, name, source, **metrics), lesion.numpy()


def summarize(scores: list[VolumeScore]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Per dataset and metric: (mean, std, n) over the volumes where the metric is defined."""
    out: dict[str, dict[str, tuple[float, float, int]]] = {}
    for dataset in sorted({s.dataset for s in scores}):
        out[dataset] = {}
        for key in METRIC_KEYS:
            values = np.array([s.metric(key) for s in scores if s.dataset == dataset], dtype=float)
            values = values[~np.isnan(values)]
            out[dataset][key] = ((float(values.mean()), float(values.std()), len(values)) if len(values)
                                 else (NAN, NAN, 0))
    return out


def logged_metrics(volumes: list[VolumeScore], slices: list[VolumeScore] = ()) -> dict[str, float]:
    """What a validation logs: val/<dataset>/<metric> and its _std, and val/dsc, the mean DSC over every
    scored volume (what schedules monitor and sweeps optimise; 2D slices, Inf-Net's COVID-SemiSeg test
    set, count only where no volume was scored). A sweep's trial reads it back from evaluation.json."""
    scores = list(volumes) + list(slices)
    flat = {f"val/{dataset}/{key}{suffix}": value for dataset, metrics in summarize(scores).items()
            for key, (mean, std, n) in metrics.items() if n for suffix, value in (("", mean), ("_std", std))}
    if scores:
        flat["val/dsc"] = float(np.mean([s.dsc for s in (volumes or slices)]))
    return flat


def format_table(summary: dict) -> str:
    """Markdown table: one row per dataset, mean +/- std in percent (MAE as a fraction), as Tables II and III;
    the columns are the metrics some dataset has."""
    keys = [k for k in METRIC_KEYS if k in SEGMENTATION_KEYS or any(m[k][2] for m in summary.values())]
    lines = ["| dataset | " + " | ".join(k.upper() if k in SEGMENTATION_KEYS else k for k in keys) + " |",
             "|---" * (len(keys) + 1) + "|"]
    for dataset, metrics in summary.items():
        cells = [("n/a" if not n else f"{m:.3f} ± {s:.3f}" if k == "mae" else f"{100 * m:.1f} ± {100 * s:.1f}")
                 for k, (m, s, n) in ((k, metrics[k]) for k in keys)]
        lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass
class Validation:
    step: int
    volumes: list[VolumeScore]


@dataclass
class Evaluation:
    """A run folder's evaluation files: who was scored (the method, the run's name, whether it is
    label-free), every validation of the run, in order, and whether the training ran to its end."""
    method: str
    run: str
    label_free: bool
    folder: Path
    validations: list[Validation] = field(default_factory=list)
    finished: bool = False

    @property
    def last(self) -> Validation:
        if not self.validations:
            raise InputError(f"{self.folder / EVALUATION}: holds no validation yet.")
        return self.validations[-1]

    def append(self, step: int, scores: list[VolumeScore]) -> str:
        """Add a validation and rewrite the files (each written whole, atomically); returns its table."""
        self.validations.append(Validation(step, scores))
        self.save()
        return format_table(summarize(scores))

    def mark_finished(self) -> None:
        self.finished = True
        self.save()

    def save(self) -> None:
        """The files, rewritten whole (a run that starts or resumes writes them at once: unfinished so far)."""
        folder = self.folder
        saved = {"schema": SCHEMA, "method": self.method, "run": self.run, "label_free": self.label_free,
                 "finished": self.finished,
                 "validations": [{"step": v.step, "volumes": as_rows(v.volumes),
                                  "summary": finite(summarize(v.volumes))} for v in self.validations]}
        write_text(folder / EVALUATION, json.dumps(saved, indent=1))
        if self.validations:
            write_text(folder / "evaluation.md", format_table(summarize(self.last.volumes)) + "\n")
        columns = [f.name for f in fields(VolumeScore)]
        rows = [[v.step] + [row[c] for c in columns] for v in self.validations for row in as_rows(v.volumes)]
        write_text(folder / "volumes.csv", csv_text(["step"] + columns, rows))


def as_rows(scores: list[VolumeScore]) -> list[dict]:
    """Scores as JSON rows, undefined metrics as null."""
    return [finite(asdict(s)) for s in scores]


def read_evaluation(folder: str | Path) -> Evaluation:
    path = Path(folder) / EVALUATION
    saved = read_document(path, "a scored run folder's evaluation")
    if not isinstance(saved, dict) or saved.get("schema") != SCHEMA:
        found = saved.get("schema", 1) if isinstance(saved, dict) else 1
        raise InputError(f"{path}: evaluation schema {found}, this version reads {SCHEMA}; score the run again "
                         "with `normnet evaluate`.")
    try:
        validations = [Validation(v["step"], [VolumeScore(**{k: NAN if x is None else x for k, x in s.items()})
                                              for s in v["volumes"]]) for v in saved["validations"]]
        return Evaluation(saved["method"], saved["run"], saved["label_free"], Path(folder), validations,
                          saved.get("finished", True))
    except (KeyError, TypeError) as err:
        raise InputError(f"{path}: not an evaluation file of schema {SCHEMA} ({type(err).__name__}: {err}).") from None


def finite(value):
    """JSON has no NaN: undefined metrics are written as null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value
