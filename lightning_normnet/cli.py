"""`normnet train | prepare | predict | evaluate`.

    normnet train [--run-dir DIR] EXPERIMENT [key=value ...]
    normnet cv [--run-dir DIR] EXPERIMENT [key=value ...]   k-fold cross-validation (unet3d)
    normnet compare RUN RUN [...] [--output DIR]           Table III of runs scored on the same volumes
    normnet prepare EXPERIMENT [key=value ...]            cache the experiment's data
    normnet prepare --input DIR --output DIR [--labelled] cache any folder
    normnet predict --checkpoint CKPT [CKPT ...] --input CT --output MASK [--report R.json]
    normnet evaluate --checkpoint CKPT [CKPT ...] [key=value ...]
    normnet evaluate --masks DIR [--experiment EXP] [--method NAME] [key=value ...]   score predicted masks
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from .config import ConfigError, config_from_checkpoint, load_config
from .io import InputError


def _run_dir(cfg, kind: str, chosen: str | None = None) -> Path:
    """runs/<name>/<kind>-<time>, one folder for all ranks: DDP children inherit NORMNET_RUN_DIR,
    SLURM tasks share the job id; `chosen` (--run-dir) continues in a given folder."""
    inherited = os.environ.get("NORMNET_RUN_DIR")
    if inherited:
        return Path(inherited)
    if chosen:
        run_dir = Path(chosen)
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run_dir / "config.yaml")
        os.environ["NORMNET_RUN_DIR"] = str(run_dir)
        return run_dir
    stamp = os.environ.get("SLURM_JOB_ID") or time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(cfg.output_dir) / cfg.name / f"{kind}-{stamp}"
    if "SLURM_JOB_ID" in os.environ:
        run_dir.mkdir(parents=True, exist_ok=True)
    else:                                   # two runs started in the same second get -2, -3, ...
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        for n in range(2, 1000):
            try:
                run_dir.mkdir()
                break
            except FileExistsError:
                run_dir = run_dir.with_name(f"{kind}-{stamp}-{n}")
    OmegaConf.save(cfg, run_dir / "config.yaml")
    os.environ["NORMNET_RUN_DIR"] = str(run_dir)
    return run_dir


def train(args) -> int:
    import lightning as L

    from .training import FITTERS

    cfg = load_config(args.experiment, args.overrides)
    L.seed_everything(cfg.seed, workers=True)
    FITTERS[cfg.model.kind](cfg, _run_dir(cfg, "train", args.run_dir))
    return 0


def compare(args) -> int:
    from .comparison import compare as render_comparison

    out = Path(args.output or Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}")
    print(render_comparison(args.runs, out))
    print(f"\ncomparison: {out / 'compare.md'}, {out / 'compare.csv'}, {out / 'compare.png'}")
    return 0


def cv(args) -> int:
    """k-fold cross-validation: one run per fold in runs/<name>/cv-<time>/fold<f>/, then the summary.
    A fold whose run finished (checkpoints/last.ckpt) is not trained again, so `--run-dir` resumes."""
    import lightning as L

    from .config import apply_overrides
    from .cross_validation import summarize_folds
    from .training import FITTERS

    cfg = load_config(args.experiment, args.overrides)
    if cfg.model.kind != "unet3d":
        raise ConfigError(f"cv trains the supervised U-Net (model.kind=unet3d), not {cfg.model.kind}.")
    cv_dir = _run_dir(cfg, "cv", args.run_dir)
    for fold in range(cfg.unet3d.folds):
        fold_dir = cv_dir / f"fold{fold}"
        if (fold_dir / "checkpoints" / "last.ckpt").is_file():
            continue
        fold_dir.mkdir(parents=True, exist_ok=True)
        L.seed_everything(cfg.seed, workers=True)
        FITTERS["unet3d"](apply_overrides(cfg, [f"unet3d.fold={fold}", "data.test=[]"]), fold_dir)
    print(f"\n{cfg.unet3d.folds}-fold cross-validation ({cv_dir}):\n{summarize_folds(cv_dir, cfg.unet3d.folds)}")
    return 0


def load_ensemble(checkpoints: list[str], overrides: list[str], device):
    """The model of the checkpoints with the config of the first, plus overrides. NormNet checkpoints
    vote together (one NormNet whose members are those of all checkpoints); other methods take one."""
    import torch

    from .training import model_class

    for path in checkpoints:
        if not Path(path).is_file():
            raise InputError(f"{path}: checkpoint not found.")
    saved = torch.load(checkpoints[0], map_location="cpu", weights_only=False, mmap=True)["hyper_parameters"]["config"]
    kind = saved.get("model", {}).get("kind", "normnet")
    if kind != "normnet":
        if len(checkpoints) > 1:
            raise ConfigError(f"{kind} checkpoints do not vote: give one.")
        model = model_class(kind).load_from_checkpoint(checkpoints[0], map_location=device, weights_only=False)
        model.cfg = config_from_checkpoint(saved, overrides)
        return model.to(device).eval(), model.cfg
    models = [model_class("normnet").load_from_checkpoint(path, map_location=device, weights_only=False)
              for path in checkpoints]
    cfg = config_from_checkpoint(models[0].hparams["config"], overrides)
    ensemble = models[0]
    ensemble.cfg = cfg
    ensemble.members = torch.nn.ModuleList([member for model in models for member in model.members])
    return ensemble.to(device).eval(), cfg


def _device():
    import torch
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def predict(args) -> int:
    from .inference import predict_ct
    from .io import write_image, write_text

    device = _device()
    model, cfg = load_ensemble(args.checkpoint, args.overrides, device)
    if cfg.model.kind != "normnet":
        raise ConfigError(f"predict takes NormNet checkpoints; score a {cfg.model.kind} one with `normnet evaluate`.")
    result = predict_ct(model.members, args.input, cfg, device, Path(args.lung_mask) if args.lung_mask else None)
    write_image(result.lesion, args.output)
    print(f"lesion mask: {args.output} ({result.report['lesion_volume_ml']:.1f} mL lesion in "
          f"{result.report['lung_volume_ml']:.1f} mL lung, {result.report['percentage_of_infection']:.2f}%)")
    if args.report:
        report = write_text(args.report, json.dumps({**result.report, "checkpoints": args.checkpoint}, indent=1))
        print(f"report: {report}")
    return 0


def evaluate_masks(args) -> int:
    """Score another method's predicted masks (a folder) on data.test; the run can join `compare`."""
    from datamodules.data_sources import prepare_dataset

    from .external_predictions import score_masks

    cfg = load_config(args.experiment or "normnet", args.overrides)
    for name in cfg.data.test:
        prepare_dataset(cfg, "test", name)
    cfg.name = args.method
    run_dir = _run_dir(cfg, "evaluate")
    saved = OmegaConf.to_container(cfg)
    saved["model"]["kind"] = "external"           # compare groups it with the (semi-)supervised methods
    OmegaConf.save(OmegaConf.create(saved), run_dir / "config.yaml")
    print(f"{score_masks(cfg, args.masks, run_dir)}\nmetrics: {run_dir / 'evaluation.md'}")
    return 0


