"""The report of `normnet predict`: which slices its picture shows; the real-scan report's lung split and slice AUC."""
import numpy as np
import SimpleITK as sitk
import torch

from lightning_normnet.report import most_affected_levels


def test_most_affected_levels_by_hand():
    """20 slices (a tenth: 2 apart at least): the peaks 9 (30), 10 (29, too close to 9), 3 (20), 15 (10)."""
    per_slice = np.zeros(20, int)
    per_slice[[3, 9, 10, 15, 16]] = [20, 30, 29, 10, 5]
    lung = np.ones(20, int)
    assert most_affected_levels(per_slice, lung) == [3, 9, 15]
    assert most_affected_levels(per_slice, lung, count=1) == [9]


def test_without_lesion_the_levels_spread_over_the_lung():
    lung = np.zeros(20, int)
    lung[4:16] = 1                                  # lung slices 4..15: quarter points 6.75, 9.5, 12.25 of 4..15
    assert most_affected_levels(np.zeros(20, int), lung) == [7, 10, 12]


def test_the_real_scan_report_splits_the_lungs_at_the_midline():
    """benchmarks.real_scans scores each lung against its lobe labels: the patient's left is +x in LPS, and
    the midline is the emptiest column between the lungs (here columns 9-10 of 20; the right lung is the
    larger, so a split by volume would cut it)."""
    from benchmarks.real_scans import left_lung_columns

    array = np.zeros((4, 6, 20), np.uint8)
    array[:, :, 1:9] = 1          # low x: the patient's right lung, 8 columns
    array[:, :, 11:17] = 1        # high x: the left lung, 6 columns
    lung = sitk.GetImageFromArray(array)
    # lung columns 1-8 and 11-16 (24 voxels each): the 30th and 70th percentile fall in columns 5 and 12,
    # the first empty column between them is 9, so x > 9 is the left
    assert (left_lung_columns(lung) == (np.arange(20) > 9)).all()
    flipped = sitk.GetImageFromArray(array[:, :, ::-1].copy())
    flipped.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, 1))     # x = -column: the left lung in columns 3-8
    assert (left_lung_columns(flipped) == (np.arange(20) < 9)).all()


def test_the_real_scan_report_ranks_slices_by_their_counts():
    """Counts 0, 5, 100, 200 with only the 200-voxel slice infected rank it first: AUC 1 by hand. Fed as
    they are, torchmetrics would squash 100 and 200 to the same 1.0 and give 5/6."""
    from benchmarks.real_scans import slice_auc
    counts = torch.tensor([0.0, 5.0, 100.0, 200.0])
    assert slice_auc(counts, torch.tensor([0, 0, 0, 1])) == 1.0
    # positives 100 and 5 against negatives 200 and 0: 100 > 0 and 5 > 0 win, the other two lose
    assert slice_auc(counts[[2, 1, 3, 0]], torch.tensor([1, 1, 0, 0])) == 0.5
    assert slice_auc(torch.zeros(4), torch.tensor([0, 1, 0, 1])) == 0.5


def test_the_real_scan_report_refuses_a_missing_checkpoint_in_one_sentence(monkeypatch, capsys, tmp_path):
    from benchmarks import real_scans
    monkeypatch.setattr("sys.argv", ["real_scans", "--checkpoint", str(tmp_path / "none.ckpt")])
    assert real_scans.main() == 2
    assert capsys.readouterr().err == f"real_scans: {tmp_path / 'none.ckpt'}: checkpoint not found.\n"
