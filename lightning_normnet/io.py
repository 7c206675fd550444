"""Reading and writing CT volumes and masks with their geometry (SimpleITK).

Every supported format (NIfTI, NRRD, MHD/RAW, a folder holding one DICOM
series) comes back as a SimpleITK image, so spacing, origin and direction are
carried along and a prediction can be written in the input's own geometry.
Writes go to a temporary name in the same folder and are renamed when
complete, so a crash never leaves a half-written file behind.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import os
import secrets
import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import yaml

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mhd", ".mha")
WRITTEN_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")    # single-file formats a mask is written in
AIR_HU_CEILING = -500.0  # a chest CT in HU has air well below this; a 0-255 image has none
# A chest CT's voxels lie between sub-millimetre and the 5-10 mm slices of old scans; a spacing outside
# this range is a damaged or unit-confused header (metres, or a missing spacing read as 0).
SPACING_RANGE_MM = (0.1, 12.0)
# Fewer slices than this is a single slice, a scout or an excerpt: no 3D lung mask, slab or filter fits.
MIN_SLICES = 8
SLICE_POSITION_TOLERANCE = 0.02   # of the slice spacing: scanners round positions to micrometres


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


def read_image(path: str | Path, series: str | None = None) -> sitk.Image:
    """Read an image file, or a folder holding one DICOM series (`series`: the UID of the one to read
    where it holds several), checked whole: a file's data as long as its header says, a series without
    damaged files, gaps, duplicate or unevenly spaced slices, and every voxel finite."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder.")
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(dicom_series_files(path, series))
            image = reader.Execute()
        elif not is_image_file(path):
            raise InputError(f"{path}: not a supported image (NIfTI, NRRD, MHD/MHA or a DICOM folder).")
        else:
            if path.name.lower().endswith((".nii", ".nii.gz")):
                _check_nifti_data(path)
            image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise InputError(f"{path}: cannot be read ({_itk_reason(err)}).") from None
    _check_finite(path, image)
    return image


def last_line(err: BaseException) -> str:
    """The last line of an exception's message (where libraries put what went wrong), or its kind."""
    lines = str(err).strip().splitlines()
    return lines[-1] if lines else type(err).__name__


def _itk_reason(err: RuntimeError) -> str:
    """The line of an ITK exception that says what went wrong (not its source location, nor a stale errno)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    meaningful = [line for line in lines if not line.startswith(("Exception thrown", "Reason: No such file"))]
    reason = (meaningful or lines or ["unreadable"])[-1]
    return reason.split("): ", 1)[-1].rstrip(".")


def _check_nifti_data(path: Path) -> None:
    """A NIfTI file (gzipped or not) must hold as many voxel bytes as its header announces, every float voxel
    finite: SimpleITK pads a truncated file with zeros, and reads NaN and infinity as 0, without a word."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            header = handle.read(540)
            layout = _nifti_layout(header)
            if layout is None:
                return                     # not a NIfTI header SimpleITK will accept either: it says why
            offset, voxels, dtype, dims = layout
            length = len(header) + len(handle.read(max(offset - len(header), 0)))
            pending, checked, bad, first = header[offset:], 0, 0, None
            while True:
                count = min(len(pending) // dtype.itemsize, voxels - checked)
                if dtype.kind == "f" and count:
                    finite = np.isfinite(np.frombuffer(pending, dtype, count))
                    if not finite.all():
                        first = checked + int(np.argmin(finite)) if first is None else first
                        bad += int(count - finite.sum())
                checked += count
                pending = pending[count * dtype.itemsize:]
                if checked == voxels:            # complete: what follows the voxels is not read
                    break
                chunk = handle.read(1 << 24)
                if not chunk:
                    break
                length += len(chunk)
                pending += chunk
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise InputError(f"{path}: its compressed data is truncated or damaged ({err}).") from None
    expected = offset + voxels * dtype.itemsize if checked < voxels else 0
    if length < expected:
        raise InputError(f"{path}: holds {length} bytes where its header announces {expected}: the file is "
                         "truncated.")
    if bad:
        index = tuple(int(i) for i in np.unravel_index(first, dims, order="F"))
        raise InputError(f"{path}: holds {bad} voxels that are NaN or infinite (the first at index {index}).")


# NIfTI datatype codes of the voxel types a CT or mask is stored in
NIFTI_TYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8",
               1280: "u8"}


