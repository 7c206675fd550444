"""Sweeps: the W&B sweep format read into Optuna; agents sharing one study run each grid trial once, a
stopped sweep resumes and a lost trial is recovered; an inference-only trial reuses a training; Tables IV
and V render from trial folders."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

from lightning_normnet.config import ConfigError, load_config
from lightning_normnet.inference import predict_lesions
from lightning_normnet.io import InputError
from lightning_normnet.methods import method_of
from lightning_normnet.models.normnet import NormNet
from lightning_normnet.runs import sweep_folder
from lightning_normnet.runs.ablations import write_tables
from lightning_normnet.runs.sweep import open_study, recover_lost, take_trial
from lightning_normnet.runs.sweep_file import read_sweep, split_arguments
from lightning_normnet.runs.trial import run_trial, training_key
from lightning_normnet.scores import VolumeScore, logged_metrics, read_evaluation

from .conftest import TINY

ROOT = Path(__file__).resolve().parents[1]


def write_sweep(path: Path, parameters: dict, method: str = "grid", command: list | None = None, **extra) -> Path:
    spec = {"name": path.stem, "method": method, "metric": {"name": "val/dsc", "goal": "maximize"},
            "command": command or ["normnet", "trial", str(path), "${args_no_hyphens}"],
            "parameters": parameters, **extra}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# --- the sweep file -------------------------------------------------------------------------------------

def test_the_wandb_format_converts_to_optuna(tmp_path):
    parameters = {"experiment": {"value": "normnet_quick"}, "model.channels": {"value": [4, 8]},
                  "ablation": {"values": [None, "k_d", "fixed_G"]},
                  "postprocessing.t_d": {"distribution": "uniform", "min": 0.1, "max": 0.3},
                  "postprocessing.k_d": {"distribution": "int_uniform", "min": 3, "max": 11},
                  "postprocessing.k_f": {"min": 3, "max": 9},
                  "postprocessing.t_f": {"distribution": "q_uniform", "min": 0.05, "max": 0.35, "q": 0.05},
                  "model.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2}}
    sweep = read_sweep(write_sweep(tmp_path / "s.yaml", parameters, "bayes"))
    assert sweep.constants == {"experiment": "normnet_quick", "model.channels": [4, 8]}
    space = sweep.space
    assert space["ablation"] == CategoricalDistribution([None, "k_d", "fixed_G"])
    assert space["postprocessing.t_d"] == FloatDistribution(0.1, 0.3)
    assert space["postprocessing.k_d"] == IntDistribution(3, 11)
    assert space["postprocessing.k_f"] == IntDistribution(3, 9)          # min/max integers: int_uniform, as W&B
    assert space["postprocessing.t_f"] == FloatDistribution(0.05, 0.35, step=0.05)
    assert space["model.lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert isinstance(sweep.sampler(), optuna.samplers.TPESampler)
    random = read_sweep(write_sweep(tmp_path / "r.yaml", parameters, "random"))
    assert isinstance(random.sampler(), optuna.samplers.RandomSampler)
    grid = read_sweep(write_sweep(tmp_path / "g.yaml", {"experiment": {"value": "normnet_quick"},
                                                        "ablation": {"values": [None, "k_d"]},
                                                        "inference.member": {"values": [1, 2]}}))
    assert isinstance(grid.sampler(), optuna.samplers.RandomSampler)        # a grid is queued, not sampled
    assert grid.grid() == [{"ablation": None, "inference.member": 1}, {"ablation": None, "inference.member": 2},
                           {"ablation": "k_d", "inference.member": 1}, {"ablation": "k_d", "inference.member": 2}]
    # a trial's arguments are what W&B's agent gives the same command
    params = {"ablation": None, "inference.member": 2}
    wandb_args = create_sweep_command_args({"args": {k: {"value": v} for k, v in {**grid.constants, **params}.items()}})
    assert grid.arguments(params) == wandb_args["args_no_hyphens"]
    assert grid.command_line(params) == ["normnet", "trial", str(tmp_path / "g.yaml"), "experiment=normnet_quick",
                                         "ablation=None", "inference.member=2"]
    # and a trial reads W&B's None as null
    experiment, step, overrides = split_arguments(grid, grid.arguments(params) + ["checkpoint_step=None"])
    assert (experiment, step, overrides) == ("normnet_quick", None, ["ablation=null", "inference.member=2"])
    assert load_config(experiment, overrides).ablation is None


@pytest.mark.parametrize("parameters, method, message", [
    ({"ablation": {"values": ["k_d"]}}, "grid", "constant `experiment"),
    ({"experiment": {"value": "normnet"}, "model.lr": {"min": 0.1, "max": 0.3}}, "grid", "only `values`"),
    ({"experiment": {"value": "normnet"}, "a": {"distribution": "normal", "mu": 0, "sigma": 1}}, "bayes",
     "distribution 'normal'"),
    ({"experiment": {"value": "normnet"}, "data.test": {"values": [["phantom"], ["folder"]]}}, "grid",
     "constant `value`"),
    ({"experiment": {"value": "normnet"}, "a": {"values": [1]}}, "hyperband", "method='hyperband'"),
])
def test_a_wrong_sweep_file_is_refused_naming_it(tmp_path, parameters, method, message):
    path = write_sweep(tmp_path / "bad.yaml", parameters, method)
    with pytest.raises(ConfigError, match=message) as err:
        read_sweep(path)
    assert str(path) in str(err.value)


def test_the_papers_sweep_files_read():
    """The four shipped files are valid; Table IV's has every named ablation and the default."""
    from lightning_normnet.config import ablations
    files = {p.stem: read_sweep(p) for p in (ROOT / "experiments" / "sweeps").glob("*.yaml")}
    assert set(files) == {"smoke", "table4", "table5", "postprocessing_search"}
    assert set(files["table4"].space["ablation"].choices) == {None, *ablations().keys()}
    assert len(files["table5"].grid()) == 18 and files["postprocessing_search"].run_cap == 60
    assert len(files["smoke"].grid()) == 3


