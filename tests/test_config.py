import math
import re

import pytest

from lightning_normnet.config import ConfigError, ablations, load_config
from lightning_normnet.methods import method_of


def test_paper_settings_are_the_default():
    cfg = load_config("normnet")
    assert list(cfg.preprocessing.spacing) == [0.8, 0.8, 1.0]
    assert list(cfg.data.slab) == [32, 512, 512]
    assert cfg.data.batch_size == 8 and cfg.model.lr == 3e-4 and cfg.trainer.max_steps == 2000
    assert cfg.model.members == 5 and cfg.inference.healthy_probability == 0.95
    pp = cfg.postprocessing
    assert (pp.k_d, pp.k_f, pp.t_d, pp.t_f) == (9, 7, 0.2, 0.15)
    assert cfg.target.tau == 0.33 and list(cfg.preprocessing.window) == [-800, 100]
    assert cfg.lesions.rotation and cfg.lesions.elastic


def test_quick_is_a_diff_of_the_default():
    cfg = load_config("normnet_quick")
    assert cfg.name == "normnet_quick" and cfg.trainer.max_steps < 2000
    assert cfg.target.tau == 0.33 and cfg.model.members == 5   # inherited unchanged


def test_the_fine_real_scan_recipe_changes_only_the_grid_and_what_scales_with_it():
    """normnet_realscans_fine is the recipe on a 1.6 mm grid: the same scans, augmentation and network, the
    same in-plane field of view, and (as in the recipe) the paper's lesion lengths and post-processing
    kernels, given for its 0.8 mm voxels, brought to the grid: kernels to the nearest odd size, 3 at least.
    Both save a checkpoint every quarter of the run."""
    paper, recipe, fine = (load_config(name) for name in ("normnet", "normnet_realscans", "normnet_realscans_fine"))
    before, after = _flat(recipe), _flat(fine)
    assert {key for key, value in after.items() if before[key] != value} == {
        "name", "preprocessing.spacing", "preprocessing.in_plane_size", "preprocessing.edge_removal.boundary_width",
        "data.slab", "data.batch_size", "lesions.length_scale", "postprocessing.k_d",
        "inference.roi", "inference.sw_batch_size", "trainer.max_steps", "trainer.val_check_interval",
        "trainer.checkpoint_every"}
    for cfg in (recipe, fine):
        spacing = cfg.preprocessing.spacing[0]
        assert spacing * cfg.preprocessing.in_plane_size[0] == pytest.approx(409.6)
        assert list(cfg.inference.roi[1:]) == list(cfg.preprocessing.in_plane_size)
        assert cfg.lesions.length_scale == pytest.approx(paper.preprocessing.spacing[0] / spacing)
        for kernel in ("k_d", "k_f"):
            scaled = paper.postprocessing[kernel] * paper.preprocessing.spacing[0] / spacing
            assert cfg.postprocessing[kernel] == max(3, 2 * round((scaled - 1) / 2) + 1)
        assert cfg.trainer.max_steps == 4 * cfg.trainer.checkpoint_every   # a kill loses at most a quarter
    voxels = [cfg.trainer.max_steps * cfg.data.batch_size * math.prod(cfg.data.slab) for cfg in (fine, recipe)]
    assert voxels[0] < voxels[1]


def test_overrides_reach_any_key():
    cfg = load_config("normnet", ["trainer.max_steps=10", "lesions.mu0=[0.45,0.75]", "model.members=3"])
    assert cfg.trainer.max_steps == 10 and list(cfg.lesions.mu0) == [0.45, 0.75] and cfg.model.members == 3


def test_unknown_override_key_is_an_error():
    with pytest.raises(ConfigError, match="model.member'.*did you mean model.members"):
        load_config("normnet", ["model.member=10"])
    from lightning_normnet.runs.run import check_trainer      # trainer.* is checked against Lightning's Trainer
    with pytest.raises(ConfigError, match="trainer.max_step is not .* did you mean trainer.max_steps"):
        check_trainer(load_config("normnet", ["trainer.max_step=10"]))


