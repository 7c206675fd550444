"""The prepared cache follows its folder: new scans are added, finished ones are not redone."""
import shutil

import numpy as np

from datamodules.data_sources import prepare_dataset, prepared_dir
from lightning_normnet.datasets import load_index
from lightning_normnet.phantom import write_phantom_dataset


def test_cache_follows_the_folder(tmp_path, tiny_config):
    source = write_phantom_dataset(tmp_path / "all", 2, 0, (80, 80, 36), (4.0, 4.0, 6.0), covid=False)
    folder = tmp_path / "healthy" / "images"
    folder.mkdir(parents=True)
    shutil.copy(source / "images" / "healthy_000.nii.gz", folder)
    tiny_config.data.healthy, tiny_config.data.healthy_root = "folder", str(folder.parent)
    out = prepare_dataset(tiny_config, "healthy", "folder")
    assert [c["name"] for c in load_index(out)["cases"]] == ["healthy_000"]
    first = (out / "healthy_000" / "meta.json").stat().st_mtime_ns

    shutil.copy(source / "images" / "healthy_001.nii.gz", folder)
    assert prepare_dataset(tiny_config, "healthy", "folder") == out
    assert [c["name"] for c in load_index(out)["cases"]] == ["healthy_000", "healthy_001"]
    assert (out / "healthy_000" / "meta.json").stat().st_mtime_ns == first


def test_phantom_count_changes_the_phantom_set(tiny_config):
    two = prepare_dataset(tiny_config, "test", "phantom")
    tiny_config.data.phantom.covid_volumes = 3
    three = prepare_dataset(tiny_config, "test", "phantom")
    assert len(load_index(two)["cases"]) == 2 and len(load_index(three)["cases"]) == 3


def test_file_lung_masks_are_read_from_lungs_folder(tiny_config):
    """lung_mask.backend=file uses <root>/lungs/<case>.*: the phantom's true lungs, dense lesions included."""
    tiny_config.lung_mask.backend = "file"
    tiny_config.preprocessing.edge_removal.at_inference = False   # it would cut lesions at the pleura too
    out = prepare_dataset(tiny_config, "test", "phantom")
    assert out == prepared_dir(tiny_config, "test", "phantom")
    for case in load_index(out)["cases"]:
        lung = np.load(out / case["name"] / "lung.npy")
        lesion = np.load(out / case["name"] / "lesion.npy")
        assert lung.any() and lesion.any()
        assert (lesion & ~lung).sum() <= 0.02 * lesion.sum()     # nearest-neighbour resampling of both masks
