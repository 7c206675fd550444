"""How each method is trained: the Lightning Trainer every method shares (loggers, progress, devices)
and one `fit_<method>` per model.kind, called by `normnet train` with the run folder."""
from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from callbacks.dataset_summary import DatasetSummary
from callbacks.ensemble_evaluation import EnsembleEvaluation

from .io import write_atomically


def use_offline_wandb_unless_keyed() -> None:
    """Nothing reaches the network unless the user gave W&B a key (or chose a mode)."""
    if not os.environ.get("WANDB_API_KEY") and "WANDB_MODE" not in os.environ:
        os.environ["WANDB_MODE"] = "offline"


def make_trainer(cfg: DictConfig, run_dir: Path, callbacks: list, log: bool = True, **overrides) -> L.Trainer:
    loggers = [CSVLogger(save_dir=str(run_dir), name="", version="")] if log else False
    if log and cfg.logging.wandb:
        use_offline_wandb_unless_keyed()
        loggers.append(WandbLogger(project=cfg.logging.project, name=f"{cfg.name}-{run_dir.name}",
                                   save_dir=str(run_dir), config=OmegaConf.to_container(cfg)))
    t = cfg.trainer
    options = dict(accelerator=t.accelerator, devices=t.devices, strategy=t.strategy, precision=t.precision,
                   logger=loggers, callbacks=callbacks + [RichProgressBar()], log_every_n_steps=t.log_every_n_steps,
                   num_sanity_val_steps=t.num_sanity_val_steps, default_root_dir=str(run_dir))
    options.update(overrides)
    return L.Trainer(**options)


def _evaluation_callbacks(cfg: DictConfig, run_dir: Path, healthy: bool, train: bool = False) -> list:
    sources = (([("healthy", cfg.data.healthy)] if healthy else []) + [("train", n) for n in cfg.data.train] * train
               + [("test", n) for n in cfg.data.test])
    return [DatasetSummary(run_dir, cfg, sources), EnsembleEvaluation(run_dir, cfg.logging.overlays)]


def _finish(trainer: L.Trainer, run_dir: Path) -> Path:
    last = run_dir / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(last)   # the final weights, whatever the interval
    if trainer.is_global_zero:
        print(f"run folder: {run_dir}\ncheckpoint: {last}")
    return last


def fit_normnet(cfg: DictConfig, run_dir: Path) -> Path:
    from datamodules.healthy import HealthyCTDataModule

    from .models.normnet import NormNet

    datamodule = HealthyCTDataModule(cfg)
    interval = min(cfg.trainer.val_check_interval, cfg.trainer.max_steps)
    checkpoints = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="step{step:06d}",
                                  auto_insert_metric_name=False, save_last=True, every_n_train_steps=interval,
                                  save_top_k=-1)
    trainer = make_trainer(cfg, run_dir, _evaluation_callbacks(cfg, run_dir, healthy=True) + [checkpoints],
                           max_steps=cfg.trainer.max_steps, val_check_interval=interval, check_val_every_n_epoch=None)
    model = NormNet(OmegaConf.to_container(cfg, resolve=True))
    trainer.fit(model, datamodule=datamodule)
    if cfg.trainer.max_steps % interval:   # fit validated at multiples of the interval; add the last step
        trainer.validate(model, datamodule=datamodule)
    return _finish(trainer, run_dir)


def _fit_slices(cfg: DictConfig, run_dir: Path, model, epochs: int, batch_size: int, extra=None,
                labelled: bool = True, evaluate: bool = True) -> L.Trainer:
    """Inf-Net epochs on COVID-SemiSeg slices (labelled and/or pseudo-labelled)."""
    from datamodules.covid_semiseg import SliceSegmentationDataModule

    slice_cfg = OmegaConf.merge(cfg, {"infnet": {"batch_size": batch_size}})
    datamodule = SliceSegmentationDataModule(slice_cfg, extra, labelled, evaluate)
    callbacks = _evaluation_callbacks(cfg, run_dir, healthy=False) if evaluate else []
    every = max(1, min(cfg.infnet.val_every, epochs))
    trainer = make_trainer(cfg, run_dir, callbacks, log=evaluate, max_epochs=epochs, check_val_every_n_epoch=every,
                           limit_val_batches=1.0 if evaluate else 0, enable_checkpointing=False)
    trainer.fit(model, datamodule=datamodule)
    return trainer


def fit_infnet(cfg: DictConfig, run_dir: Path) -> Path:
    from .models.infnet import InfNetModel

    model = InfNetModel(OmegaConf.to_container(cfg, resolve=True))
    trainer = _fit_slices(cfg, run_dir, model, cfg.infnet.epochs, cfg.infnet.batch_size)
    return _finish(trainer, run_dir)


