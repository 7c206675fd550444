"""Bad input ends with one sentence that names the file and what is wrong, and writes nothing."""
import numpy as np
import SimpleITK as sitk

from lightning_normnet.cli import main
from lightning_normnet.io import write_image


def test_predict_with_a_missing_checkpoint(tmp_path, capsys):
    out = tmp_path / "mask.nii.gz"
    assert main(["predict", "--checkpoint", str(tmp_path / "none.ckpt"), "--input", "x", "--output", str(out)]) == 2
    assert "none.ckpt: checkpoint not found." in capsys.readouterr().err
    assert not out.exists()


def test_unknown_override_on_the_command_line(capsys):
    assert main(["train", "normnet_quick", "trainer.max_stepz=3"]) == 2
    assert "unknown configuration key 'trainer.max_stepz'" in capsys.readouterr().err


def test_prepare_names_skipped_files_and_refuses_an_empty_cache(tmp_path, capsys):
    images = tmp_path / "scans" / "images"
    windowed = sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 255, (6, 32, 32)).astype(np.float32))
    write_image(windowed, images / "radiopaedia_1.nii.gz")
    (images / "broken.nii.gz").write_bytes(b"not an image")
    assert main(["prepare", "--input", str(tmp_path / "scans"), "--output", str(tmp_path / "cache")]) == 2
    out, err = capsys.readouterr()
    assert "skipped radiopaedia_1: " in out and "radiopaedia_1.nii.gz: values are not Hounsfield units" in out
    assert "skipped broken: " in out and "broken.nii.gz: cannot be read" in out
    assert "none of the 2 volumes listed could be used" in err
