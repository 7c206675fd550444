"""Experiment configuration: OmegaConf YAML with a `base` chain and dotted overrides.

An experiment file names its `base` and holds only what differs from it, so the
paper's settings live in one place (experiments/normnet.yaml). The merged
config is struct: a key that the base does not define is an error, whether it
comes from a file or from the command line, so a typo never silently trains
with the default. A method's experiment file may add its own top-level groups;
which ones a method may have, and their values, the method registry checks
(`lightning_normnet.methods`): this module knows no method.
"""
from __future__ import annotations

import difflib
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigKeyError

from .datasets import HEALTHY_SETS, TEST_SETS

EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"


class ConfigError(ValueError):
    """A configuration file or override that cannot be used."""


def resolve_experiment(name_or_path: str) -> Path:
    """`normnet` -> experiments/normnet.yaml; a path is taken as it is."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"{path}: experiment file not found.")
        return path
    candidate = EXPERIMENTS_DIR / f"{name_or_path}.yaml"
    if not candidate.is_file():
        known = ", ".join(sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml")))
        raise ConfigError(f"{candidate}: no experiment named '{name_or_path}' (known: {known}).")
    return candidate


def _load_chain(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    if path in seen:
        raise ConfigError(f"{path}: circular `base` chain.")
    conf = OmegaConf.load(path)
    base = conf.pop("base", None)
    if base is None:
        OmegaConf.set_struct(conf, True)
        OmegaConf.set_struct(conf.trainer, False)   # any Lightning Trainer argument (runs.run checks them)
        return conf
    base_path = resolve_experiment(str(base)) if not Path(base).is_absolute() else Path(base)
    try:
        parent = _load_chain(base_path, seen + (path,))
        if conf.get("ablation") is not None:      # declared here: under this file's own values
            parent = apply_ablation(parent, conf.ablation)
        merged = _merge(parent, conf)
    except ConfigKeyError as err:
        raise ConfigError(f"{path}: unknown key {err.full_key!r} (not in {base_path.name})"
                          f"{did_you_mean(err.full_key, _dotted_keys(parent))}") from None
    try:      # a file's values keep their defaults' types, as overrides do
        for key in _dotted_keys(conf):
            _check_type(parent, merged, key)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return merged


def _merge(base: DictConfig, conf) -> DictConfig:
    """`conf` over `base`; top-level groups that `base` lacks are added (the method registry checks them)."""
    conf = OmegaConf.create(conf) if not isinstance(conf, DictConfig) else conf
    with open_dict(base):
        for key in [k for k in conf.keys() if k not in base]:
            base[key] = conf[key]
    return OmegaConf.merge(base, conf)


def load_config(experiment: str, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Load an experiment by name or path and apply `key.sub=value` overrides."""
    return apply_overrides(_load_chain(resolve_experiment(experiment)), overrides)


def ablations() -> DictConfig:
    """experiments/ablations.yaml: each Table IV column's name, description and the keys it sets."""
    return OmegaConf.load(EXPERIMENTS_DIR / "ablations.yaml")


def apply_ablation(conf: DictConfig, name: str) -> DictConfig:
    """A copy of `conf` with the named ablation's keys set; recorded as `ablation` and in the run's name."""
    presets = ablations()
    if name not in presets:
        raise ConfigError(f"ablation={name!r} is not in experiments/ablations.yaml (known: {', '.join(presets)}).")
    conf = conf.copy()
    for key, value in presets[name].set.items():
        OmegaConf.update(conf, key, value, merge=False)
    suffix = f"-{name}"
    conf.ablation, conf.name = name, conf.name if conf.name.endswith(suffix) else conf.name + suffix
    return conf