# --- agents sharing one study ---------------------------------------------------------------------------

FAKE_TRIAL = """
import json, pathlib, sys, time
args = dict(a.split('=', 1) for a in sys.argv[1:-2])
run_dir = pathlib.Path(sys.argv[-1])
key = f"a={args['a']} b={args['b']}"
log = run_dir.parent / 'ran.log'
with open(log, 'a') as f:
    f.write('start ' + key + '\\n')
hang = run_dir.parent / 'hang'
if args['a'] == '2' and args['b'] == 'y' and not hang.exists():
    hang.write_text('once')
    time.sleep(120)
time.sleep(0.2)
value = int(args['a']) / 10 + (args['b'] == 'y') / 100
(run_dir / 'trial.json').write_text(json.dumps({'status': 'finished', 'parameters': {'a': args['a']},
    'metrics': {'val/dsc': value, 'val/phantom/dsc': value}}))
with open(log, 'a') as f:
    f.write('done ' + key + '\\n')
"""


def fake_sweep(tmp_path: Path) -> Path:
    """A 3 x 2 grid whose trials only log themselves; trial a=2 b=y hangs the first time it runs."""
    return write_sweep(tmp_path / "fake.yaml", {"experiment": {"value": "normnet_quick"},
                                                "output_dir": {"value": str(tmp_path / "runs")},
                                                "a": {"values": [1, 2, 3]}, "b": {"values": ["x", "y"]}},
                       command=["${interpreter}", "-c", FAKE_TRIAL, "${args_no_hyphens}"])


