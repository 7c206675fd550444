"""All ranks of one run write into one folder."""
from lightning_normnet.runs.run import open_run_folder


def test_ranks_launched_for_ddp_use_their_parents_folder(tiny_config, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    first = open_run_folder(tiny_config, "train")
    assert (first / "config.yaml").is_file()
    second = open_run_folder(tiny_config, "train")              # another run of the same process: its own
    assert second != first
    monkeypatch.setenv("LOCAL_RANK", "1")                       # a rank Lightning launched from `second`
    assert open_run_folder(tiny_config, "train") == second


def test_slurm_tasks_share_the_job_folder(tiny_config, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    first = open_run_folder(tiny_config, "train")
    assert open_run_folder(tiny_config, "train") == first and first.name == "train-4242"
