"""Reading and writing CT volumes and masks with their geometry (SimpleITK).

Every supported format (NIfTI, NRRD, MHD/RAW, a folder holding one DICOM
series) comes back as a SimpleITK image, so spacing, origin and direction are
carried along and a prediction can be written in the input's own geometry.
Writes go to a temporary name in the same folder and are renamed when
complete, so a crash never leaves a half-written file behind.
"""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import yaml

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


@dataclass(frozen=True)
class Labels:
    """How to read a label map: the values that are the structure, and every value the file may hold."""
    foreground: tuple[int, ...]
    known: tuple[int, ...]


@dataclass(frozen=True)
class StoredWindow:
    """A set that ships HU windowed to [low, high] and scaled to [0, top] instead of HU."""
    low: float
    high: float
    top: float
    undo: bool        # map such files back to HU; otherwise refuse them
    option: str       # the config key that sets `undo`, named in the refusal


@dataclass(frozen=True)
class Grid:
    """Where an image's voxels lie: size and spacing (x, y, z), origin (mm) and direction cosines.
    Predictions are brought back onto the scan's own Grid and scored there."""
    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> "Grid":
        return cls(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()),
                   tuple(image.GetDirection()))

    @classmethod
    def from_dict(cls, saved: dict) -> "Grid":
        return cls(*(tuple(saved[k]) for k in ("size", "spacing", "origin", "direction")))

    def as_dict(self) -> dict:
        return {"size": list(self.size), "spacing": list(self.spacing), "origin": list(self.origin),
                "direction": list(self.direction)}

    @property
    def shape(self) -> tuple[int, int, int]:
        """The (z, y, x) shape of its arrays."""
        return tuple(reversed(self.size))

    def image(self, array: np.ndarray) -> sitk.Image:
        """A SimpleITK image of a (z, y, x) array on this grid."""
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def slice_index(self, point_mm) -> float:
        """Continuous index along the third image axis (the slices) of a world point."""
        rotation = np.asarray(self.direction, dtype=float).reshape(3, 3)
        local = rotation.T @ (np.asarray(point_mm, dtype=float) - np.asarray(self.origin))
        return float(local[2] / self.spacing[2])


def read_header(path: str | Path) -> Grid:
    """The grid of an image: a file's header only, a DICOM folder as a whole series."""
    path = Path(path)
    if path.is_dir():
        return Grid.of(read_image(path))
    if not path.exists():
        raise InputError(f"{path}: no such file or folder.")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError(f"{path}: cannot be read (unreadable header).") from None
    return Grid(tuple(reader.GetSize()), tuple(reader.GetSpacing()), tuple(reader.GetOrigin()),
                tuple(reader.GetDirection()))