def fit_semi_infnet(cfg: DictConfig, run_dir: Path) -> Path:
    """Algorithm 1 (resumable round by round), then step (i) a fresh Inf-Net on the pseudo-labelled
    slices and step (ii) fine-tuning on the labelled ones."""
    from datamodules.covid_semiseg import SemiSegFolders, images_in
    from datamodules.data_sources import prepare_semiseg

    from .models.infnet import InfNetModel
    from .semi_supervised import PseudoLabelPool

    semi, config = cfg.semi, OmegaConf.to_container(cfg, resolve=True)
    work = run_dir / "semi"
    state, round_model, masks = work / "pool.json", work / "round.ckpt", work / "pseudo-labels"
    unlabelled = [str(p) for p in images_in(SemiSegFolders.find(prepare_semiseg(cfg)).unlabelled)]
    pool = PseudoLabelPool.load_or_start(state, unlabelled[: semi.max_unlabelled], cfg.seed)
    model = InfNetModel(config)
    if round_model.is_file():
        model.load_state_dict(torch.load(round_model, map_location="cpu", weights_only=True))
    else:   # line 2: M trained on the labelled slices
        _fit_slices(cfg, run_dir, model, cfg.infnet.epochs, cfg.infnet.batch_size, evaluate=False)
        write_atomically(round_model, lambda tmp: torch.save(model.state_dict(), tmp))
    while not pool.done:   # lines 3-8
        drawn = pool.draw(semi.k)
        _write_pseudo_labels(model, [Path(p) for p in drawn], masks, cfg.infnet.train_size, cfg.infnet.threshold)
        _fit_slices(cfg, run_dir, model, semi.round_epochs, cfg.infnet.batch_size,
                    _pseudo_items(pool.labelled + drawn, masks), evaluate=False)
        write_atomically(round_model, lambda tmp: torch.save(model.state_dict(), tmp))
        pool.add(drawn, state)
        print(f"Semi-Inf-Net round {pool.round}: {len(pool.labelled)} pseudo-labelled, {len(pool.remaining)} left")
    final = InfNetModel(config)   # steps (i) and (ii) of Sec. III-D
    _fit_slices(cfg, run_dir, final, semi.pretrain_epochs, semi.pretrain_batch_size,
                _pseudo_items(pool.labelled, masks), labelled=False, evaluate=False)
    trainer = _fit_slices(cfg, run_dir, final, semi.finetune_epochs, cfg.infnet.batch_size)
    return _finish(trainer, run_dir)


def _pseudo_items(images: list[str], masks: Path) -> list[tuple[Path, Path, None]]:
    return [(Path(p), masks / f"{Path(p).stem}.png", None) for p in images]


@torch.no_grad()
def _write_pseudo_labels(model, images: list[Path], masks: Path, size: int, threshold: float) -> None:
    """Line 4: the model's S_3 > threshold, at each slice's own size, as a PNG beside the others."""
    from datamodules.covid_semiseg import TestSlices

    model.eval()
    masks.mkdir(parents=True, exist_ok=True)
    for item in TestSlices(images, None, size):
        probability = model.probability(item["image"][None].to(model.device), (item["height"], item["width"]))
        mask = Image.fromarray((probability[0, 0] > threshold).cpu().numpy().astype(np.uint8) * 255)
        write_atomically(masks / f"{item['name']}.png", mask.save)
    model.train()


def fit_cyclegan(cfg: DictConfig, run_dir: Path) -> Path:
    from datamodules.unpaired_slices import UnpairedSliceDataModule

    from .models.cyclegan import CycleGAN

    c = cfg.cyclegan
    trainer = make_trainer(cfg, run_dir, _evaluation_callbacks(cfg, run_dir, healthy=False, train=True),
                           max_epochs=c.epochs,
                           check_val_every_n_epoch=max(1, min(c.val_every, c.epochs)),
                           reload_dataloaders_every_n_epochs=1, enable_checkpointing=False)
    trainer.fit(CycleGAN(OmegaConf.to_container(cfg, resolve=True)), datamodule=UnpairedSliceDataModule(cfg))
    return _finish(trainer, run_dir)


def fit_unet3d(cfg: DictConfig, run_dir: Path) -> Path:
    from lightning.pytorch.callbacks import EarlyStopping

    from datamodules.labelled_patches import LabelledPatchDataModule

    from .models.unet3d import SupervisedUNet

    u = cfg.unet3d
    stopping = EarlyStopping(monitor="val/dsc", mode="max", patience=u.early_stopping_patience, strict=False)
    trainer = make_trainer(cfg, run_dir, _evaluation_callbacks(cfg, run_dir, healthy=False, train=True) + [stopping],
                           max_epochs=u.max_epochs, check_val_every_n_epoch=u.val_every,
                           reload_dataloaders_every_n_epochs=1, enable_checkpointing=False)
    trainer.fit(SupervisedUNet(OmegaConf.to_container(cfg, resolve=True)), datamodule=LabelledPatchDataModule(cfg))
    return _finish(trainer, run_dir)


def model_class(kind: str) -> type[L.LightningModule]:
    """The LightningModule of a model.kind, to load its checkpoints."""
    from .models.cyclegan import CycleGAN
    from .models.infnet import InfNetModel
    from .models.normnet import NormNet
    from .models.unet3d import SupervisedUNet

    return {"normnet": NormNet, "infnet": InfNetModel, "semi_infnet": InfNetModel, "cyclegan": CycleGAN,
            "unet3d": SupervisedUNet}[kind]


FITTERS = {"normnet": fit_normnet, "infnet": fit_infnet, "semi_infnet": fit_semi_infnet, "cyclegan": fit_cyclegan,
           "unet3d": fit_unet3d}
