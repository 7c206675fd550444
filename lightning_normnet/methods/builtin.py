"""The built-in methods, each declared once: NormNet, the naive threshold, the cycle-GAN method, Inf-Net,
Semi-Inf-Net and the supervised 3D U-Net."""
from __future__ import annotations

from lightning.pytorch.callbacks import EarlyStopping
from omegaconf import DictConfig

from datamodules.covid_semiseg import SliceSegmentationDataModule, labelled_slices
from datamodules.evaluation import EvaluationDataModule, train_volumes
from datamodules.healthy import HealthyCTDataModule
from datamodules.labelled_patches import LabelledPatchDataModule
from datamodules.unpaired_slices import UnpairedSliceDataModule

from ..config import ConfigError, require_counts, require_fractions
from ..models.cyclegan import CycleGAN
from ..models.infnet import InfNetModel
from ..models.normnet import NormNet
from ..models.threshold import ThresholdModel
from ..models.unet3d import SupervisedUNet
from . import Method, register
from .fitting import as_dict, score_only, train_by_epochs, train_by_steps
from .semi_infnet import fit_semi_infnet


def _normnet_ensemble(models: list[NormNet]) -> NormNet:
    """Checkpoints trained apart vote as one ensemble (the first one's settings)."""
    return NormNet(models[0].hparams["config"], members=[m for model in models for m in model.members])


register(Method(
    name="normnet", label_free=True, module=NormNet, datamodule=HealthyCTDataModule, training_data=("healthy",),
    ensemble=_normnet_ensemble,
    # its training never looks at the test sets (no early stopping), nor at how it predicts
    inference_keys=("inference", "postprocessing", "preprocessing.edge_removal.at_inference", "data.test",
                    "data.test_root", "data.max_test_volumes"),
    fit=lambda cfg, run: train_by_steps(run, NormNet(as_dict(cfg)))))


def _validate_threshold(cfg: DictConfig) -> None:
    low, high = cfg.threshold.hu_band
    w_low, w_high = cfg.preprocessing.window
    if not w_low <= low < high <= w_high:
        raise ConfigError(f"threshold.hu_band={[low, high]} must be [low, high] inside preprocessing.window "
                          f"{[w_low, w_high]}.")


register(Method(
    name="threshold", label_free=True, module=ThresholdModel, datamodule=EvaluationDataModule,
    config_groups=("threshold",),
    validate=_validate_threshold,
    fit=lambda cfg, run: score_only(run, ThresholdModel(as_dict(cfg)))))


def _validate_cyclegan(cfg: DictConfig) -> None:
    require_counts(cfg, [f"cyclegan.{k}" for k in ("stages", "base_channels", "crop", "batch_size", "epochs",
                                                    "schedule_epochs", "val_every", "median_kernel",
                                                    "gaussian_size")])
    require_counts(cfg, ["cyclegan.decay_epochs", "cyclegan.pool_size"], minimum=0)
    c = cfg.cyclegan
    if c.decay_epochs > c.schedule_epochs:
        raise ConfigError(f"cyclegan.decay_epochs={c.decay_epochs} must be at most cyclegan.schedule_epochs="
                          f"{c.schedule_epochs} (the decay ends the schedule).")
    for key, neutral in (("gradient_clip_val", None), ("accumulate_grad_batches", 1)):
        if cfg.trainer.get(key, neutral) != neutral:      # Lightning refuses both mid-run for manual optimisation
            raise ConfigError(f"trainer.{key} is not available to the cycle-GAN, which steps its two optimisers "
                              "itself (manual optimisation).")
    if c.clustering not in ("kmeans", "otsu"):
        raise ConfigError(f"cyclegan.clustering={c.clustering!r} must be kmeans or otsu.")
    if c.crop % 2 ** c.stages or c.crop > min(cfg.preprocessing.in_plane_size):
        raise ConfigError(f"cyclegan.crop={c.crop} must be a multiple of 2^stages={2 ** c.stages} "
                          f"within preprocessing.in_plane_size {list(cfg.preprocessing.in_plane_size)}.")


