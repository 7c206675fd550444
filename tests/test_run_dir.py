"""All ranks of one run write into one folder."""
from lightning_normnet.cli import _run_dir


def test_ddp_children_reuse_the_parents_folder(tiny_config, monkeypatch):
    monkeypatch.delenv("NORMNET_RUN_DIR", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    first = _run_dir(tiny_config, "train")
    assert (first / "config.yaml").is_file()
    assert _run_dir(tiny_config, "train") == first          # a child launched with the inherited env


def test_slurm_tasks_share_the_job_folder(tiny_config, monkeypatch):
    monkeypatch.delenv("NORMNET_RUN_DIR", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    first = _run_dir(tiny_config, "train")
    monkeypatch.delenv("NORMNET_RUN_DIR")                   # another srun task: no inherited env
    assert _run_dir(tiny_config, "train") == first and first.name == "train-4242"
