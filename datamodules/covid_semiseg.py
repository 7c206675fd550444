"""COVID-SemiSeg (Fan et al., Inf-Net) as it ships, for Inf-Net and Semi-Inf-Net.

    <root>/TrainingSet/LungInfection-Train/Doctor-label/{Imgs,GT,Edge}/   50 labelled slices (jpg / png)
    <root>/TrainingSet/LungInfection-Train/Pseudo-label/Imgs/             1600 unlabelled slices
    <root>/TestingSet/LungInfection-Test/{Imgs,GT}/                        the 48-slice test set

Slices are 8-bit windowed images, not HU. Training items are resized to the training size and
normalised with the ImageNet statistics the Res2Net backbone expects; test items keep their
truth at its own size (the prediction is resized to it, as the paper evaluates).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from lightning_normnet.datasets.sources import prepare_semiseg, semiseg_dir
from lightning_normnet.folds import held_out
from lightning_normnet.io import InputError
from lightning_normnet.networks.res2net import imagenet_normalise

from .evaluation import EvaluationDataModule
from .positions import training_loader

SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class SemiSegFolders:
    labelled: Path      # Doctor-label/
    unlabelled: Path    # Pseudo-label/Imgs/
    test: Path          # LungInfection-Test/

    @classmethod
    def find(cls, root: str | Path) -> "SemiSegFolders":
        root = Path(root)
        folders = cls(root / "TrainingSet/LungInfection-Train/Doctor-label",
                      root / "TrainingSet/LungInfection-Train/Pseudo-label/Imgs",
                      root / "TestingSet/LungInfection-Test")
        required = [folders.labelled / "Imgs", folders.labelled / "GT", folders.test / "Imgs", folders.test / "GT"]
        for folder in required:
            if not folder.is_dir():
                raise InputError(f"{folder}: missing; is {root} the COVID-SemiSeg folder?")
        return folders


def images_in(folder: Path) -> list[Path]:
    """The readable slices of a folder; a truncated or damaged one is skipped with one line."""
    images = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES):
        try:
            with Image.open(path) as image:
                image.load()
            images.append(path)
        except (OSError, SyntaxError, ValueError):        # what PIL raises for a damaged file
            print(f"skipped {path.stem}: {path}: not a readable image (truncated or damaged).")
    return images


def companion(folder: Path, image: Path) -> Path:
    """The mask of an image: same stem, any image suffix (Imgs hold .jpg, GT and Edge .png)."""
    for suffix in SUFFIXES:
        candidate = folder / f"{image.stem}{suffix}"
        if candidate.is_file():
            return candidate
    raise InputError(f"{image}: no {folder.name} file {folder / image.stem}.png beside it.")


def _pixels(path: Path, mode: str) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert(mode), dtype=np.float32) / 255
    except (OSError, SyntaxError, ValueError):
        raise InputError(f"{path}: not a readable image (truncated or damaged).") from None


def read_rgb(path: Path) -> torch.Tensor:
    return torch.from_numpy(_pixels(path, "RGB")).permute(2, 0, 1)


def read_grey(path: Path) -> torch.Tensor:
    """A soft mask: grey levels as [0, 1]."""
    return torch.from_numpy(_pixels(path, "L"))[None]


def read_binary(path: Path) -> torch.Tensor:
    return (read_grey(path) > 127 / 255).float()


def resize(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    size = (size, size) if isinstance(size, int) else size
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]


def edges_of(mask: torch.Tensor) -> torch.Tensor:
    """The morphological gradient of a (1, H, W) mask: the edge map for pseudo-labels that have none."""
    dilated = F.max_pool2d(mask[None], 3, 1, 1)
    eroded = -F.max_pool2d(-mask[None], 3, 1, 1)
    return (dilated - eroded)[0]


class TrainingSlices(Dataset):
    """(image, mask, edge, soft) items at `size`: binary masks (the doctors' labels) binarised after
    resizing, soft ones (Semi-Inf-Net's pseudo-labels) kept as they are; edges from files or from the
    binarised mask."""

    def __init__(self, items: list[tuple[Path, Path, Path | None, bool]], size: int):
        self.items, self.size = items, size

    @classmethod
    def labelled(cls, folder: Path, size: int) -> "TrainingSlices":
        edges = folder / "Edge"
        items = [(i, companion(folder / "GT", i), companion(edges, i) if edges.is_dir() else None, False)
                 for i in images_in(folder / "Imgs")]
        return cls(items, size)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        image, mask, edge, soft = self.items[i]
        gt = resize(read_grey(mask), self.size) if soft else (resize(read_binary(mask), self.size) > 0.5).float()
        edge_map = (resize(read_binary(edge), self.size) > 0.5).float() if edge else edges_of((gt > 0.5).float())
        return {"image": imagenet_normalise(resize(read_rgb(image), self.size)), "mask": gt, "edge": edge_map}


class TestSlices(Dataset):
    """Images at `size` with their truth at its own size; or, without truth, images to pseudo-label."""

    def __init__(self, images: list[Path], truth_folder: Path | None, size: int):
        self.images, self.truth_folder, self.size = images, truth_folder, size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        path = self.images[i]
        rgb = read_rgb(path)
        item = {"image": imagenet_normalise(resize(rgb, self.size)), "name": path.stem, "height": rgb.shape[1],
                "width": rgb.shape[2], "dataset": "covid-semiseg"}
        if self.truth_folder is not None:
            item["truth"] = read_binary(companion(self.truth_folder, path))
        return item


def labelled_slices(cfg) -> list[tuple[str, str]]:
    """("covid-semiseg", name) of the labelled training slices: what cross-validation splits."""
    return _slice_items(SemiSegFolders.find(semiseg_dir(cfg, cfg.infnet.data_root)))


def _slice_items(folders: SemiSegFolders) -> list[tuple[str, str]]:
    return [("covid-semiseg", image.stem) for image in images_in(folders.labelled / "Imgs")]


class SliceSegmentationDataModule(EvaluationDataModule):
    """Training on COVID-SemiSeg slices; validation on the 3D labelled sets of `data.test` (slice by slice;
    none when data.test=[]) and on COVID-SemiSeg's test slices. Under cross-validation (`cv.fold` = f),
    fold f of the labelled slices is held out: not trained on, and validated on instead of the test slices."""

    def __init__(self, cfg, extra_training: list[tuple[Path, Path, Path | None, bool]] | None = None,
                 labelled: bool = True, evaluate: bool = True, batch_size: int | None = None):
        """`extra_training`: (image, mask, edge, soft) items beside (or, labelled=False, instead of) the labelled
        slices; `batch_size`: other than infnet.batch_size (Semi-Inf-Net's step (i))."""
        super().__init__(cfg)
        self.extra_training, self.labelled, self.evaluate = extra_training or [], labelled, evaluate
        self.batch_size = batch_size or cfg.infnet.batch_size

    def prepare_data(self) -> None:
        """The labelled 3D sets only when this fit validates (not in every Semi-Inf-Net round)."""
        if self.evaluate:
            super().prepare_data()
        prepare_semiseg(self.cfg, self.cfg.infnet.data_root)

    def setup(self, stage: str) -> None:
        if self.evaluate:
            super().setup(stage)
        self.folders = SemiSegFolders.find(semiseg_dir(self.cfg, self.cfg.infnet.data_root))
        size, cv = self.cfg.infnet.train_size, self.cfg.cv
        held = held_out(_slice_items(self.folders), cv, self.cfg.seed)
        labelled = [item for item in TrainingSlices.labelled(self.folders.labelled, size).items
                    if ("covid-semiseg", item[0].stem) not in held]
        self.train_set = TrainingSlices((labelled if self.labelled else []) + self.extra_training, size)
        if cv.fold is None:
            self.test_slices = TestSlices(images_in(self.folders.test / "Imgs"), self.folders.test / "GT", size)
        else:
            images = [i for i in images_in(self.folders.labelled / "Imgs") if ("covid-semiseg", i.stem) in held]
            self.test_slices = TestSlices(images, self.folders.labelled / "GT", size)

    def train_dataloader(self) -> DataLoader:
        return training_loader(self.train_set, self.trainer, self.batch_size, self.cfg.seed, shuffle=True,
                               drop_last=False, num_workers=self.cfg.data.num_workers)

    def val_dataloader(self) -> list[DataLoader]:
        workers = min(2, self.cfg.data.num_workers)
        sets = ([self.volumes] if self.volumes is not None and len(self.volumes) else []) + [self.test_slices]
        return [DataLoader(s, batch_size=1, num_workers=workers) for s in sets]
