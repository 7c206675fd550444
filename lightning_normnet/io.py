"""Reading and writing CT volumes and masks with their geometry (SimpleITK).

Every supported format (NIfTI, NRRD, MHD/RAW, a folder holding one DICOM
series) comes back as a SimpleITK image, so spacing, origin and direction are
carried along and a prediction can be written in the input's own geometry.
Writes go to a temporary name in the same folder and are renamed when
complete, so a crash never leaves a half-written file behind.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mhd", ".mha")
AIR_HU_CEILING = -500.0  # a chest CT in HU has air well below this; a 0-255 image has none


class InputError(ValueError):
    """Input that cannot be used; the message names the file and what is wrong."""


def is_image_file(path: Path) -> bool:
    return path.is_file() and any(path.name.lower().endswith(s) for s in IMAGE_SUFFIXES)


def case_name(path: Path) -> str:
    """File or folder name without the image suffix: 'id001.nii.gz' -> 'id001'."""
    name = path.name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_image(path: str | Path) -> sitk.Image:
    """Read an image file or a DICOM series folder (the largest series in it)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder.")
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(path))
            if not series:
                raise InputError(f"{path}: folder holds no DICOM series.")
            files = max((reader.GetGDCMSeriesFileNames(str(path), s) for s in series), key=len)
            reader.SetFileNames(files)
            return reader.Execute()
        if not is_image_file(path):
            raise InputError(f"{path}: not a supported image (NIfTI, NRRD, MHD/MHA or a DICOM folder).")
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        first_line = str(err).strip().splitlines()[-1] if str(err).strip() else "unreadable"
        raise InputError(f"{path}: cannot be read ({first_line}).") from None


def read_ct(path: str | Path) -> sitk.Image:
    """Read a CT volume as float32 HU; refuse images that carry no HU."""
    image = read_image(path)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: expected a 3D single-channel CT volume, got "
                         f"{image.GetDimension()}D with {image.GetNumberOfComponentsPerPixel()} channels.")
    image = sitk.Cast(image, sitk.sitkFloat32)
    check_hounsfield(sitk.GetArrayViewFromImage(image), path)
    return image


def check_hounsfield(array: np.ndarray, path: str | Path) -> None:
    """A chest CT in HU holds air (about -1000 HU); windowed 0-255 or 0-1 images do not."""
    sample = array[:: max(1, array.shape[0] // 16)]
    low = float(np.percentile(sample, 1.0))
    if low > AIR_HU_CEILING:
        raise InputError(
            f"{path}: values are not Hounsfield units (1st percentile {low:.1f}, range "
            f"[{float(array.min()):.1f}, {float(array.max()):.1f}]; air should be near -1000): "
            "it looks windowed or rescaled.")


def read_mask(path: str | Path, reference: sitk.Image, what: str = "mask") -> sitk.Image:
    """Read a binary mask that must share the reference image's grid; > half its max is foreground."""
    mask = read_image(path)
    same_size = mask.GetSize() == reference.GetSize()
    same_space = (np.allclose(mask.GetSpacing(), reference.GetSpacing(), rtol=1e-3)
                  and np.allclose(mask.GetOrigin(), reference.GetOrigin(), atol=1e-2 * max(reference.GetSpacing()))
                  and np.allclose(mask.GetDirection(), reference.GetDirection(), atol=1e-3))
    if not (same_size and same_space):
        raise InputError(
            f"{path}: {what} geometry differs from its image (size {mask.GetSize()} vs {reference.GetSize()}, "
            f"spacing {tuple(round(s, 3) for s in mask.GetSpacing())} vs "
            f"{tuple(round(s, 3) for s in reference.GetSpacing())}).")
    array = sitk.GetArrayViewFromImage(mask)
    top = float(array.max())
    binary = (array > top / 2) if top > 1 else (array > 0)
    out = sitk.GetImageFromArray(binary.astype(np.uint8))
    out.CopyInformation(reference)
    return out


def write_image(image: sitk.Image, path: str | Path) -> Path:
    """Write atomically: a temporary file beside the target, renamed when complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        sitk.WriteImage(image, tmp, useCompression=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_array(array: np.ndarray, path: Path) -> None:
    """np.save atomically (the cache is read by other processes while it grows)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "wb") as handle:
        np.save(handle, array)
    os.replace(tmp, path)


def image_like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """A SimpleITK image of `array` (z, y, x) with the reference's geometry."""
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image
