"""The README's real-scan check: slice-level detection on COVID-CT-MD P001, lesion fraction on healthy scans.

    python -m benchmarks.real_scans --checkpoint CKPT [CKPT ...]

Predicts P001 (DICOM) with any method's checkpoint (or NormNet checkpoints voting) and scores the
per-slice lesion voxel count against P001_slice_labels.csv (AUC, and sensitivity/specificity of 'any
lesion voxel'); predicts the healthy scans and reports the fraction of lung called lesion.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch
from torchmetrics.functional.classification import binary_auroc

from lightning_normnet.inference import predict_scan
from lightning_normnet.io import read_ct
from lightning_normnet.lungmask import lung_mask
from lightning_normnet.report import infection_report
from lightning_normnet.runs.checkpoints import load_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HEALTHY = {"covid-ct-md/normal001 (trained on)": "covid-ct-md/normal001",
           "imlab id001 (trained on)": "imlab-lung3d/id001-128x128x64.nii.gz",
           "cip TestInput (unseen)": "cip/TestInput.nrrd", "cip ct-64 (unseen)": "cip/ct-64.nrrd"}


def report_of(model, path: Path, device) -> dict:
    image = read_ct(path)
    lung = lung_mask(image, model.cfg.lung_mask, source=path)
    return infection_report(path, predict_scan(model, image, lung, device), lung)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", nargs="+", required=True)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, method = load_model(args.checkpoint, device=device)
    report = report_of(model, DATA / "covid-ct-md" / "P001", device)
    counts = torch.tensor(report["lesion_voxels_per_slice"], dtype=torch.float32)
    with open(DATA / "covid-ct-md" / "P001_slice_labels.csv") as handle:
        labels = {int(r["z_index"]): int(r["infected"]) for r in csv.DictReader(handle)}
    truth = torch.tensor([labels[z] for z in range(len(counts))])
    detected = counts > 0
    print(f"{method.name} on P001: {int(truth.sum())} of {len(truth)} slices infected; "
          f"slice-level AUC of the lesion voxel count = {float(binary_auroc(counts, truth)):.3f}; "
          f"'any lesion voxel': sensitivity {float(detected[truth == 1].float().mean()):.3f}, "
          f"specificity {float((~detected[truth == 0]).float().mean()):.3f}; "
          f"infection {report['percentage_of_infection']:.2f}% of lung")
    for title, relative in HEALTHY.items():
        healthy = report_of(model, DATA / relative, device)
        print(f"{title}: {healthy['percentage_of_infection']:.2f}% of the lung called lesion "
              f"({healthy['lesion_volume_ml']:.1f} of {healthy['lung_volume_ml']:.1f} mL)")


if __name__ == "__main__":
    main()