def evaluate(args) -> int:
    from callbacks.dataset_summary import DatasetSummary
    from callbacks.ensemble_evaluation import EnsembleEvaluation
    from datamodules.evaluation import EvaluationDataModule

    from .training import make_trainer

    if args.masks:
        return evaluate_masks(args)
    if not args.checkpoint:
        raise ConfigError("evaluate needs --checkpoint CKPT [...] or --masks DIR.")
    model, cfg = load_ensemble(args.checkpoint, args.overrides, "cpu")
    run_dir = _run_dir(cfg, "evaluate")
    evaluation = EnsembleEvaluation(run_dir, cfg.logging.overlays)
    summary = DatasetSummary(run_dir, cfg, [("test", name) for name in cfg.data.test])
    trainer = make_trainer(cfg, run_dir, [summary, evaluation])
    if cfg.model.kind in ("infnet", "semi_infnet"):    # also COVID-SemiSeg's test slices, Inf-Net's metrics
        from datamodules.covid_semiseg import SliceSegmentationDataModule
        datamodule = SliceSegmentationDataModule(cfg)
    else:
        datamodule = EvaluationDataModule(cfg)
    trainer.validate(model, datamodule=datamodule)
    if trainer.is_global_zero:
        print(f"metrics: {run_dir / 'evaluation.md'}")
    return 0


