"""Ensemble inference: sliding-window healthy probabilities per member, majority vote, post-processing.

`predict_lesions` works on the model grid (validation, `evaluate`);
`predict_ct` goes from a CT file or DICOM folder to a lesion mask in the
input's own geometry plus the numbers of a report.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from monai.inferers import sliding_window_inference
from omegaconf import DictConfig

from .io import read_ct, read_mask
from .lungmask import lung_mask
from .postprocessing import postprocess
from .preprocessing import prepare_volume


@torch.no_grad()
def member_probabilities(members, image: torch.Tensor, cfg: DictConfig) -> torch.Tensor:
    """Healthy-class probability of each member, (n_members, B, 1, D, H, W), for H shaped (B, 1, D, H, W)."""
    out = []
    for member in members:
        logits = sliding_window_inference(image, list(cfg.roi), cfg.sw_batch_size, member, overlap=cfg.overlap,
                                          mode="gaussian")
        out.append(torch.softmax(logits.float(), dim=1)[:, 1:2])
    return torch.stack(out)


def majority_vote(probabilities: torch.Tensor, threshold: float) -> torch.Tensor:
    """Healthy where more than half of the members give probability > threshold (3 of 5)."""
    votes = (probabilities > threshold).sum(0)
    return votes * 2 > probabilities.shape[0]


@dataclass
class EnsemblePrediction:
    lesion: torch.Tensor             # final lesion mask (B, 1, D, H, W)
    healthy: torch.Tensor            # voted healthy voxels
    healthy_probability: torch.Tensor  # members' mean healthy probability


def predict_lesions(members, image: torch.Tensor, lung: torch.Tensor, inference: DictConfig,
                    postprocessing: DictConfig) -> EnsemblePrediction:
    probabilities = member_probabilities(members, image, inference)
    healthy = majority_vote(probabilities, inference.healthy_probability) & lung.bool()
    lesion = postprocess(image, lung, healthy, postprocessing)
    return EnsemblePrediction(lesion, healthy, probabilities.mean(0))


@dataclass
class CTPrediction:
    image: sitk.Image   # the input CT, HU
    lesion: sitk.Image  # lesion mask in the input's geometry
    lung: sitk.Image    # lung mask in the input's geometry
    report: dict


def slice_by_slice(predict_slices, *volumes: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """A 2D model over (1, 1, D, H, W) volumes: `predict_slices` maps aligned chunks of (n, 1, H, W) slices
    (one per volume) to (n, 1, H, W) masks; the results are stacked back into (1, 1, D, H, W)."""
    slices = [v[0].transpose(0, 1) for v in volumes]                 # (D, 1, H, W) each
    parts = [predict_slices(*(s[i:i + chunk] for s in slices)) for i in range(0, slices[0].shape[0], chunk)]
    return torch.cat(parts).transpose(0, 1)[None]


def predict_ct(members, path: str | Path, cfg: DictConfig, device: torch.device,
               lung_path: Path | None = None) -> CTPrediction:
    """Lesion mask and report for one CT (file or DICOM folder), in the input's own grid."""
    image = read_ct(path)
    supplied = read_mask(lung_path, image, "lung mask") if lung_path else None
    lung = lung_mask(image, cfg.lung_mask, supplied, source=path)
    prepared = prepare_volume(image, lung, cfg.preprocessing, training=False)
    volume = torch.from_numpy(prepared.image)[None, None].to(device)
    lung_tensor = torch.from_numpy(prepared.lung)[None, None].to(device)
    result = predict_lesions(members, volume, lung_tensor, cfg.inference, cfg.postprocessing)
    lesion = prepared.restore(result.lesion[0, 0].cpu().numpy(), image)
    return CTPrediction(image, lesion, lung, infection_report(path, lesion, lung))


def infection_report(source, lesion: sitk.Image, lung: sitk.Image) -> dict:
    """Lung and lesion volume (mL), percentage of infection, lesion voxels per axial slice (array axis 0)."""
    voxel_ml = float(np.prod(lesion.GetSpacing())) / 1000.0
    lesion_array = sitk.GetArrayViewFromImage(lesion) > 0
    lung_array = sitk.GetArrayViewFromImage(lung) > 0
    lung_ml = float(lung_array.sum()) * voxel_ml
    lesion_ml = float(lesion_array.sum()) * voxel_ml
    return {"input": str(source), "spacing_mm": list(lesion.GetSpacing()), "lung_volume_ml": lung_ml,
            "lesion_volume_ml": lesion_ml,
            "percentage_of_infection": 100.0 * lesion_ml / lung_ml if lung_ml > 0 else 0.0,
            "lesion_voxels_per_slice": lesion_array.sum(axis=(1, 2)).astype(int).tolist()}
