"""Prediction: what every method returns, NormNet's ensemble vote, and the scan-to-mask contract.

Every method predicts on its own grid (`VolumePrediction`); `predict_scan` takes
a scan in HU and its lung mask onto that grid and the lesion mask back onto the
scan's own. NormNet's ensemble: sliding-window healthy probabilities per member,
majority vote, post-processing (`predict_lesions`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
from monai.inferers import sliding_window_inference
from omegaconf import DictConfig

from .io import Grid
from .postprocessing import postprocess
from .preprocessing import prepare_volume, to_original_grid


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
class VolumePrediction:
    """A method's prediction of a prepared volume, on the method's grid, (B, 1, D, H, W)."""
    lesion: torch.Tensor                              # the lesion mask
    healthy: torch.Tensor | None = None               # NormNet: voxels voted healthy (Table II)
    healthy_probability: torch.Tensor | None = None   # NormNet: the members' mean healthy probability


def predict_lesions(members, image: torch.Tensor, lung: torch.Tensor, inference: DictConfig,
                    postprocessing: DictConfig) -> VolumePrediction:
    probabilities = member_probabilities(members, image, inference)
    healthy = majority_vote(probabilities, inference.healthy_probability) & lung.bool()
    lesion = postprocess(image, lung, healthy, postprocessing)
    return VolumePrediction(lesion, healthy, probabilities.mean(0))


def slice_by_slice(predict_slices, *volumes: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """A 2D model over (1, 1, D, H, W) volumes: `predict_slices` maps aligned chunks of (n, 1, H, W) slices
    (one per volume) to (n, 1, H, W) masks; the results are stacked back into (1, 1, D, H, W)."""
    slices = [v[0].transpose(0, 1) for v in volumes]                 # (D, 1, H, W) each
    parts = [predict_slices(*(s[i:i + chunk] for s in slices)) for i in range(0, slices[0].shape[0], chunk)]
    return torch.cat(parts).transpose(0, 1)[None]


def predict_scan(model, image: sitk.Image, lung: sitk.Image, device: torch.device | str = "cpu") -> sitk.Image:
    """The prediction contract every method keeps, end to end: the scan (HU) and its lung mask onto the
    method's own grid (`model.cfg.preprocessing`), `model.predict_volume(H, M)` there, and the lesion mask
    brought back onto the scan's own grid (size, spacing, origin, direction)."""
    prepared = prepare_volume(image, lung, model.cfg.preprocessing, training=False)
    volume = torch.from_numpy(prepared.image)[None, None].to(device)
    lung_on_grid = torch.from_numpy(prepared.lung)[None, None].to(device)
    with torch.no_grad():
        lesion = model.predict_volume(volume, lung_on_grid).lesion
    original = Grid.of(image)
    return original.image(to_original_grid(lesion[0, 0].cpu().numpy(), prepared.grid, original).astype(np.uint8))