def _nifti_layout(header: bytes) -> tuple[int, int, np.dtype, tuple[int, ...]] | None:
    """(voxel offset, voxel count, voxel dtype, dims) of a NIfTI-1 or -2 header, or None."""
    for order in "<>":
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:
            code = struct.unpack(order + "h", header[70:72])[0]
            dims = struct.unpack(order + "8h", header[40:56])
            offset = max(int(struct.unpack(order + "f", header[108:112])[0]), 348)
            break
        if len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540:
            code = struct.unpack(order + "h", header[12:14])[0]
            dims = struct.unpack(order + "8q", header[16:80])
            offset = max(struct.unpack(order + "q", header[168:176])[0], 540)
            break
    else:
        return None
    if not 1 <= dims[0] <= 7 or code not in NIFTI_TYPES:
        return None
    shape = tuple(max(int(d), 1) for d in dims[1:1 + dims[0]])
    return offset, int(np.prod(shape, dtype=np.int64)), np.dtype(order + NIFTI_TYPES[code]), shape


def dicom_series_files(folder: Path, series: str | None = None) -> list[str]:
    """The files of a folder's one DICOM series (or of `series`), in slice order, refused when the folder
    holds several series and none is chosen, holds a DICOM file that cannot be read, or its slices have gaps,
    duplicates or uneven spacing. Such a series is refused, not resampled: interpolating across a gap
    would invent anatomy, and a mixed series is two acquisitions."""
    uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not uids:
        raise InputError(f"{folder}: folder holds no DICOM series.")
    if series is None and len(uids) > 1:
        raise InputError(f"{folder}: holds {len(uids)} DICOM series ({', '.join(uids)}): choose one with "
                         "--series UID (predict), or keep one series per folder.")
    if series is not None and series not in uids:
        raise InputError(f"{folder}: holds no DICOM series {series} (it holds {', '.join(uids)}).")
    in_series = {uid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid) for uid in uids}
    listed = {os.path.normpath(f) for files in in_series.values() for f in files}
    damaged = [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")
               and p.name.upper() != "DICOMDIR" and os.path.normpath(p) not in listed and _looks_like_dicom(p)]
    if damaged:
        raise InputError(f"{damaged[0]}: a DICOM file that cannot be read (truncated or damaged)"
                         + (f", one of {len(damaged)} in its folder." if len(damaged) > 1 else "."))
    return _in_position_order(folder, list(in_series[series or uids[0]]))


IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1."
NOT_SLICES = ("1.2.840.10008.5.1.4.1.1.11.", "1.2.840.10008.5.1.4.1.1.88.", "1.2.840.10008.5.1.4.1.1.104.",
              "1.2.840.10008.5.1.4.1.1.481.", "1.2.840.10008.5.1.4.1.1.66")   # states, reports, PDF, RT, raw


def _looks_like_dicom(path: Path) -> bool:
    """A DICOM file that should have been an image of the series: a DICOMDIR, a report or a presentation
    state (known by the SOP class in its file meta header) is not."""
    with open(path, "rb") as handle:
        head = handle.read(4096)
    if head[128:132] != b"DICM":
        return path.suffix.lower() == ".dcm"
    sop_class = _meta_sop_class(head)
    return sop_class is None or (sop_class.startswith(IMAGE_STORAGE) and not sop_class.startswith(NOT_SLICES))