def read_ct(path: str | Path, stored_window: StoredWindow | None = None) -> sitk.Image:
    """Read a CT volume as float32 HU; refuse images that carry no HU, or map a known stored window back."""
    image = read_image(path)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: expected a 3D single-channel CT volume, got "
                         f"{image.GetDimension()}D with {image.GetNumberOfComponentsPerPixel()} channels.")
    image = sitk.Cast(image, sitk.sitkFloat32)
    array = sitk.GetArrayViewFromImage(image)
    if looks_like_hounsfield(array):
        return image
    if stored_window is not None and _within(array, 0.0, stored_window.top):
        w = stored_window
        if not w.undo:
            raise InputError(
                f"{path}: holds HU windowed to [{w.low:g}, {w.high:g}] and scaled to 0-{w.top:g}, not HU; "
                f"set {w.option}=true to map it back to HU (values outside the window stay clipped).")
        return image * ((w.high - w.low) / w.top) + w.low
    sample = array[:: max(1, array.shape[0] // 16)]
    raise InputError(
        f"{path}: values are not Hounsfield units (1st percentile {float(np.percentile(sample, 1.0)):.1f}, "
        f"range [{float(array.min()):.1f}, {float(array.max()):.1f}]; air should be near -1000): "
        "it looks windowed or rescaled.")


def looks_like_hounsfield(array: np.ndarray) -> bool:
    """A chest CT in HU holds air (about -1000 HU); windowed 0-255 or 0-1 images do not."""
    sample = array[:: max(1, array.shape[0] // 16)]
    return float(np.percentile(sample, 1.0)) <= AIR_HU_CEILING


def _within(array: np.ndarray, low: float, high: float) -> bool:
    tolerance = 1e-3 * (high - low)
    return float(array.min()) >= low - tolerance and float(array.max()) <= high + tolerance


def read_mask(path: str | Path, reference: sitk.Image | Grid, what: str = "mask", labels: Labels | None = None,
              header_from_reference: bool = False) -> sitk.Image:
    """A binary mask on the reference image's grid.

    With `labels`, the file is a label map whose values must all be known; the
    foreground labels form the mask. Without, every non-zero voxel is foreground,
    except in soft masks (non-integer values, e.g. a resampled 0-255 mask), which
    are cut at half their nominal maximum (0.5 or 127.5). `header_from_reference`
    accepts a mask whose header is wrong but whose size matches (UESTC labels).
    """
    grid = reference if isinstance(reference, Grid) else Grid.of(reference)
    mask = read_image(path)
    same_size = mask.GetSize() == grid.size
    same_space = header_from_reference or (
        np.allclose(mask.GetSpacing(), grid.spacing, rtol=1e-3)
        and np.allclose(mask.GetOrigin(), grid.origin, atol=1e-2 * max(grid.spacing))
        and np.allclose(mask.GetDirection(), grid.direction, atol=1e-3))
    if not (same_size and same_space):
        raise InputError(
            f"{path}: {what} geometry differs from its image (size {mask.GetSize()} vs {grid.size}, "
            f"spacing {tuple(round(s, 3) for s in mask.GetSpacing())} vs "
            f"{tuple(round(s, 3) for s in grid.spacing)}).")
    array = sitk.GetArrayViewFromImage(mask)
    integer = bool(np.all(np.mod(array, 1) == 0))
    if labels is not None:
        values = np.unique(array)
        unknown = [v.item() for v in values if v != 0 and v not in labels.known]
        if not integer or unknown:
            shown = unknown[:5] if integer else "non-integer values"
            raise InputError(f"{path}: {what} holds {shown}, not among its known labels {list(labels.known)}.")
        binary = np.isin(array, labels.foreground)
    elif integer:
        binary = array != 0
    else:
        binary = array > (127.5 if float(array.max()) > 1.5 else 0.5)
    return grid.image(binary.astype(np.uint8))


def read_slice_labels(path: str | Path, reference: sitk.Image) -> sitk.Image:
    """Slice-level labels (a CSV with columns z_index, infected: 0/1 per slice along the image's third
    axis, as COVID-CT-MD ships them) as a mask on the reference grid: infected slices wholly 1."""
    import csv

    path = Path(path)
    depth = reference.GetSize()[2]
    infected = np.zeros(depth, dtype=bool)
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = {c.lower(): c for c in reader.fieldnames or []}
        if "z_index" not in columns or "infected" not in columns:
            raise InputError(f"{path}: slice labels need the columns z_index and infected.")
        for line, row in enumerate(reader, start=2):
            try:
                z, value = int(row[columns["z_index"]]), int(row[columns["infected"]])
            except ValueError:
                raise InputError(f"{path}: line {line} is not an integer z_index and 0/1 label.") from None
            if not 0 <= z < depth or value not in (0, 1):
                raise InputError(f"{path}: line {line}: z_index {z} outside 0..{depth - 1} or label {value} not 0/1.")
            infected[z] = bool(value)
    size = reference.GetSize()
    return Grid.of(reference).image(np.broadcast_to(infected[:, None, None], (depth, size[1], size[0]))
                                    .astype(np.uint8))


def write_atomically(path: str | Path, write: Callable[[Path], object]) -> Path:
    """`write(tmp)` to a temporary file beside `path` (same extension, so writers that go by it work),
    renamed to `path` when complete: readers never see, and a crash never leaves, a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_image(image: sitk.Image, path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() in (".mhd", ".nhdr"):
        raise InputError(f"{path}: write a single-file format (.nii.gz, .nrrd, .mha), not a detached header.")
    return write_atomically(path, lambda tmp: sitk.WriteImage(image, str(tmp), useCompression=True))


def save_array(array: np.ndarray, path: Path) -> None:
    """np.save atomically (the cache is read by other processes while it grows)."""
    write_atomically(path, lambda tmp: np.save(tmp, array))


def read_document(path: str | Path, what: str):
    """The content of a JSON or YAML file (by its suffix); a missing or unparseable one is refused in one
    sentence naming the file and `what` it should be."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: missing: not {what}.")
    text = path.read_text()
    try:
        return yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}), so not {what}.") from None
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML ({str(err).splitlines()[0]}), so not {what}.") from None


def write_text(path: str | Path, text: str) -> Path:
    return write_atomically(path, lambda tmp: tmp.write_text(text))


def csv_text(header: list[str], rows: list[list]) -> str:
    """A CSV table as text (None as an empty cell), for write_text."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def write_figure(figure, path: str | Path, dpi: int = 120) -> Path:
    """A matplotlib figure as PNG, written whole, and closed."""
    import matplotlib.pyplot as plt

    try:
        return write_atomically(path, lambda tmp: figure.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight"))
    finally:
        plt.close(figure)
