"""The README's real-scan report: NormNet and the naive threshold side by side on real CT.

    python -m benchmarks.real_scans --checkpoint CKPT [CKPT ...] [--output DIR]

For COVID-CT-MD P001 (DICOM, per-slice labels with the lobes involved): the slice-level AUC of the
per-slice lesion voxel count against `infected`, beside the AUC of the lung's own per-slice area (infected
slices lie mid-lung, where the lung is large: a method that only follows the lung's size scores that
much without detecting anything); the same per lung, the left lung's count against
LLL|LUL and the right's against RLL|RML|RUL; sensitivity and specificity of 'any lesion voxel in the
slice'; the share of the lung called lesion. For every healthy real scan of ../shared/data: the share
of its lung called lesion, marked whether the NormNet checkpoint trained on it (its data.healthy_root
is read from the checkpoint). The threshold method needs no training: it is built from
experiments/threshold.yaml. With --output, report.md and one overlay picture per method and scan
(the most affected slices, lesion outlined) for reading the false positives.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from torchmetrics.functional.classification import binary_auroc

from lightning_normnet.cli import BAD_INPUT, refuse
from lightning_normnet.config import load_config
from lightning_normnet.inference import predict_scan
from lightning_normnet.io import read_ct, write_text
from lightning_normnet.lungmask import lung_mask
from lightning_normnet.methods.fitting import as_dict
from lightning_normnet.models.threshold import ThresholdModel
from lightning_normnet.report import infection_report, report_figure
from lightning_normnet.runs.checkpoints import load_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
COVID = "covid-ct-md/P001"
HEALTHY = {"normal001": "covid-ct-md/normal001", "imlab id001": "imlab-lung3d/id001-128x128x64.nii.gz",
           "imlab id003": "imlab-lung3d/id003-128x128x64.nii.gz", "cip ct-64": "cip/ct-64.nrrd",
           "cip TestInput": "cip/TestInput.nrrd"}
LEFT, RIGHT = ("LLL", "LUL"), ("RLL", "RML", "RUL")


def trained_on(model) -> set[Path]:
    """The scans a checkpoint's healthy folder (data.healthy=folder) holds, links resolved."""
    cfg = model.cfg
    if cfg.data.healthy != "folder" or not cfg.data.healthy_root:
        return set()
    root = Path(cfg.data.healthy_root)
    images = root / "images" if (root / "images").is_dir() else root
    return {p.resolve() for p in images.iterdir()} if images.is_dir() else set()


def left_lung_columns(lung: sitk.Image) -> np.ndarray:
    """Per image column (x index), whether it lies in the patient's left half: LPS x grows to the patient's
    left, and the midline is the column of least lung between the lungs (between the 30th and 70th
    percentile of the lung's columns)."""
    array = sitk.GetArrayViewFromImage(lung) > 0
    per_column = array.sum(axis=(0, 1))
    cumulative = np.cumsum(per_column) / per_column.sum()
    low, high = np.searchsorted(cumulative, 0.3), np.searchsorted(cumulative, 0.7)
    midline = low + int(np.argmin(per_column[low:high + 1]))
    x_of_column = lung.GetOrigin()[0] + lung.GetDirection()[0] * lung.GetSpacing()[0] * np.arange(len(per_column))
    return x_of_column > x_of_column[midline]


def slice_auc(counts: torch.Tensor, labels: torch.Tensor) -> float:
    """The AUC of per-slice lesion voxel counts. binary_auroc reads scores outside [0, 1] as logits and
    squashes them with a sigmoid, which ties every count above about 17 at 1.0; dividing by the largest
    count keeps their order."""
    return float(binary_auroc(counts / counts.max().clamp(min=1), labels))


