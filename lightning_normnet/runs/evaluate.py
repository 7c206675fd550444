"""`normnet evaluate`: any method's checkpoints, or another tool's predicted masks, scored on the labelled
sets of data.test, on each scan's own grid; the run folder joins `normnet compare`."""
from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk
import torch
from rich.progress import track

from ..config import load_config
from ..datasets.cache import load_index, load_truth
from ..datasets.sources import prepare_dataset
from ..io import InputError, case_name, is_image_file, read_mask
from ..methods import method_of
from ..metrics import segmentation_metrics
from ..scores import EVALUATION, Evaluation, VolumeScore
from .checkpoints import load_model
from .run import Run, finished, open_run_folder, removed_if_refused


def evaluate_checkpoints(checkpoints: list[str], overrides: list[str] | tuple[str, ...] = ()) -> Path:
    """The checkpoints' model (their vote, for several) scored on data.test. The last.ckpt of a run that
    stopped before its end is refused; its step checkpoints may be scored, as chosen intermediate models."""
    for path in map(Path, checkpoints):
        folder = path.resolve().parent.parent
        if path.name == "last.ckpt" and (folder / EVALUATION).is_file() and not finished(folder):
            raise InputError(f"{path}: its run stopped before the end of its training: resume it with `normnet "
                             f"train --run-dir {folder} ...`, or score one of its step checkpoints.")
    model, method = load_model(checkpoints, overrides)
    run = Run(model.cfg, method, open_run_folder(model.cfg, "evaluate"))
    with removed_if_refused(run.dir, model.cfg.output_dir):
        trainer = run.trainer(training=False)
        trainer.validate(model, datamodule=method.evaluation_data(model.cfg))
    if trainer.is_global_zero:
        run.evaluation.mark_finished()
        print(f"metrics: {run.dir / 'evaluation.md'}")
    return run.dir


def _find_mask(masks: Path, dataset: str, case: str) -> Path:
    for folder in (masks / dataset, masks):
        if folder.is_dir():
            found = [p for p in sorted(folder.iterdir()) if is_image_file(p) and case_name(p) == case]
            if len(found) > 1:
                raise InputError(f"{found[0]} and {found[1]} are both the mask of case '{case}': keep one.")
            if found:
                return found[0]
    raise InputError(f"{masks}: no predicted mask {dataset}/{case}.* (nor {case}.*); every scored volume needs one.")


def evaluate_masks(masks: str | Path, method: str, label_free: bool, experiment: str | None = None,
                   overrides: list[str] | tuple[str, ...] = ()) -> Path:
    """Masks made elsewhere (nnU-Net, ...): DIR/<dataset>/<case>.* or DIR/<case>.*, each in its scan's
    geometry, scored against the lesion mask on that same grid, as every method here is. The data.test
    sets and their reading are the experiment's (normnet's by default)."""
    cfg = load_config(experiment or "normnet", overrides)
    method_of(cfg)
    masks, scores = Path(masks), []
    for dataset in cfg.data.test:
        prepared = prepare_dataset(cfg, "test", dataset)
        cases = load_index(prepared)["cases"][: cfg.data.max_test_volumes]
        for case in track(cases, description=f"score {dataset}"):
            truth = load_truth(prepared / case["name"])
            predicted = read_mask(_find_mask(masks, dataset, case["name"]), truth.grid, "predicted mask")
            lesion = torch.from_numpy(sitk.GetArrayFromImage(predicted).astype(bool))
            truth_lesion, lung = torch.from_numpy(truth.lesion), torch.from_numpy(truth.lung)
            scores.append(VolumeScore(dataset, case["name"], case["source"],
                                      **segmentation_metrics(lesion, truth_lesion, lung)))
    run_dir = open_run_folder(cfg, "evaluate", name=method)
    print(f"{Evaluation(method, method, label_free, run_dir, finished=True).append(0, scores)}\n"
          f"metrics: {run_dir / 'evaluation.md'}")
    return run_dir

