import numpy as np

from lightning_normnet.datasets import discover
from lightning_normnet.io import read_ct, read_image
from lightning_normnet.lungmask import threshold_lung_mask
from lightning_normnet.phantom import make_chest, write_phantom_dataset
from lightning_normnet.preprocessing import window


def test_phantom_is_a_chest_in_hu_with_bright_lung_structures():
    hu, _, lesion = make_chest(3, (96, 96, 40), (3.0, 3.0, 4.0), covid=False)
    lung = threshold_lung_mask(hu, (4.0, 3.0, 3.0))
    assert hu.min() < -950 and hu.max() > 300                    # air outside, bone
    assert np.median(hu[lung]) < -780                            # parenchyma
    bright = (window(hu, -800, 100) >= 0.33)[lung].mean()
    assert 0.01 < bright < 0.2                                   # vessels and airway walls
    assert not lesion.any()


def test_covid_phantom_lesions_are_in_the_lung_and_denser_than_parenchyma():
    hu, lung, lesion = make_chest(5, (96, 96, 40), (3.0, 3.0, 4.0), covid=True)
    assert lesion.sum() > 50
    assert not (lesion & ~lung).any()
    assert np.median(hu[lesion]) > -700


def test_written_layout_is_what_the_loaders_read(tmp_path):
    root = write_phantom_dataset(tmp_path / "covid", 2, 0, (48, 48, 20), (5.0, 5.0, 8.0), covid=True)
    cases = discover("phantom", root, {}, "test").cases
    assert [c.name for c in cases] == ["covid_000", "covid_001"]
    assert all(c.lesion is not None and c.lung is not None for c in cases)
    image = read_ct(cases[0].image)
    assert image.GetSpacing() == (5.0, 5.0, 8.0)
    assert read_image(cases[0].lesion).GetSize() == image.GetSize()