def _meta_sop_class(head: bytes) -> str | None:
    """(0002,0002) Media Storage SOP Class UID from a DICOM file meta header (explicit VR little endian)."""
    position = 132
    while position + 8 <= len(head):
        group, element = struct.unpack("<HH", head[position:position + 4])
        if group != 2:
            return None
        vr = head[position + 4:position + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            if position + 12 > len(head):
                return None
            length, start = struct.unpack("<I", head[position + 8:position + 12])[0], position + 12
        else:
            length, start = struct.unpack("<H", head[position + 6:position + 8])[0], position + 8
        if element == 2:
            return head[start:start + length].rstrip(b"\0 ").decode("ascii", "replace")
        position = start + length
    return None


def _in_position_order(folder: Path, files: list[str]) -> list[str]:
    """The files sorted along the slice normal, checked one spacing apart: no duplicate, no gap, no change
    of spacing. (GDCM falls back to instance numbers or file names where it cannot sort by position.)"""
    reader = sitk.ImageFileReader()
    reader.LoadPrivateTagsOff()
    positions = []
    for name in files:
        reader.SetFileName(name)
        reader.ReadImageInformation()
        if not (reader.HasMetaDataKey("0020|0032") and reader.HasMetaDataKey("0020|0037")):
            if positions:
                raise InputError(f"{name}: has no image position or orientation, unlike the other slices.")
            return files                  # no slice of the series says where it lies: nothing to check
        try:
            location = np.array([float(v) for v in reader.GetMetaData("0020|0032").split("\\")])
            axes = np.array([float(v) for v in reader.GetMetaData("0020|0037").split("\\")])
            positions.append(float(np.cross(axes[:3], axes[3:]) @ location))
        except ValueError:
            raise InputError(f"{name}: its image position or orientation is not 3 and 6 numbers.") from None
    order = np.argsort(positions, kind="stable")
    files, positions = [files[i] for i in order], [positions[i] for i in order]
    if len(positions) < 2:
        return files
    steps = np.diff(positions)
    spacing = float(np.median(steps))
    for i, step in enumerate(steps):
        where = (f"{Path(files[i]).name} and {Path(files[i + 1]).name} "
                 f"(at {positions[i]:.2f} and {positions[i + 1]:.2f} mm)")
        if step < 1e-3:
            raise InputError(f"{folder}: two slices lie at one position: {where}.")
        if abs(step - spacing) > SLICE_POSITION_TOLERANCE * spacing:
            missing = round(step / spacing) - 1
            if missing >= 1 and abs(step - (missing + 1) * spacing) <= SLICE_POSITION_TOLERANCE * spacing:
                raise InputError(f"{folder}: {missing} slice(s) missing between {where}, where the others lie "
                                 f"{spacing:.3g} mm apart.")
            raise InputError(f"{folder}: slice spacing varies from {steps.min():.3g} to {steps.max():.3g} mm "
                             f"(first between {where}); a series must be evenly spaced.")
    return files


def _check_finite(path: Path, image: sitk.Image) -> None:
    """Every voxel a number: NaN or infinity anywhere (not only where a sample looks) refuses the file."""
    array = sitk.GetArrayViewFromImage(image)
    if array.dtype.kind != "f":
        return
    finite = np.isfinite(array)
    if not finite.all():
        first = tuple(int(i) for i in np.unravel_index(int(np.argmin(finite)), finite.shape)[::-1])
        raise InputError(f"{path}: holds {int(finite.size - finite.sum())} voxels that are NaN or infinite "
                         f"(the first at index {first}).")


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


def read_ct(path: str | Path, stored_window: StoredWindow | None = None, series: str | None = None) -> sitk.Image:
    """Read a CT volume as float32 HU; refuse images that carry no HU, or map a known stored window back.
    Refused too: a volume of fewer than MIN_SLICES slices, and a spacing outside SPACING_RANGE_MM."""
    image = read_image(path, series)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: expected a 3D single-channel CT volume, got "
                         f"{image.GetDimension()}D with {image.GetNumberOfComponentsPerPixel()} channels.")
    image = _in_hounsfield_units(path, sitk.Cast(image, sitk.sitkFloat32), stored_window)
    if image.GetSize()[2] < MIN_SLICES:
        raise InputError(f"{path}: holds {image.GetSize()[2]} slice(s); a CT volume needs at least {MIN_SLICES} "
                         "(this is a single slice, a scout or an excerpt).")
    low, high = SPACING_RANGE_MM
    if not all(low <= s <= high for s in image.GetSpacing()):
        raise InputError(f"{path}: voxel spacing {tuple(round(s, 4) for s in image.GetSpacing())} mm lies outside "
                         f"the {low:g}-{high:g} mm of a chest CT: its header is damaged or in other units.")
    return image


def _in_hounsfield_units(path: str | Path, image: sitk.Image, stored_window: StoredWindow | None) -> sitk.Image:
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