register(Method(
    name="cyclegan", label_free=True, module=CycleGAN, datamodule=UnpairedSliceDataModule,
    config_groups=("cyclegan",), training_data=("train",), cv_items=lambda cfg: list(train_volumes(cfg)),
    validate=_validate_cyclegan,
    fit=lambda cfg, run: train_by_epochs(run, CycleGAN(as_dict(cfg)), cfg.cyclegan.epochs, cfg.cyclegan.val_every,
                                         reload_dataloaders_every_n_epochs=1)))


def _validate_infnet(cfg: DictConfig) -> None:
    require_counts(cfg, [f"infnet.{k}" for k in ("train_size", "batch_size", "epochs", "decay_every", "val_every",
                                                  "boundary_kernel")])
    require_fractions(cfg, ["infnet.threshold", "infnet.decay_rate"])


def _validate_semi_infnet(cfg: DictConfig) -> None:
    _validate_infnet(cfg)
    require_counts(cfg, [f"semi.{k}" for k in ("k", "pretrain_batch_size")])
    require_counts(cfg, [f"semi.{k}" for k in ("round_epochs", "pretrain_epochs", "finetune_epochs")], minimum=0)


register(Method(
    name="infnet", label_free=False, module=InfNetModel, datamodule=SliceSegmentationDataModule,
    config_groups=("infnet",), evaluation_data=SliceSegmentationDataModule, cv_items=labelled_slices,
    validate=_validate_infnet,
    fit=lambda cfg, run: train_by_epochs(run, InfNetModel.for_training(as_dict(cfg)), cfg.infnet.epochs,
                                         cfg.infnet.val_every)))


register(Method(
    name="semi_infnet", label_free=False, module=InfNetModel, datamodule=SliceSegmentationDataModule,
    config_groups=("infnet", "semi"), evaluation_data=SliceSegmentationDataModule, cv_items=labelled_slices,
    validate=_validate_semi_infnet, fit=fit_semi_infnet))


def _validate_unet3d(cfg: DictConfig) -> None:
    require_counts(cfg, [f"unet3d.{k}" for k in ("batch_size", "batches_per_epoch", "max_epochs", "val_every",
                                                  "early_stopping_patience")])
    require_counts(cfg, ["unet3d.plateau_patience"], minimum=0)
    require_fractions(cfg, ["unet3d.augmentation_probability", "unet3d.tversky_alpha", "unet3d.tversky_beta"])
    if any(p < 1 for p in cfg.unet3d.patch):
        raise ConfigError(f"unet3d.patch={list(cfg.unet3d.patch)} must be positive on every axis.")
    if len(cfg.unet3d.channels) != 5:
        raise ConfigError(f"unet3d.channels={list(cfg.unet3d.channels)} must give 5 levels' feature maps (the "
                          "standard U-Net's four poolings; the paper's 32 to 512).")
    if any(p % 16 for p in cfg.unet3d.patch):
        raise ConfigError(f"unet3d.patch={list(cfg.unet3d.patch)} must be a multiple of 16 on every axis (four "
                          "poolings).")


def _fit_unet3d(cfg: DictConfig, run) -> None:
    u = cfg.unet3d
    stopping = EarlyStopping(monitor="train/epoch_loss", mode="min", patience=u.early_stopping_patience,
                             check_on_train_epoch_end=True)      # the training loss, as the paper
    train_by_epochs(run, SupervisedUNet(as_dict(cfg)), u.max_epochs, u.val_every, [stopping],
                    reload_dataloaders_every_n_epochs=1)


register(Method(
    name="unet3d", label_free=False, module=SupervisedUNet, datamodule=LabelledPatchDataModule,
    config_groups=("unet3d",), training_data=("train",), cv_items=lambda cfg: list(train_volumes(cfg)),
    validate=_validate_unet3d, fit=_fit_unet3d))