def prepare(args) -> int:
    from datamodules.data_sources import prepare_dataset

    from .datasets import discover
    from .datasets.cache import prepare_cases

    if args.input:
        if not args.output:
            raise ConfigError("prepare --input needs --output <cache folder>.")
        cfg = load_config(args.experiment or "normnet", args.overrides)
        role = "test" if args.labelled else "healthy"
        index = prepare_cases(discover("folder", args.input, cfg.datasets.folder, role), args.output, cfg,
                              training=not args.labelled)
        print(f"{len(index['cases'])} volumes prepared in {args.output}, {len(index['skipped'])} skipped")
        return 0
    if not args.experiment:
        raise ConfigError("prepare needs an EXPERIMENT or --input DIR --output DIR.")
    cfg = load_config(args.experiment, args.overrides)
    print(f"healthy: {prepare_dataset(cfg, 'healthy', cfg.data.healthy)}")
    for name in cfg.data.test:
        print(f"test {name}: {prepare_dataset(cfg, 'test', name)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="normnet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train an experiment (experiments/<name>.yaml)")
    p.add_argument("experiment")
    p.add_argument("--run-dir", help="continue in this run folder (Semi-Inf-Net resumes its pseudo-label rounds)")
    p.add_argument("overrides", nargs="*", help="key.sub=value")
    p.set_defaults(func=train)
    p = sub.add_parser("compare", help="Table III of runs scored on the same volumes (markdown, CSV, PNG)")
    p.add_argument("runs", nargs="+", help="run folders (train, evaluate or cv)")
    p.add_argument("--output", help="folder for compare.md/.csv/.png (default runs/compare-<time>)")
    p.set_defaults(func=compare)
    p = sub.add_parser("cv", help="k-fold cross-validation of the supervised U-Net (unet3d.folds)")
    p.add_argument("--run-dir", help="continue in this cv folder (finished folds are kept)")
    p.add_argument("experiment")
    p.add_argument("overrides", nargs="*", help="key.sub=value")
    p.set_defaults(func=cv)
    p = sub.add_parser("prepare", help="build the preprocessed cache")
    p.add_argument("experiment", nargs="?")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--input", help="a folder of scans (images/, lesions/, lungs/ or plain)")
    p.add_argument("--output", help="cache folder to write")
    p.add_argument("--labelled", action="store_true", help="cases carry lesion masks (evaluation set)")
    p.set_defaults(func=prepare)
    p = sub.add_parser("predict", help="lesion mask for one CT file or DICOM folder")
    p.add_argument("--checkpoint", nargs="+", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True, help="mask file (.nii.gz, .nrrd, .mha)")
    p.add_argument("--report", help="JSON report: volumes, percentage of infection, per-slice counts")
    p.add_argument("--lung-mask", help="lung mask file to use instead of computing one")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=predict)
    p = sub.add_parser("evaluate", help="score checkpoints, or a folder of predicted masks, on data.test")
    p.add_argument("--checkpoint", nargs="+")
    p.add_argument("--masks", help="folder of predicted lesion masks: <dataset>/<case>.* or <case>.*")
    p.add_argument("--experiment", help="with --masks: the experiment whose data and grid to score on")
    p.add_argument("--method", default="external", help="with --masks: the method's name in compare")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "checkpoint", None):   # `--checkpoint a.ckpt b.ckpt key=value`: nargs='+' took the overrides
        args.overrides = [c for c in args.checkpoint if "=" in c] + args.overrides
        args.checkpoint = [c for c in args.checkpoint if "=" not in c]
    launched_by_parent = "NORMNET_RUN_DIR" in os.environ
    try:
        return args.func(args)
    except (ConfigError, InputError) as err:
        print(f"normnet {args.command}: {err}", file=sys.stderr)
        return 2
    finally:
        if not launched_by_parent:
            os.environ.pop("NORMNET_RUN_DIR", None)


if __name__ == "__main__":
    sys.exit(main())
