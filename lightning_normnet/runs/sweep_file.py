"""A sweep file in W&B's own format, read and checked once: what `wandb sweep` takes, what `normnet sweep`
runs offline on Optuna, and what each `normnet trial` reads back.

    name: smoke                     (default: the file's stem)
    method: grid | random | bayes   (offline: the grid queued whole | RandomSampler | TPESampler)
    metric: {name: val/dsc, goal: maximize}
    run_cap: 60                     (optional: at most this many trials in all)
    command: [normnet, trial, experiments/sweeps/smoke.yaml, "${args_no_hyphens}"]
    parameters:
      experiment: {value: normnet_quick}          the experiment every trial runs (a constant)
      ablation: {values: [null, k_d, fixed_G]}    any config key, or checkpoint_step (runs.trial)
      postprocessing.t_d: {distribution: uniform, min: 0.1, max: 0.3}

A parameter is a constant `value`, a list of `values` (categorical), or a distribution: uniform,
int_uniform, q_uniform, log_uniform_values (min/max alone: int_uniform for integers, else uniform, as W&B
infers). A trial's arguments are written as W&B's agent writes ${args_no_hyphens}: `key=value`, with
Python's str of the value (YAML null becomes None, which the config reads as null).
"""
from __future__ import annotations

import itertools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from ..config import ConfigError, load_config
from ..io import read_document

EXPERIMENT = "experiment"            # the trial's experiment: a constant, not a config key
CHECKPOINT_STEP = "checkpoint_step"  # evaluate the training's checkpoint of this step (runs.trial)
METHODS = ("grid", "random", "bayes")
DISTRIBUTIONS = ("categorical", "uniform", "int_uniform", "q_uniform", "log_uniform_values")
MACROS = ("${env}", "${interpreter}", "${program}", "${args}", "${args_no_hyphens}", "${args_json}")
NULL = ("None", "null")             # how a trial's argument says null (W&B's agent, and YAML)
WANDB_DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]


@dataclass(frozen=True)
class Sweep:
    path: Path
    name: str
    method: str
    metric: str
    goal: str                                    # maximize | minimize
    constants: dict[str, Any]
    space: dict[str, BaseDistribution]           # the swept parameters, in file order
    command: list[str]
    program: str | None = None
    run_cap: int | None = None
    raw: dict = field(default_factory=dict, repr=False)   # the file as read: what wandb.sweep is given

    def folder(self) -> Path:
        """<output_dir>/sweeps/<name>: the study, the trials' run folders, the trainings they share, the tables."""
        output_dir = self.constants.get("output_dir")
        if not output_dir:
            try:
                output_dir = load_config(str(self.constants[EXPERIMENT])).output_dir
            except ConfigError as err:
                raise ConfigError(f"{self.path}: experiment {self.constants[EXPERIMENT]}: {err}") from None
        return Path(output_dir) / "sweeps" / self.name

    def sampler(self) -> optuna.samplers.BaseSampler:
        """TPE for bayes, else random. A grid samples nothing: it is queued whole (`grid`) and taken in
        order, which is what Optuna's GridSampler visits, without the repeats its documentation warns of
        when several workers share a study."""
        return optuna.samplers.TPESampler() if self.method == "bayes" else optuna.samplers.RandomSampler()

    def grid(self) -> list[dict[str, Any]]:
        """Every combination of a grid sweep's values, the first parameter varying slowest."""
        names = list(self.space)
        return [dict(zip(names, combination))
                for combination in itertools.product(*(self.space[n].choices for n in names))]

    def arguments(self, params: dict[str, Any]) -> list[str]:
        """A trial's ${args_no_hyphens}: its constants and sampled parameters as `key=value`."""
        return [f"{key}={value}" for key, value in {**self.constants, **params}.items()]

    def command_line(self, params: dict[str, Any]) -> list[str]:
        """The sweep's command for one trial, its macros expanded as W&B's agent expands them (the
        interpreter is this one, so the trial runs in the agent's environment)."""
        arguments = self.arguments(params)
        expanded = {"${env}": ["/usr/bin/env"], "${interpreter}": [sys.executable],
                    "${program}": [self.program] if self.program else [],
                    "${args}": [f"--{a}" for a in arguments], "${args_no_hyphens}": arguments,
                    "${args_json}": [json.dumps({**self.constants, **params})]}
        return [part for item in self.command for part in expanded.get(item, [item])]


