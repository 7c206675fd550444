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


def test_unknown_override_on_the_command_line(capsys, tmp_path):
    assert main(["train", "normnet_quick", f"output_dir={tmp_path / 'runs'}", "trainer.max_stepz=3"]) == 2
    assert "trainer.max_stepz is not a Lightning Trainer argument; did you mean trainer.max_steps?" in \
        capsys.readouterr().err
    assert main(["train", "normnet_quick", "lesions.mu_0=[0.4,0.8]"]) == 2
    assert "unknown configuration key 'lesions.mu_0' in the overrides; did you mean lesions.mu0?" in \
        capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_prepare_names_skipped_files_and_refuses_an_empty_cache(tmp_path, capsys):
    images = tmp_path / "scans" / "images"
    windowed = sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 255, (6, 32, 32)).astype(np.float32))
    write_image(windowed, images / "radiopaedia_1.nii.gz")
    (images / "broken.nii.gz").write_bytes(b"not an image")
    assert main(["prepare", "--input", str(tmp_path / "scans"), "--output", str(tmp_path / "cache")]) == 2
    out, err = capsys.readouterr()
    assert "skipped radiopaedia_1: " in out and "radiopaedia_1.nii.gz: values are not Hounsfield units" in out
    assert "skipped broken: " in out and "broken.nii.gz: its compressed data is truncated or damaged" in out
    assert "none of the 2 volumes listed could be used" in err


def test_a_full_disk_and_a_bad_count_get_one_sentence(tmp_path, capsys, monkeypatch):
    import errno

    from lightning_normnet.runs import ablations

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "ablations.md"))

    monkeypatch.setattr(ablations, "write_tables", full)
    assert main(["ablations", str(tmp_path)]) == 2
    assert f"the disk is full (writing {tmp_path / 'ablations.md'})" in capsys.readouterr().err
    assert main(["sweep", "experiments/sweeps/smoke.yaml", "--count", "0"]) == 2
    assert "--count 0: an agent runs at least 1 trial" in capsys.readouterr().err
    (tmp_path / "trial-0000").mkdir()
    (tmp_path / "trial-0000" / "trial.json").write_text("{broken")
    monkeypatch.undo()
    assert main(["ablations", str(tmp_path)]) == 2
    assert "trial.json: not valid JSON" in capsys.readouterr().err