def config_from_checkpoint(saved: dict, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """A checkpoint's config over today's defaults (keys added since get their default), plus overrides."""
    try:
        conf = _merge(_load_chain(resolve_experiment("normnet")), saved)
    except ConfigKeyError as err:
        raise ConfigError(f"checkpoint config key {err.full_key!r} is unknown to this version.") from None
    return apply_overrides(conf, overrides)


def apply_overrides(conf: DictConfig, overrides: list[str] | tuple[str, ...]) -> DictConfig:
    """Merge `key.sub=value` items into a struct config and validate the result. `ablation=NAME` sets its
    named ablation's keys first, so the other items apply over it."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value.")
    chosen = [item.split("=", 1)[1].strip("'\"") for item in overrides if item.startswith("ablation=")]
    if chosen and chosen[-1] != "null":
        conf = apply_ablation(conf, chosen[-1])
        overrides = [item for item in overrides if not item.startswith("ablation=")]
    try:
        merged = OmegaConf.merge(conf, OmegaConf.from_dotlist(list(overrides)))
    except ConfigKeyError as err:
        keys = [item.split("=", 1)[0] for item in overrides]
        wrong = next((k for k in keys if k == err.full_key or k.startswith(err.full_key + ".")), err.full_key)
        raise ConfigError(f"unknown configuration key {wrong!r} in the overrides"
                          f"{did_you_mean(wrong, _dotted_keys(conf))}") from None
    for item in overrides:
        _check_type(conf, merged, item.split("=", 1)[0])
    validate(merged)
    return merged


def did_you_mean(key: str, known: list[str]) -> str:
    """'; did you mean <the nearest known key>?', or '.' when none is near."""
    near = difflib.get_close_matches(key, sorted(known), n=1)
    return f"; did you mean {near[0]}?" if near else "."


def _dotted_keys(conf: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key, value in conf.items():
        keys += _dotted_keys(value, f"{prefix}{key}.") if isinstance(value, DictConfig) else [f"{prefix}{key}"]
    return keys


def differences(saved: DictConfig, conf: DictConfig) -> list[str]:
    """`key: saved -> now` for every key whose value differs between two configurations."""
    keys = sorted(set(_dotted_keys(saved)) | set(_dotted_keys(conf)))
    return [f"{key}: {OmegaConf.select(saved, key)} -> {OmegaConf.select(conf, key)}" for key in keys
            if OmegaConf.select(saved, key) != OmegaConf.select(conf, key)]


def _kind(value) -> str | None:
    """A value's type as the configuration knows it (None: null, which any key may be set to)."""
    if value is None:
        return None
    for kind, types in (("true or false", bool), ("an integer", int), ("a number", float), ("a string", str),
                        ("a list", ListConfig), ("a group", DictConfig)):
        if isinstance(value, types):
            return kind
    return type(value).__name__


def _check_type(before: DictConfig, after: DictConfig, key: str) -> None:
    """An override (or an experiment file's value) keeps the type of the value it replaces (a number may
    replace an integer's place only where the default is a number): `data.batch_size=abc` is refused here,
    not mid-run."""
    if key.startswith("trainer.") and key.split(".", 1)[1] not in SCHEDULE_KEYS:
        return    # Lightning's own arguments (devices: "auto", 2 or [0, 1]): Lightning checks them (runs.run)
    old, new = OmegaConf.select(before, key, default=None), OmegaConf.select(after, key, default=None)
    expected, found = _kind(old), _kind(new)
    if expected is None or found is None or expected == found or (expected, found) == ("a number", "an integer"):
        return
    raise ConfigError(f"{key}={new!r} must be {expected}, like its default {old!r}.")


def _check_range(conf: DictConfig, key: str, low_bound: float = 0.0) -> None:
    value = OmegaConf.select(conf, key)
    if len(value) != 2 or value[0] > value[1] or value[0] < low_bound:
        raise ConfigError(f"{key}={list(value)} must be [low, high] with {low_bound} <= low <= high.")


# trainer.* keys that the schedules read (methods.fitting); every other trainer.* key is a Lightning
# Trainer argument, checked by Lightning (runs.run.check_trainer)
SCHEDULE_KEYS = ("max_steps", "val_check_interval", "checkpoint_every")
FRACTIONS = ("inference.healthy_probability", "data.augmentation.mirror_probability", "lesions.large_probability",
             "lesions.sigma_b_small_probability", "target.tau", "postprocessing.tau", "postprocessing.t_d",
             "postprocessing.t_f", "preprocessing.edge_removal.threshold", "preprocessing.edge_removal.min_fraction")
THREE_AXES = {"preprocessing.spacing": "(x, y, z)", "data.phantom.spacing": "(x, y, z)",
              "data.phantom.size": "(x, y, z)", "data.slab": "[D, H, W]", "inference.roi": "[D, H, W]"}
POSITIVE_LISTS = ("preprocessing.spacing", "data.phantom.spacing", "data.phantom.size", "data.slab", "inference.roi",
                  "preprocessing.in_plane_size")


def _number(conf: DictConfig, key: str):
    """The number at `key`, or a sentence saying it is not one (a file may hold any type)."""
    value = OmegaConf.select(conf, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}={value!r} must be a number.")
    return value


def require_fractions(conf: DictConfig, keys) -> None:
    """Probabilities and thresholds: each in [0, 1]."""
    for key in keys:
        if not 0 <= _number(conf, key) <= 1:
            raise ConfigError(f"{key}={OmegaConf.select(conf, key)} must lie in [0, 1].")


def require_counts(conf: DictConfig, keys, minimum: int = 1) -> None:
    """Steps, epochs, sizes, batches: each at least `minimum`."""
    for key in keys:
        if _number(conf, key) < minimum:
            raise ConfigError(f"{key}={OmegaConf.select(conf, key)} must be at least {minimum}.")


def _check_ranges(conf: DictConfig) -> None:
    """Values with no meaning: probabilities and thresholds outside [0, 1], sizes and spacings that are not
    positive, a window upside down, fewer than one step or sample."""
    require_fractions(conf, FRACTIONS)
    for key in POSITIVE_LISTS:
        values = OmegaConf.select(conf, key)
        if not isinstance(values, ListConfig) or not all(isinstance(v, (int, float)) and v > 0 for v in values):
            raise ConfigError(f"{key}={values} must be positive on every axis.")
    for key, axes in THREE_AXES.items():
        if len(OmegaConf.select(conf, key)) != 3:
            raise ConfigError(f"{key}={list(OmegaConf.select(conf, key))} must have 3 values {axes}.")
    low, high = _number(conf, "preprocessing.window.0"), _number(conf, "preprocessing.window.1")
    if not low < high:
        raise ConfigError(f"preprocessing.window={[low, high]} must be [low, high] HU with low < high.")
    require_counts(conf, ["trainer.max_steps", "trainer.val_check_interval", "data.batch_size", "model.members"])
    if conf.trainer.checkpoint_every is not None:
        require_counts(conf, ["trainer.checkpoint_every"])
    require_counts(conf, ["data.num_workers"], minimum=0)
    if conf.lung_mask.airway_margin_mm is not None and _number(conf, "lung_mask.airway_margin_mm") < 0:
        raise ConfigError(f"lung_mask.airway_margin_mm={conf.lung_mask.airway_margin_mm} must be null (keep the "
                          f"airways) or at least 0 mm.")
    if not 0 <= _number(conf, "data.augmentation.rotation_degrees") <= 180:
        raise ConfigError(f"data.augmentation.rotation_degrees={conf.data.augmentation.rotation_degrees} must "
                          f"lie in [0, 180].")
    if not 0 <= _number(conf, "data.augmentation.scaling") < 1:
        raise ConfigError(f"data.augmentation.scaling={conf.data.augmentation.scaling} must lie in [0, 1).")
    if not 0 <= _number(conf, "inference.overlap") < 1:
        raise ConfigError(f"inference.overlap={conf.inference.overlap} must lie in [0, 1).")


def validate(conf: DictConfig) -> None:
    """Reject values that would fail late (mid-training) or silently do the wrong thing."""
    _check_ranges(conf)
    for key in ("lesions.small_count", "lesions.medium_count", "lesions.small_semi_axes",
                "lesions.medium_semi_axes", "lesions.large_semi_axes", "lesions.sigma_a",
                "lesions.a_range", "lesions.sigma_b_small", "lesions.sigma_b_large", "lesions.mu0",
                "lesions.elastic_magnitude"):
        _check_range(conf, key)
    lo, hi = conf.lesions.a_range
    if hi - lo <= conf.lesions.a_min_gap and conf.lesions.a_min_gap > 0:
        raise ConfigError(f"lesions.a_range={[lo, hi]} cannot give a_U - a_L > a_min_gap={conf.lesions.a_min_gap}.")
    if conf.target.kind not in ("tissue", "areas", "lesions"):
        raise ConfigError(f"target.kind={conf.target.kind!r} must be tissue, areas or lesions.")
    if conf.lung_mask.backend not in ("threshold", "file"):
        raise ConfigError(f"lung_mask.backend={conf.lung_mask.backend!r} must be threshold or file.")
    if conf.postprocessing.dilation_shape not in ("ball", "cube"):
        raise ConfigError("postprocessing.dilation_shape must be ball or cube.")
    for key in ("k_d", "k_f"):
        if conf.postprocessing[key] % 2 != 1:
            raise ConfigError(f"postprocessing.{key}={conf.postprocessing[key]} must be odd (centred mean filter).")
    if conf.inference.member is not None and not 1 <= conf.inference.member <= conf.model.members:
        raise ConfigError(f"inference.member={conf.inference.member} must be null (the vote) or lie in "
                          f"1..model.members={conf.model.members}.")
    if list(conf.data.slab[1:]) != list(conf.preprocessing.in_plane_size):
        raise ConfigError(f"data.slab in-plane {list(conf.data.slab[1:])} must equal "
                          f"preprocessing.in_plane_size {list(conf.preprocessing.in_plane_size)}.")
    ablation = OmegaConf.select(conf, "ablation", default=None)
    if ablation is not None and ablation not in ablations():
        raise ConfigError(f"ablation={ablation!r} is not in experiments/ablations.yaml.")
    if conf.cv.fold is not None and not 0 <= conf.cv.fold < conf.cv.folds:
        raise ConfigError(f"cv.fold={conf.cv.fold} must lie in 0..cv.folds-1 ({conf.cv.folds} folds).")
    _validate_datasets(conf)


def core_groups() -> set[str]:
    """The top-level groups of experiments/normnet.yaml, which every experiment has."""
    return set(_load_chain(resolve_experiment("normnet")).keys())


def _validate_datasets(conf: DictConfig) -> None:
    if conf.data.healthy not in HEALTHY_SETS:
        raise ConfigError(f"data.healthy={conf.data.healthy!r} must be one of {', '.join(HEALTHY_SETS)}.")
    for role in ("train", "test"):
        for name in conf.data[role]:
            if name not in TEST_SETS:
                raise ConfigError(f"data.{role} entry {name!r} must be one of {', '.join(TEST_SETS)}.")
    if "folder" in conf.data.train and not conf.data.train_root:
        raise ConfigError("data.train=[folder] needs data.train_root=<folder with images/ and lesions/>.")
    if conf.data.healthy == "folder" and not conf.data.healthy_root:
        raise ConfigError("data.healthy=folder needs data.healthy_root=<folder of healthy scans>.")
    if "folder" in conf.data.test and not conf.data.test_root:
        raise ConfigError("data.test=[folder] needs data.test_root=<folder with images/ and lesions/>.")
    healthy = conf.data.healthy
    if healthy not in ("phantom", "folder") and not (conf.data.healthy_root or conf.datasets[healthy].root):
        raise ConfigError(f"data.healthy={healthy} needs datasets.{healthy}.root (or data.healthy_root)=<its folder>.")
    for role in ("train", "test"):
        for name in conf.data[role]:
            if name not in ("phantom", "folder") and not conf.datasets[name].root:
                raise ConfigError(f"data.{role} entry {name!r} needs datasets.{name}.root=<its folder>.")
