"""Lesion masks predicted elsewhere (nnU-Net, a colleague's method) scored like every run here.

`normnet evaluate --masks DIR` reads DIR/<dataset>/<case>.* (or DIR/<case>.*) for every volume of the
labelled sets of `data.test`, in the geometry of the original scan; each mask goes through the same
preparation as the truth (reorientation, resampling, lung-centred crop), so it is scored on the same
grid with the same metrics, and the run folder's evaluation.json can join `normnet compare`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from rich.progress import track

from datamodules.data_sources import dataset_options, prepared_dir, raw_root

from .datasets import discover
from .datasets.cache import load_index, read_case
from .io import InputError, case_name, is_image_file, write_text
from .metrics import format_table, segmentation_metrics, summarize
from .preprocessing import prepare_volume


def _find_mask(masks: Path, dataset: str, case: str) -> Path:
    for folder in (masks / dataset, masks):
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if is_image_file(path) and case_name(path) == case:
                    return path
    raise InputError(f"{masks}: no predicted mask {dataset}/{case}.* (nor {case}.*); every scored volume needs one.")


def score_masks(cfg: DictConfig, masks: str | Path, run_dir: Path) -> str:
    masks, records = Path(masks), []
    for dataset in cfg.data.test:
        prepared = prepared_dir(cfg, "test", dataset)
        scored = {c["name"] for c in load_index(prepared)["cases"]}
        listing = discover(dataset, raw_root(cfg, "test", dataset), dataset_options(cfg, dataset), "test")
        for case in track([c for c in listing.cases if c.name in scored], description=f"score {dataset}"):
            image, _, lung, predicted = read_case(case, cfg, _find_mask(masks, dataset, case.name))
            on_grid = prepare_volume(image, lung, cfg.preprocessing, predicted, training=False).lesion
            folder = prepared / case.name
            record = {"dataset": dataset, "name": case.name, "source": str(case.image)}
            truth_on_grid, lung_on_grid = (torch.from_numpy(np.load(folder / f)) for f in ("lesion.npy", "lung.npy"))
            record.update(segmentation_metrics(torch.from_numpy(on_grid), truth_on_grid, lung_on_grid))
            records.append(record)
    table = format_table(summarize(records))
    write_text(run_dir / "evaluation.json", json.dumps([{"step": 0, "volumes": records, "summary": summarize(records)}],
                                                       indent=1, default=lambda x: None))
    write_text(run_dir / "evaluation.md", table + "\n")
    return table