def _distribution(path: Path, name: str, spec: dict) -> BaseDistribution | None:
    """The Optuna distribution of a W&B parameter; None for a constant `value`."""
    where = f"{path}: parameter {name!r}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be a mapping such as {{value: ...}} or {{values: [...]}}.")
    if "value" in spec:
        return None
    if "parameters" in spec:
        raise ConfigError(f"{where}: nested parameters are not supported; name each key in full (a.b.c).")
    kind = spec.get("distribution")
    if kind not in (None, *DISTRIBUTIONS):
        raise ConfigError(f"{where}: distribution {kind!r} is not one normnet sweep runs offline "
                          f"({', '.join(DISTRIBUTIONS)}).")
    if "values" in spec and kind in (None, "categorical"):
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: values must be a non-empty list.")
        if any(isinstance(v, (list, dict)) for v in values):
            raise ConfigError(f"{where}: values must be numbers, strings, booleans or null (a list-valued "
                              "setting can be a constant `value`, or a named ablation).")
        return CategoricalDistribution(values)
    if "min" not in spec or "max" not in spec:
        raise ConfigError(f"{where} needs value, values, or min and max.")
    low, high = spec["min"], spec["max"]
    if kind is None:
        kind = "int_uniform" if isinstance(low, int) and isinstance(high, int) else "uniform"
    if not low < high:
        raise ConfigError(f"{where}: min={low} must be below max={high}.")
    if kind == "uniform":
        return FloatDistribution(float(low), float(high))
    if kind == "int_uniform":
        return IntDistribution(int(low), int(high))
    if kind == "q_uniform":
        return FloatDistribution(float(low), float(high), step=float(spec.get("q", 1.0)))
    if kind == "log_uniform_values":
        return FloatDistribution(float(low), float(high), log=True)
    raise ConfigError(f"{where}: distribution {kind!r} takes `values`, not min and max.")


def read_sweep(path: str | Path) -> Sweep:
    """The sweep file at `path`, checked: a wrong one is refused in a sentence naming the file."""
    path = Path(path)
    raw = read_document(path, "a sweep file")
    if not isinstance(raw, dict) or not isinstance(raw.get("parameters"), dict) or not raw["parameters"]:
        raise ConfigError(f"{path}: a sweep file needs a `parameters` mapping (W&B's sweep format).")
    method = raw.get("method")
    if method not in METHODS:
        raise ConfigError(f"{path}: method={method!r} must be one of {', '.join(METHODS)}.")
    metric = raw.get("metric") or {}
    if not isinstance(metric, dict) or not metric.get("name"):
        raise ConfigError(f"{path}: metric.name is missing (e.g. val/dsc, logged by every validation).")
    goal = metric.get("goal", "minimize")
    if goal not in ("maximize", "minimize"):
        raise ConfigError(f"{path}: metric.goal={goal!r} must be maximize or minimize.")
    constants, space = {}, {}
    for name, spec in raw["parameters"].items():
        distribution = _distribution(path, name, spec)
        if distribution is None:
            constants[name] = spec["value"]
        else:
            space[name] = distribution
    if EXPERIMENT not in constants:
        raise ConfigError(f"{path}: parameters need a constant `{EXPERIMENT}: {{value: NAME}}`, the experiment "
                          "every trial runs.")
    if method == "grid" and any(not isinstance(d, CategoricalDistribution) for d in space.values()):
        raise ConfigError(f"{path}: a grid sweep takes only `values` lists (and constants).")
    command = [str(c) for c in raw.get("command") or WANDB_DEFAULT_COMMAND]
    unknown = [c for c in command if c.startswith("${") and c not in MACROS]
    if unknown:
        raise ConfigError(f"{path}: command macro {unknown[0]} is not one normnet sweep expands ({', '.join(MACROS)}).")
    if "${program}" in command and not raw.get("program"):
        raise ConfigError(f"{path}: the command uses ${{program}} but the file names no program.")
    run_cap = raw.get("run_cap")
    if run_cap is not None and (not isinstance(run_cap, int) or run_cap < 1):
        raise ConfigError(f"{path}: run_cap={run_cap!r} must be a positive integer.")
    return Sweep(path, str(raw.get("name") or path.stem), method, str(metric["name"]), goal, constants, space,
                 command, raw.get("program"), run_cap, raw)


def split_arguments(sweep: Sweep, arguments: list[str]) -> tuple[str, int | None, list[str]]:
    """A trial's `key=value` arguments as (experiment, checkpoint step or None, config overrides)."""
    experiment, step, overrides = None, None, []
    for item in arguments:
        key, _, value = item.partition("=")
        if key == EXPERIMENT:
            experiment = value
        elif key == CHECKPOINT_STEP:
            step = None if value in NULL else _as_step(sweep, value)
        else:                             # W&B's agent writes a YAML null as None
            overrides.append(f"{key}=null" if value in NULL else item)
    return experiment or str(sweep.constants[EXPERIMENT]), step, overrides


def _as_step(sweep: Sweep, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{sweep.path}: {CHECKPOINT_STEP}={value!r} must be a training step.") from None