def agent(sweep: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lightning_normnet.cli", "sweep", str(sweep), *extra], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def ran(folder: Path, what: str) -> list[str]:
    return sorted(line.split(" ", 1)[1] for line in (folder / "ran.log").read_text().splitlines()
                  if line.startswith(what))


GRID = sorted(f"a={a} b={b}" for a in (1, 2, 3) for b in "xy")


def states(folder: Path) -> list[TrialState]:
    study = open_study(read_sweep(folder / "sweep.yaml"), folder)
    return [t.state for t in study.get_trials()]


def test_two_agents_on_one_study_run_each_grid_trial_once(tmp_path):
    sweep = fake_sweep(tmp_path)
    (tmp_path / "runs" / "sweeps" / "fake").mkdir(parents=True)
    (tmp_path / "runs" / "sweeps" / "fake" / "hang").write_text("not this time")
    agents = [agent(sweep), agent(sweep)]
    outputs = [a.communicate(timeout=240)[0] for a in agents]
    assert [a.returncode for a in agents] == [0, 0], outputs
    folder = tmp_path / "runs" / "sweeps" / "fake"
    assert ran(folder, "start") == GRID and ran(folder, "done") == GRID          # each exactly once
    assert all("=== trial" in out for out in outputs), "both agents took trials"
    assert states(folder) == [TrialState.COMPLETE] * 6
    assert "a=1" in (folder / "ablations.md").read_text()


def test_a_stopped_sweep_resumes_without_repeating_finished_trials(tmp_path):
    sweep = fake_sweep(tmp_path)
    folder = tmp_path / "runs" / "sweeps" / "fake"
    first = agent(sweep)
    deadline = time.time() + 120
    while not (folder / "hang").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    first.send_signal(signal.SIGTERM)                     # a scheduler's time limit
    out = first.communicate(timeout=120)[0]
    assert first.returncode == 128 + signal.SIGTERM, out
    assert "queued again" in out
    finished_before = ran(folder, "done")
    assert "a=2 b=y" not in finished_before and len(finished_before) == 3     # grid order: (1,x) (1,y) (2,x)
    second = agent(sweep)
    out = second.communicate(timeout=240)[0]
    assert second.returncode == 0, out
    assert ran(folder, "done") == GRID                                      # none repeated, none lost
    assert ran(folder, "start").count("a=2 b=y") == 2
    assert sorted(states(folder), key=str) == sorted([TrialState.COMPLETE] * 6 + [TrialState.FAIL], key=str)
    third = agent(sweep)
    assert "nothing left to do" in third.communicate(timeout=120)[0] and third.returncode == 0


def test_a_crashed_trial_fails_and_the_sweep_goes_on(tmp_path):
    sweep = write_sweep(tmp_path / "crash.yaml", {"experiment": {"value": "normnet_quick"},
                                                  "output_dir": {"value": str(tmp_path / "runs")},
                                                  "a": {"values": [1, 2]}},
                        command=["${interpreter}", "-c", "import sys; sys.exit(1 if 'a=1' in sys.argv else 0)",
                                 "${args_no_hyphens}"])
    process = agent(sweep)
    out = process.communicate(timeout=120)[0]
    assert "trial 0 failed (exit 1); the sweep goes on" in out
    assert "trial 1 failed (no val/dsc" in out                  # exit 0 but no result: failed too
    assert "no finished trial yet" in out and process.returncode == 0


def test_a_one_point_grid_runs_and_a_trial_stopped_by_a_signal_is_queued_again(tmp_path):
    """A trial that dies of SIGTERM (a scheduler reached it before its agent) runs again; a grid of one
    point is a sweep like any other."""
    stop_once = ("import os, pathlib, signal, sys, json; d = pathlib.Path(sys.argv[-1]); m = d.parent / 'stopped'\n"
                 "if not m.exists(): m.touch(); os.kill(os.getpid(), signal.SIGTERM)\n"
                 "(d / 'trial.json').write_text(json.dumps({'status': 'finished', 'metrics': {'val/dsc': 1.0}}))")
    sweep = write_sweep(tmp_path / "once.yaml", {"experiment": {"value": "normnet_quick"},
                                                 "output_dir": {"value": str(tmp_path / "runs")},
                                                 "a": {"values": [1]}},
                        command=["${interpreter}", "-c", stop_once, "${args_no_hyphens}"])
    process = agent(sweep)
    out = process.communicate(timeout=120)[0]
    assert process.returncode == 0, out
    assert "trial 0 was stopped (exit -15): queued again" in out and "=== trial 1: val/dsc = 1.0000" in out
    assert states(tmp_path / "runs" / "sweeps" / "once") == [TrialState.FAIL, TrialState.COMPLETE]


def test_a_trial_whose_agent_vanished_is_recovered(tmp_path):
    """SIGKILL leaves a RUNNING trial with a stale heartbeat: queued again, or complete if it finished."""
    sweep = read_sweep(fake_sweep(tmp_path))
    folder = sweep.folder()
    study = open_study(sweep, folder)
    lost, finished = take_trial(study, sweep, folder, 300), take_trial(study, sweep, folder, 300)
    for trial in (lost, finished):
        (folder / f"trial-{trial.number:04d}").mkdir(parents=True)
        (folder / f"trial-{trial.number:04d}" / "heartbeat").touch()
    sweep_folder.write_record(folder / "trial-0001", {"status": "finished", "metrics": {"val/dsc": 0.5}})
    recover_lost(study, folder, "val/dsc", stale_after=300)
    assert [t.state for t in study.get_trials()][:2] == [TrialState.RUNNING] * 2     # heartbeats are fresh
    recover_lost(study, folder, "val/dsc", stale_after=0)
    trials = study.get_trials()
    assert trials[0].state == TrialState.FAIL and trials[1].state == TrialState.COMPLETE and trials[1].value == 0.5
    again = [t for t in trials if t.state == TrialState.WAITING and t.user_attrs.get("retry_of") == 0]
    assert len(again) == 1 and again[0].system_attrs["fixed_params"] == lost.params


def test_a_training_is_claimed_once_waited_for_and_taken_over_when_lost(tmp_path):
    folder = tmp_path / "sweep"
    first, second = folder / "trial-0000", folder / "trial-0001"
    for run_dir in (first, second):
        run_dir.mkdir(parents=True)
        (run_dir / "heartbeat").touch()
    assert sweep_folder.claim_training(folder, "k", first) is None              # the first trains
    found = []
    waiter = threading.Thread(target=lambda: found.append(sweep_folder.claim_training(folder, "k", second,
                                                                                       poll_seconds=0.05)))
    waiter.start()
    time.sleep(0.3)
    assert not found                                                             # waits while it trains
    sweep_folder.finish_training(folder, "k", first)
    waiter.join(timeout=10)
    assert found == [first]
    assert sweep_folder.claim_training(folder, "other", first) is None
    os.utime(first / "heartbeat", (0, 0))                                        # its process is gone
    assert sweep_folder.claim_training(folder, "other", second, stale_after=60) is None   # taken over
    sweep_folder.release_training(folder, "other", second)
    assert not (folder / "trainings" / "other.json").exists()


# --- trials that reuse a training -----------------------------------------------------------------------

def tiny_sweep(tmp_path: Path) -> Path:
    constants = {"output_dir": str(tmp_path / "runs"), "data.cache_dir": str(tmp_path / "cache")}
    for item in TINY:
        key, value = item.split("=", 1)
        constants[key] = yaml.safe_load(value)
    constants.update({"trainer.max_steps": 4, "trainer.val_check_interval": 2})
    return write_sweep(tmp_path / "tiny.yaml", {"experiment": {"value": "normnet_quick"},
                                                **{k: {"value": v} for k, v in constants.items()},
                                                "ablation": {"values": [None, "t_d", "fixed_a"]}})


def test_an_inference_only_trial_does_not_train(tmp_path, monkeypatch):
    path = tiny_sweep(tmp_path)
    sweep = read_sweep(path)
    base = sweep.arguments({"ablation": None})
    trained = run_trial(path, base, tmp_path / "runs" / "sweeps" / "tiny" / "trial-0000")
    record = sweep_folder.read_record(trained)
    assert record["trained_in"] == "trial-0000" and record["default"] and record["status"] == "finished"
    assert (trained / "checkpoints" / "step000002.ckpt").is_file()
    # best.ckpt holds the weights of the validation with the highest mean DSC (the first, on a tie)
    means = [(sum(s.dsc for s in v.volumes) / len(v.volumes), v.step) for v in read_evaluation(trained).validations]
    best_step = next(step for mean, step in means if mean == max(m for m, _ in means))
    assert torch.load(trained / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False,
                      mmap=True)["global_step"] == best_step

    def no_training(*_args, **_kwargs):
        raise AssertionError("an inference-only trial ran a training step")

    monkeypatch.setattr(NormNet, "training_step", no_training)
    post = run_trial(path, sweep.arguments({"ablation": "t_d"}))
    record = sweep_folder.read_record(post)
    assert record["trained_in"] == "trial-0000" and not record["default"]
    assert record["checkpoint"].endswith("trial-0000/checkpoints/last.ckpt")
    assert load_config(str(post / "config.yaml")).postprocessing.t_d == 0.15        # its own inference settings
    scored = read_evaluation(post).last.volumes
    assert record["metrics"]["val/dsc"] == pytest.approx((scored[0].dsc + scored[1].dsc) / 2)
    last = run_trial(path, base + ["checkpoint_step=4"])                # the last step: last.ckpt
    assert sweep_folder.read_record(last)["checkpoint"].endswith("trial-0000/checkpoints/last.ckpt")
    step = run_trial(path, base + ["checkpoint_step=2", "inference.member=2"])
    record = sweep_folder.read_record(step)
    assert record["checkpoint"].endswith("trial-0000/checkpoints/step000002.ckpt") and record["validation_step"] == 2
    with pytest.raises(AssertionError, match="inference-only trial ran a training step"):
        run_trial(path, sweep.arguments({"ablation": "fixed_a"}))      # the generator changed: it must train
    with pytest.raises(ConfigError, match="checkpoint_step=3 is not a step"):
        run_trial(path, base + ["checkpoint_step=3"])


def test_the_training_key_ignores_only_what_no_training_reads():
    def key(*overrides):
        cfg = load_config("normnet_quick", list(overrides))
        return training_key(cfg, method_of(cfg))

    default = key()
    assert key("ablation=k_d") == key("postprocessing.t_f=0.2") == key("inference.member=3") == default
    assert key("data.test=[folder]", "data.test_root=/x", "logging.wandb=false", "name=other") == default
    # the U-Net stops early on its validation score: its test sets shape its training
    unet, fewer = load_config("unet3d"), load_config("unet3d", ["data.max_test_volumes=1"])
    assert training_key(unet, method_of(unet)) != training_key(fewer, method_of(fewer))
    assert key("ablation=fixed_a") != default and key("trainer.max_steps=5") != default
    assert key("preprocessing.edge_removal.at_inference=false") == default
    assert key("preprocessing.edge_removal.enabled=false") != default


def test_one_member_alone_is_that_members_prediction(tiny_config):
    model = NormNet(OmegaConf.to_container(tiny_config)).eval()
    image = torch.rand(1, 1, 8, 64, 64)
    lung = torch.zeros(1, 1, 8, 64, 64, dtype=torch.bool)
    lung[..., 16:48, 16:48] = True
    model.cfg.inference.member = 2
    alone = model.predict_volume(image, lung)
    direct = predict_lesions([model.members[1]], image, lung, model.cfg.inference, model.cfg.postprocessing)
    assert torch.equal(alone.lesion, direct.lesion)
    with pytest.raises(ConfigError, match="inference.member=3 must be null"):
        load_config("normnet_quick", ["model.members=2", "inference.member=3"])


def test_the_logged_metrics_by_hand():
    scores = [VolumeScore("phantom", "a", dsc=0.2), VolumeScore("phantom", "b", dsc=0.4),
              VolumeScore("medseg", "c", dsc=0.9)]
    metrics = logged_metrics(scores)
    assert metrics["val/phantom/dsc"] == pytest.approx(0.3) and metrics["val/phantom/dsc_std"] == pytest.approx(0.1)
    assert metrics["val/medseg/dsc"] == pytest.approx(0.9) and metrics["val/dsc"] == pytest.approx(0.5)


# --- the tables -----------------------------------------------------------------------------------------

def fake_trial(folder: Path, number: int, parameters: dict, dsc: dict, default: bool = False,
               status: str = "finished") -> None:
    metrics = {f"val/{d}/dsc": v for d, v in dsc.items()} | {f"val/{d}/dsc_std": 0.0 for d in dsc}
    sweep_folder.write_record(folder / f"trial-{number:04d}", {"status": status, "parameters": parameters,
                                                               "default": default, "metrics": metrics})


def test_the_tables_render_from_trial_folders(tmp_path):
    with pytest.raises(InputError, match="no finished trial"):
        write_tables(tmp_path)
    fake_trial(tmp_path, 0, {"ablation": "None"}, {"coronacases": 0.70, "uestc": 0.60}, default=True)
    fake_trial(tmp_path, 1, {"ablation": "fixed_G"}, {"coronacases": 0.65, "uestc": 0.50})
    fake_trial(tmp_path, 2, {"ablation": "k_d"}, {"coronacases": 0.70, "uestc": 0.62})
    fake_trial(tmp_path, 4, {"ablation": "k_d"}, {"coronacases": 0.71, "uestc": 0.61})       # drawn twice
    fake_trial(tmp_path, 3, {"ablation": "T_700"}, {"coronacases": 0.1}, status="running")     # not finished
    for n, (step, member, value) in enumerate([("1500", "1", 0.685), ("1500", "None", 0.689),
                                               ("2000", "1", 0.702), ("2000", "None", 0.698)]):
        fake_trial(tmp_path, 10 + n, {"checkpoint_step": step, "inference.member": member}, {"coronacases": value})
    write_tables(tmp_path)
    table = (tmp_path / "ablations.md").read_text().splitlines()
    assert table[0] == "| dataset | fixed_G | k_d (trial-0002) | k_d (trial-0004) | NormNet |"
    assert table[2] == "| coronacases | 65.0 (-5.0) | 70.0 (+0.0) | 71.0 (+1.0) | 70.0 |"
    assert table[3] == "| uestc | 50.0 (-10.0) | 62.0 (+2.0) | 61.0 (+1.0) | 60.0 |"
    rows = (tmp_path / "ablations.csv").read_text().splitlines()
    assert rows[0] == "dataset,column,trial,dsc,difference" and "uestc,fixed_G,trial-0001,50.0,-10.0" in rows
    voting = (tmp_path / "voting.md").read_text().splitlines()
    assert voting[0] == "| dataset | iterations | model_1 | voting |"
    assert voting[2:4] == ["| coronacases | 1500 | 68.5 | 68.9 |", "| coronacases | 2000 | 70.2 | 69.8 |"]
    for name in ("ablations.png", "voting.png", "voting.csv"):
        assert (tmp_path / name).stat().st_size > 0


def test_with_a_wandb_key_the_sweep_is_wandbs_created_once(tmp_path, monkeypatch):
    """W&B's own sweep of the same file, created by the first agent; later agents join it by its id."""
    import wandb

    from lightning_normnet.runs.sweep import sweep as run_sweep

    created, agents = [], []
    monkeypatch.setenv("WANDB_API_KEY", "test-key")
    monkeypatch.setenv("PATH", os.environ["PATH"])             # restored after the test: the agent prepends
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr(wandb, "sweep", lambda config, project: created.append((config, project)) or "abc123")
    monkeypatch.setattr(wandb, "agent", lambda sweep_id, project, count: agents.append(
        (sweep_id, project, count, os.environ["PATH"].split(os.pathsep)[0])))
    path = fake_sweep(tmp_path)
    folder = run_sweep(path, count=2)
    run_sweep(path)
    assert created == [(yaml.safe_load(path.read_text()), "lightning-normnet")]
    assert (folder / "wandb_sweep_id").read_text() == "abc123\n"
    assert agents == [("abc123", "lightning-normnet", 2, str(Path(sys.executable).parent)),
                      ("abc123", "lightning-normnet", None, str(Path(sys.executable).parent))]
    assert not (folder / "optuna.journal").exists()
