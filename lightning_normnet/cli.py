"""`normnet train | cv | compare | prepare | predict | evaluate | sweep | trial | ablations`: parse, then
hand over to runs/.

    normnet train [--run-dir DIR] EXPERIMENT [key=value ...]
    normnet cv [--run-dir DIR] EXPERIMENT [key=value ...]   k-fold cross-validation over data.train
    normnet compare RUN RUN [...] [--output DIR]           Table III of runs scored on the same volumes
    normnet prepare EXPERIMENT [key=value ...]            cache the experiment's data
    normnet prepare --input DIR --output DIR [--labelled] cache any folder
    normnet predict --checkpoint CKPT [CKPT ...] --input CT --output MASK [--report R.json] [--series UID]
    normnet evaluate --checkpoint CKPT [CKPT ...] [key=value ...]
    normnet evaluate --masks DIR [--experiment EXP] [--method NAME] [--label-free] [key=value ...]
    normnet sweep SWEEP.yaml [--count N]                  an agent of a sweep (W&B with a key, else Optuna)
    normnet trial SWEEP.yaml [--run-dir DIR] key=value ... one trial of a sweep (what its agents run)
    normnet ablations SWEEP_DIR [--output DIR]            Tables IV and V of a sweep's finished trials
"""
from __future__ import annotations

import argparse
import errno
import signal
import sys
import time
from pathlib import Path

from .config import ConfigError
from .io import InputError


def train(args) -> None:
    from .runs.train import train as train_run

    train_run(args.experiment, args.overrides, args.run_dir)


def cv(args) -> None:
    from .runs.cross_validation import cross_validate

    cross_validate(args.experiment, args.overrides, args.run_dir)


def compare(args) -> None:
    from .runs.compare import compare as render_comparison

    out = Path(args.output or Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}")
    print(render_comparison(args.runs, out))
    print(f"\ncomparison: {out / 'compare.md'}, {out / 'compare.csv'}, {out / 'compare.png'}")


def prepare(args) -> None:
    from .runs.train import prepare_experiment, prepare_folder

    if args.input:
        prepare_folder(args.input, args.output, args.labelled, args.experiment, args.overrides)
    elif args.experiment:
        prepare_experiment(args.experiment, args.overrides)
    else:
        raise ConfigError("prepare needs an EXPERIMENT or --input DIR --output DIR.")


def predict(args) -> None:
    from .runs.predict import predict as predict_scan

    predict_scan(args.checkpoint, args.input, args.output, args.report, args.lung_mask, args.overrides,
                 args.series)


def evaluate(args) -> None:
    from .runs.evaluate import evaluate_checkpoints, evaluate_masks

    if args.masks:
        evaluate_masks(args.masks, args.method, args.label_free, args.experiment, args.overrides)
    elif args.checkpoint:
        evaluate_checkpoints(args.checkpoint, args.overrides)
    else:
        raise ConfigError("evaluate needs --checkpoint CKPT [...] or --masks DIR.")


def sweep(args) -> None:
    from .runs.sweep import sweep as run_sweep

    if args.count is not None and args.count < 1:
        raise ConfigError(f"--count {args.count}: an agent runs at least 1 trial (leave it out for all).")
    run_sweep(args.sweep, args.count)


def trial(args) -> None:
    from .runs.trial import run_trial

    run_trial(args.sweep, args.arguments, args.run_dir)