def test_unknown_key_in_an_experiment_file_is_an_error(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("base: normnet\nlesions:\n  mu_0: [0.4, 0.8]\n")
    with pytest.raises(ConfigError, match="mu_0"):
        load_config(str(path))


@pytest.mark.parametrize("override, message", [
    ("lesions.mu0=[0.8,0.4]", "low <= high"),
    ("postprocessing.k_d=8", "odd"),
    ("target.kind=voxels", "tissue"),
    ("data.slab=[32,256,256]", "in_plane_size"),
    ("data.healthy=folder", "healthy_root"),
])
def test_bad_values_are_rejected_early(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("normnet", [override])


def test_unknown_experiment_names_the_known_ones():
    with pytest.raises(ConfigError, match="normnet_quick"):
        load_config("nonexistent")


def test_unet3d_patch_must_survive_its_downsamplings():
    with pytest.raises(ConfigError, match="must be a multiple of 16"):
        method_of(load_config("unet3d", ["unet3d.patch=[96,96,24]"]))
    assert list(load_config("unet3d").unet3d.patch) == [160, 160, 80]      # the paper's, 80 = 5 x 16


@pytest.mark.parametrize("experiment, override, message", [
    ("normnet", "model.kind=voxelnet", "model.kind='voxelnet' must be one of cyclegan, infnet, normnet"),
    ("unet3d", "model.kind=normnet", "unknown top-level group 'unet3d' for model.kind=normnet"),
    ("normnet", "model.kind=cyclegan", "model.kind=cyclegan needs its 'cyclegan' group"),
    ("threshold", "threshold.hu_band=[-900,-200]", "inside preprocessing.window"),
    ("cyclegan", "cyclegan.clustering=mean", "kmeans or otsu"),
])
def test_the_registry_checks_each_methods_groups(experiment, override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        method_of(load_config(experiment, [override]))


def test_cv_fold_must_be_one_of_the_folds():
    with pytest.raises(ConfigError, match="cv.fold=5 must lie in 0..cv.folds-1"):
        load_config("unet3d", ["cv.fold=5"])


def _flat(cfg) -> dict:
    from omegaconf import OmegaConf

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value
    return dict(walk(OmegaConf.to_container(cfg), ""))


@pytest.mark.parametrize("name", list(ablations()))
def test_each_named_ablation_changes_exactly_the_keys_it_claims(name):
    """Against normnet.yaml: the preset's keys take its values (each differs from the default), `ablation`
    and `name` record it, and nothing else moves."""
    default, ablated = _flat(load_config("normnet")), _flat(load_config("normnet", [f"ablation={name}"]))
    claimed = dict(ablations()[name].set)
    changed = {k for k in default if default[k] != ablated[k]}
    assert changed == set(claimed) | {"ablation", "name"}
    assert all(ablated[k] == v for k, v in claimed.items())
    assert ablated["ablation"] == name and ablated["name"] == f"normnet-{name}"


@pytest.mark.parametrize("name, key, value", [
    ("iii", "lesions.small_count", [3, 8]), ("iii", "lesions.large_probability", 0.1),
    ("iv", "lesions.medium_count", [7, 12]), ("v", "lesions.large_semi_axes", [32, 48]),
    ("vii", "lesions.sigma_a", [4, 12]), ("xi", "lesions.sigma_b_small", [0.6, 2.0]),
    ("xiv", "lesions.mu0", [0.35, 0.85]), ("k_f", "postprocessing.k_f", 9), ("t_d", "postprocessing.t_d", 0.15),
    ("fixed_a", "lesions.a_range", [0.2, 0.2]), ("fixed_G", "lesions.small_semi_axes", [12, 12]),
    ("edge", "preprocessing.edge_removal.enabled", False), ("areas", "target.kind", "areas"),
])
def test_ablations_hold_the_papers_values(name, key, value):
    """Spot checks against Sec. IV-E's text (not against ablations.yaml)."""
    from omegaconf import OmegaConf

    assert OmegaConf.select(load_config("normnet", [f"ablation={name}"]), key) == value


def test_the_threshold_ablations_keep_a_voxel_at_exactly_t_bright():
    for t in (-700, -600, -400, -300):
        tau = load_config("normnet", [f"ablation=T_{-t}"]).target.tau
        assert tau <= (t + 800) / 900 < tau + 1e-4


def test_ablations_cover_table_iv_and_combine_with_overrides():
    assert len(ablations()) == 14 + 4 + 4 + 3 + 3        # generator, post-processing, T, modules, strategies
    cfg = load_config("normnet_quick", ["ablation=fixed_G", "lesions.rotation=true"])
    assert cfg.lesions.small_semi_axes == [12, 12] and cfg.lesions.rotation and cfg.name == "normnet_quick-fixed_G"
    assert load_config("normnet", ["ablation=T_600"]).target.tau == pytest.approx((-600 + 800) / 900, abs=1e-4)
    with pytest.raises(ConfigError, match="ablation='fixed_g' is not in experiments/ablations.yaml"):
        load_config("normnet", ["ablation=fixed_g"])


def test_an_ablation_applies_once_wherever_it_is_named(tmp_path):
    """Over a checkpoint's config (post-processing columns need no training), in an experiment file under
    that file's own values, and not again when a run's saved config.yaml is loaded."""
    from omegaconf import OmegaConf

    from lightning_normnet.config import config_from_checkpoint

    saved = OmegaConf.to_container(load_config("normnet"))
    assert config_from_checkpoint(saved, ["ablation=k_d"]).postprocessing.k_d == 7
    (tmp_path / "mine.yaml").write_text("base: normnet\nablation: fixed_G\nlesions:\n  rotation: true\n")
    mine = load_config(str(tmp_path / "mine.yaml"))
    assert mine.lesions.rotation and mine.lesions.small_semi_axes == [12, 12] and mine.name == "normnet-fixed_G"
    OmegaConf.save(load_config("normnet", ["ablation=fixed_G", "lesions.rotation=true"]), tmp_path / "config.yaml")
    again = load_config(str(tmp_path / "config.yaml"))
    assert again.lesions.rotation and again.name == "normnet-fixed_G"


@pytest.mark.parametrize("override, message", [
    ("data.batch_size=abc", "data.batch_size='abc' must be an integer, like its default 2"),
    ("lesions.elastic=3", "lesions.elastic=3 must be true or false"),
    ("model.lr=fast", "model.lr='fast' must be a number"),
    ("data.slab=8", "data.slab=8 must be a list"),
    ("trainer.max_steps=-5", "trainer.max_steps=-5 must be at least 1"),
    ("trainer.max_steps=abc", "trainer.max_steps='abc' must be an integer"),
    ("trainer.val_check_interval=0", "trainer.val_check_interval=0 must be at least 1"),
    ("inference.healthy_probability=1.5", r"inference.healthy_probability=1.5 must lie in \[0, 1\]"),
    ("postprocessing.t_d=-0.1", r"postprocessing.t_d=-0.1 must lie in \[0, 1\]"),
    ("preprocessing.window=[100,-800]", "low < high"),
    ("preprocessing.spacing=[0.8,0.0,1.0]", "must be positive on every axis"),
    ("inference.roi=[0,128,128]", "inference.roi=.* must be positive"),
    ("postprocesing.k_d=3", "did you mean postprocessing.k_d"),
    ("trainr.max_steps=3", "did you mean trainer.max_steps"),
    ("data.batch_size=null", "data.batch_size=None must be a number"),
    ("preprocessing.spacing=[1.0,1.0]", "must have 3 values"),
    ("inference.overlap=1.0", r"inference.overlap=1.0 must lie in \[0, 1\)"),
    ("data.augmentation.mirror_probability=2", r"mirror_probability=2 must lie in \[0, 1\]"),
    ("data.augmentation.rotation_degrees=-5", r"rotation_degrees=-5 must lie in \[0, 180\]"),
    ("data.augmentation.rotation_degrees=200", r"rotation_degrees=200 must lie in \[0, 180\]"),
    ("data.augmentation.scaling=1.0", r"data.augmentation.scaling=1.0 must lie in \[0, 1\)"),
    ("data.augmentation.scaling=-0.1", r"data.augmentation.scaling=-0.1 must lie in \[0, 1\)"),
])
def test_a_wrong_type_or_impossible_value_is_refused_in_one_sentence(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("normnet_quick", [override])


def test_a_number_may_stand_where_a_number_is_and_null_where_a_key_allows_it():
    cfg = load_config("normnet_quick", ["postprocessing.t_d=1", "datasets.uestc.max_z_spacing_mm=null",
                                        "trainer.gradient_clip_val=1.0", "trainer.devices=2"])   # Lightning's types
    assert cfg.postprocessing.t_d == 1 and cfg.datasets.uestc.max_z_spacing_mm is None
    assert cfg.trainer.gradient_clip_val == 1.0


def test_every_lightning_trainer_argument_passes_and_a_misspelt_one_is_refused(tmp_path):
    from lightning_normnet.cli import main
    from lightning_normnet.methods import method_of
    from lightning_normnet.runs.run import Run

    cfg = load_config("normnet_quick", ["trainer.gradient_clip_val=1.0", "trainer.accumulate_grad_batches=2",
                                        "trainer.limit_train_batches=3", "logging.wandb=false"])
    trainer = Run(cfg, method_of(cfg), tmp_path).trainer(evaluate=False)
    assert (trainer.gradient_clip_val, trainer.accumulate_grad_batches, trainer.limit_train_batches) == (1.0, 2, 3)
    out = tmp_path / "runs"
    for wrong in ("trainer.gradent_clip_val=1.0", "trainer.precision=17-mixed", "trainer.callbacks=[]",
                  "trainer.max_epochs=3"):
        assert main(["train", "normnet_quick", f"output_dir={out}", wrong]) == 2
    assert not out.exists()                              # refused before any folder was made


def test_make_train_takes_experiment_as_exp():
    import subprocess
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    dry = subprocess.run(["make", "-n", "--no-print-directory", "-W", ".venv/.installed", "train",
                          "experiment=normnet_quick"], cwd=root, capture_output=True, text=True).stdout
    commands = [line.split()[:3] for line in dry.splitlines() if "bin/normnet" in line]
    assert commands == [[".venv/bin/normnet", "train", "normnet_quick"]], dry


@pytest.mark.parametrize("experiment, override, message", [
    ("cyclegan", "cyclegan.epochs=-1", "cyclegan.epochs=-1 must be at least 1"),
    ("cyclegan", "cyclegan.decay_epochs=120", "must be at most cyclegan.schedule_epochs=100"),
    ("infnet", "infnet.batch_size=-2", "infnet.batch_size=-2 must be at least 1"),
    ("infnet", "infnet.threshold=1.5", r"infnet.threshold=1.5 must lie in \[0, 1\]"),
    ("semi_infnet", "semi.k=0", "semi.k=0 must be at least 1"),
    ("unet3d", "unet3d.augmentation_probability=2", r"must lie in \[0, 1\]"),
    ("unet3d", "unet3d.val_every=0", "unet3d.val_every=0 must be at least 1"),
    ("unet3d", "unet3d.patch=[0,160,80]", "must be positive on every axis"),
    ("cyclegan", "trainer.gradient_clip_val=1.0", "not available to the cycle-GAN.*manual optimisation"),
    ("cyclegan", "trainer.accumulate_grad_batches=2", "not available to the cycle-GAN"),
])
def test_the_baselines_groups_are_range_checked(experiment, override, message):
    with pytest.raises(ConfigError, match=message):
        method_of(load_config(experiment, [override]))


def test_a_misspelt_key_in_a_file_gets_the_nearest(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("base: normnet\npostprocessing:\n  k_dd: 7\n")
    with pytest.raises(ConfigError, match="unknown key 'postprocessing.k_dd'.*did you mean postprocessing.k_d"):
        load_config(str(path))


def test_a_value_of_the_wrong_type_in_a_file_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "typed.yaml"
    path.write_text("base: normnet\ndata:\n  batch_size: abc\n")
    with pytest.raises(ConfigError, match=f"{path}: data.batch_size='abc' must be an integer"):
        load_config(str(path))
