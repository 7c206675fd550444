"""Semi-Inf-Net's training (Fan et al., Algorithm 1 and Sec. III-D): rounds of pseudo-labelling K random
unlabelled slices and fine-tuning, resumable round by round; then a fresh Inf-Net trained on the
pseudo-labelled slices (step i) and fine-tuned on the labelled ones (step ii)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig
from PIL import Image

from datamodules.covid_semiseg import SemiSegFolders, SliceSegmentationDataModule, TestSlices, images_in

from ..config import apply_overrides
from ..datasets.sources import prepare_semiseg
from ..io import write_atomically
from ..models.infnet import InfNetModel
from ..semi_supervised import PseudoLabelPool, soft_pseudo_label
from .fitting import as_dict, train_by_epochs

if TYPE_CHECKING:
    from ..runs.run import Run


def _fit_quietly(run: Run, model: InfNetModel, datamodule: SliceSegmentationDataModule, epochs: int) -> None:
    """Epochs without validation or logs: the rounds and step (i)."""
    run.trainer(evaluate=False, max_epochs=epochs, enable_checkpointing=False).fit(model, datamodule=datamodule)


def fit_semi_infnet(cfg: DictConfig, run: Run) -> None:
    semi, config = cfg.semi, as_dict(cfg)
    work = run.dir / "semi"
    state, round_model, masks = work / "pool.json", work / "round.ckpt", work / "pseudo-labels"
    unlabelled = [str(p) for p in images_in(SemiSegFolders.find(prepare_semiseg(cfg, cfg.infnet.data_root)).unlabelled)]
    pool = PseudoLabelPool.load_or_start(state, unlabelled[: semi.max_unlabelled], cfg.seed)
    # the rounds fine-tune at semi.round_lr (PseudoGenerator.py's train_module: 3e-4, a fresh Adam a round)
    model = InfNetModel.for_training(as_dict(apply_overrides(cfg, [f"infnet.lr={semi.round_lr}"])))
    if round_model.is_file():
        model.load_state_dict(torch.load(round_model, map_location="cpu", weights_only=True))
    else:   # line 2: M trained on the labelled slices, at Inf-Net's own rate
        first = InfNetModel.for_training(config)
        _fit_quietly(run, first, SliceSegmentationDataModule(cfg, evaluate=False), cfg.infnet.epochs)
        model.load_state_dict(first.state_dict())
        write_atomically(round_model, lambda tmp: torch.save(model.state_dict(), tmp))
    while not pool.done:   # lines 3-8
        drawn = pool.draw(semi.k)
        _write_pseudo_labels(model, [Path(p) for p in drawn], masks, cfg.infnet.train_size)
        datamodule = SliceSegmentationDataModule(cfg, _pseudo_items(pool.labelled + drawn, masks), evaluate=False)
        _fit_quietly(run, model, datamodule, semi.round_epochs)
        write_atomically(round_model, lambda tmp: torch.save(model.state_dict(), tmp))
        pool.add(drawn, state)
        print(f"Semi-Inf-Net round {pool.round}: {len(pool.labelled)} pseudo-labelled, {len(pool.remaining)} left")
    final = InfNetModel.for_training(config)   # steps (i) and (ii) of Sec. III-D
    pretraining = SliceSegmentationDataModule(cfg, _pseudo_items(pool.labelled, masks), labelled=False,
                                              evaluate=False, batch_size=semi.pretrain_batch_size)
    _fit_quietly(run, final, pretraining, semi.pretrain_epochs)
    train_by_epochs(run, final, semi.finetune_epochs, cfg.infnet.val_every)


def _pseudo_items(images: list[str], masks: Path) -> list[tuple[Path, Path, None, bool]]:
    """(image, soft pseudo-label, no edge file, soft) training items."""
    return [(Path(p), masks / f"{Path(p).stem}.png", None, True) for p in images]


@torch.no_grad()
def _write_pseudo_labels(model: InfNetModel, images: list[Path], masks: Path, size: int) -> None:
    """Line 4: the model's soft S_3 map (semi_supervised.soft_pseudo_label), at each slice's own size, as a
    PNG beside the others."""
    model.eval()
    masks.mkdir(parents=True, exist_ok=True)
    for item in TestSlices(images, None, size):
        probability = model.probability(item["image"][None].to(model.device), (item["height"], item["width"]))
        mask = Image.fromarray(soft_pseudo_label(probability[0, 0].cpu().numpy()))
        write_atomically(masks / f"{item['name']}.png", mask.save)
    model.train()