def p001_scores(lesion: sitk.Image, lung: sitk.Image) -> dict:
    with open(DATA / "covid-ct-md" / "P001_slice_labels.csv") as handle:
        rows = {int(r["z_index"]): r for r in csv.DictReader(handle)}
    array = sitk.GetArrayViewFromImage(lesion) > 0
    left = left_lung_columns(lung)
    depth = array.shape[0]

    def labels(columns) -> torch.Tensor:
        return torch.tensor([int(any(int(rows[z][c]) for c in columns)) for z in range(depth)])

    infected = torch.tensor([int(rows[z]["infected"]) for z in range(depth)])
    counts = torch.from_numpy(array.sum(axis=(1, 2)).astype(np.float32))
    left_counts = torch.from_numpy(array[:, :, left].sum(axis=(1, 2)).astype(np.float32))
    right_counts = torch.from_numpy(array[:, :, ~left].sum(axis=(1, 2)).astype(np.float32))
    detected = counts > 0
    lung_area = torch.from_numpy((sitk.GetArrayViewFromImage(lung) > 0).sum(axis=(1, 2)).astype(np.float32))
    return {"slice AUC": slice_auc(counts, infected),
            "slice AUC of the lung's own area (no detection)": slice_auc(lung_area, infected),
            "left-lung slice AUC (LLL, LUL)": slice_auc(left_counts, labels(LEFT)),
            "right-lung slice AUC (RLL, RML, RUL)": slice_auc(right_counts, labels(RIGHT)),
            "sensitivity, any lesion voxel": float(detected[infected == 1].float().mean()),
            "specificity, any lesion voxel": float((~detected[infected == 0]).float().mean())}


def scan(model, name: str, image: sitk.Image, path: Path, device,
         output: Path | None) -> tuple[dict, sitk.Image, sitk.Image]:
    """One method on one scan, with the method's own lung-mask settings: (infection_report numbers, lesion,
    lung)."""
    lung = lung_mask(image, model.cfg.lung_mask, source=path)
    lesion = predict_scan(model, image, lung, device)
    numbers = infection_report(path, lesion, lung)
    if output is not None:
        method = model.cfg.model.kind
        report_figure(image, lesion, lung, output / f"{method}-{name.replace(' ', '-')}.png",
                      f"{name}: {method}, {numbers['percentage_of_infection']:.2f}% of the lung called lesion")
    return numbers, lesion, lung


def report(checkpoints: list[str], output: Path | None) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    normnet, _ = load_model(checkpoints, device=device)
    threshold = ThresholdModel(as_dict(load_config("threshold"))).to(device).eval()
    seen = trained_on(normnet)
    rows: dict[str, list[str]] = {}
    for name, relative in {"P001": COVID, **HEALTHY}.items():
        path = DATA / relative
        image = read_ct(path)                                   # once per scan, for both methods
        for model in (normnet, threshold):
            numbers, lesion, lung = scan(model, name, image, path, device, output)
            share = f"{numbers['percentage_of_infection']:.2f}"
            if name == "P001":
                for key, value in p001_scores(lesion, lung).items():
                    rows.setdefault(f"P001 {key}", []).append(f"{value:.3f}")
                rows.setdefault("P001 % of the lung called lesion", []).append(share)
            else:
                status = "trained on" if path.resolve() in seen else "unseen"
                rows.setdefault(f"{name} ({status}): % of the lung called lesion", []).append(share)
    table = "\n".join(["| measure | normnet | threshold |", "|---|---|---|"]
                      + [f"| {key} | {' | '.join(values)} |" for key, values in rows.items()])
    print(table)
    if output is not None:
        write_text(output / "report.md", f"checkpoints: {' '.join(checkpoints)}\n\n{table}\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", nargs="+", required=True, help="NormNet checkpoint(s); several vote")
    parser.add_argument("--output", help="folder for report.md and the overlay pictures")
    args = parser.parse_args()
    try:
        report(args.checkpoint, Path(args.output) if args.output else None)
    except BAD_INPUT as err:
        return refuse("real_scans", err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