def ablations(args) -> None:
    from .runs.ablations import write_tables

    write_tables(args.sweep_dir, args.output)


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
    p = sub.add_parser("cv", help="k-fold cross-validation (cv.folds) of a method trained on data.train")
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
    p = sub.add_parser("predict", help="lesion mask of one CT file or DICOM folder, by any method's checkpoint")
    p.add_argument("--checkpoint", nargs="+", required=True, help="one checkpoint, or several NormNet ones to vote")
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True, help="mask file (.nii.gz, .nrrd, .mha)")
    p.add_argument("--report", help="JSON report (volumes, percentage of infection, per-slice counts), a PNG beside")
    p.add_argument("--lung-mask", help="lung mask file to use instead of computing one")
    p.add_argument("--series", help="the DICOM series UID to read, where the --input folder holds several")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=predict)
    p = sub.add_parser("evaluate", help="score checkpoints, or a folder of predicted masks, on data.test")
    p.add_argument("--checkpoint", nargs="+")
    p.add_argument("--masks", help="folder of predicted lesion masks: <dataset>/<case>.* or <case>.*")
    p.add_argument("--experiment", help="with --masks: the experiment whose data to score on")
    p.add_argument("--method", default="external", help="with --masks: the method's name in compare")
    p.add_argument("--label-free", action="store_true", help="with --masks: file the method as label-free")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=evaluate)
    p = sub.add_parser("sweep", help="run a sweep file's trials (W&B's agent with a key, else Optuna)")
    p.add_argument("sweep", help="experiments/sweeps/<name>.yaml (W&B's sweep format)")
    p.add_argument("--count", type=int, help="run at most this many trials in this agent")
    p.set_defaults(func=sweep)
    p = sub.add_parser("trial", help="one trial of a sweep: the command in its sweep file")
    p.add_argument("sweep")
    p.add_argument("arguments", nargs="*", help="experiment=NAME, config key=value, checkpoint_step=S")
    p.add_argument("--run-dir", help="the trial's run folder (default: a new one in the sweep's folder)")
    p.set_defaults(func=trial)
    p = sub.add_parser("ablations", help="Tables IV and V (markdown, CSV, PNG) of a sweep's finished trials")
    p.add_argument("sweep_dir", help="the sweep's folder, runs/sweeps/<name>")
    p.add_argument("--output", help="where to write them (default: the sweep's folder)")
    p.set_defaults(func=ablations)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "checkpoint", None):   # `--checkpoint a.ckpt b.ckpt key=value`: nargs='+' took the overrides
        args.overrides = [c for c in args.checkpoint if "=" in c] + args.overrides
        args.checkpoint = [c for c in args.checkpoint if "=" not in c]
    try:
        args.func(args)
    except BAD_INPUT as err:
        return refuse(f"normnet {args.command}", err)
    except BaseException as err:
        stopped = _stopped_by_signal(args, err)
        if stopped is None:
            raise
        print(f"normnet {args.command}: {stopped[0]}", file=sys.stderr)
        return stopped[1]
    return 0


BAD_INPUT = (ConfigError, InputError, OSError)


def refuse(program: str, err: Exception) -> int:
    """A bad input's one sentence on stderr, named by `program`, and exit code 2."""
    sentence = os_error_sentence(err) if isinstance(err, OSError) else str(err)
    print(f"{program}: {sentence}", file=sys.stderr)
    return 2


def os_error_sentence(err: OSError) -> str:
    """One sentence for a failed read or write: the file and what the system said."""
    if err.errno == errno.ENOSPC:
        return (f"the disk is full (writing {err.filename or 'a file'}); files are written whole or not at all, "
                "so free some space and run the same command again.")
    if err.filename:
        return f"{err.filename}: {err.strerror or err}; nothing was written in its place."
    return f"{str(err).rstrip('.')}; nothing was written in its place."


def _stopped_by_signal(args, err: BaseException) -> tuple[str, int] | None:
    """(one line saying how to go on, exit status 128 + the signal) for a training stopped by a signal."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from callbacks.checkpointing import Preempted

    if isinstance(err, SIGTERMException):       # outside a training step (data, a validation): nothing saved now
        return ("stopped by SIGTERM outside a training step; run the same command with --run-dir to go on from "
                "the run's last checkpoint, if it has one."), 143
    if not isinstance(err, Preempted):
        return None
    saved = f"stopped by {signal.Signals(err.signum).name} at step {err.step}; saved {err.checkpoint}"
    if err.requeued:
        return f"{saved}; the SLURM job is requeued and resumes from it.", err.exit_code
    run_dir = err.checkpoint.parent.parent                      # <run>/checkpoints/last.ckpt
    folder = args.run_dir or (run_dir.parent if args.command == "cv" else run_dir)     # cv: <cv>/fold<f>
    given = [args.sweep, *args.arguments] if args.command == "trial" else [args.experiment, *args.overrides]
    again = " ".join(["normnet", args.command, "--run-dir", str(folder), *given])
    return f"{saved}; resume with: {again}", err.exit_code


if __name__ == "__main__":
    sys.exit(main())