def write_atomically(path: str | Path, write: Callable[[Path], object],
                     verify: Callable[[Path], None] | None = None) -> Path:
    """`write(tmp)` to a temporary file beside `path` (same ending, so writers that go by it work), checked by
    `verify(tmp)`, flushed to the disk and renamed to `path`: readers never see, and a crash or a full disk
    never leaves, a half-written file. The file gets the permissions the user's umask gives."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{secrets.token_hex(4)}-{path.name}"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))    # 0o666 less the umask
    try:
        write(tmp)
        if verify is not None:
            verify(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_image(image: sitk.Image, path: str | Path) -> Path:
    """An image written whole and read back before it takes its name: SimpleITK reports no write error
    (a full disk leaves a truncated file behind without a word)."""
    path = Path(path)
    if path.suffix.lower() in (".mhd", ".nhdr"):
        raise InputError(f"{path}: write a single-file format (.nii.gz, .nrrd, .mha), not a detached header.")

    def verify(tmp: Path) -> None:
        try:
            back = read_image(tmp)
        except InputError as err:
            raise OSError(f"{path}: the written file does not read back ({err}).") from None
        if back.GetSize() != image.GetSize() or not np.array_equal(sitk.GetArrayViewFromImage(back),
                                                                   sitk.GetArrayViewFromImage(image)):
            raise OSError(f"{path}: the written file does not read back as the image written.")

    def write(tmp: Path) -> None:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=True)
        except RuntimeError as err:
            raise OSError(f"{path}: cannot be written ({_itk_reason(err)}).") from None

    return write_atomically(path, write, verify)


def check_output_file(path: str | Path, inputs: Iterable[str | Path] = (), suffixes=WRITTEN_SUFFIXES,
                      what: str = "output") -> Path:
    """Before any work: refuse an output that is a folder, has an ending no writer here takes, is (or lies
    inside) one of the `inputs`, or lies where the user cannot write."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; the {what} needs a file name ending in {' or '.join(suffixes)}.")
    if not path.name.endswith(tuple(suffixes)) or path.name.startswith("."):    # ITK goes by lower case
        raise InputError(f"{path}: write the {what} as {' or '.join(suffixes)}.")
    for source in inputs:
        if source is not None and _same_or_inside(path, Path(source)):
            raise InputError(f"{path}: is, or lies inside, the input {source}; choose another {what} path.")
    _check_writable(path.parent, path)
    return path


def check_output_folder(path: str | Path, inputs: Iterable[str | Path] = (), what: str = "output") -> Path:
    """Before any work: refuse an output folder that is a file, is or lies inside an input, or cannot be
    written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: is a file, not a folder for the {what}.")
    for source in inputs:
        if source is not None and (_same_or_inside(path, Path(source)) or _same_or_inside(Path(source), path)):
            raise InputError(f"{path}: overlaps the input {source}; choose another folder for the {what}.")
    _check_writable(path, path)
    return path


def _same_or_inside(path: Path, source: Path) -> bool:
    """Whether `path` is `source` (a link to it included) or lies inside it."""
    path, source = path.resolve(), source.resolve()
    return path == source or source in path.parents or (
        path.exists() and source.exists() and os.path.samefile(path, source))


def _check_writable(folder: Path, named: Path) -> None:
    existing = folder.resolve()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{named}: cannot be written: {existing} is not a folder this user may write in.")


def save_array(array: np.ndarray, path: Path) -> None:
    """np.save atomically (the cache is read by other processes while it grows), read back before the rename."""
    def verify(tmp: Path) -> None:
        back = np.load(tmp, mmap_mode="r")
        if back.shape != array.shape or back.dtype != array.dtype:
            raise OSError(f"{path}: the written array does not read back as written.")

    write_atomically(path, lambda tmp: np.save(tmp, array), verify)


def read_document(path: str | Path, what: str):
    """The content of a JSON or YAML file (by its suffix); a missing or unparseable one is refused in one
    sentence naming the file and `what` it should be."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: missing: not {what}.")
    text = path.read_text(encoding="utf-8")
    try:
        return yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}), so not {what}.") from None
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML ({str(err).splitlines()[0]}), so not {what}.") from None


def write_text(path: str | Path, text: str) -> Path:
    """UTF-8 text, read back before it takes its name."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:     # the text's own line ends
            handle.write(text)

    def verify(tmp: Path) -> None:
        with open(tmp, encoding="utf-8", newline="") as handle:
            if handle.read() != text:
                raise OSError(f"{path}: the written file does not read back as the text written.")

    return write_atomically(path, write, verify)


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
