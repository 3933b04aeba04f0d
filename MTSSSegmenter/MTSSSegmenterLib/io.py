"""Reading and writing volumes (NIfTI, NRRD, MHA) and finding the files of a BraTS case folder.

BraTS 2023 naming: ``<case>-t1n.nii.gz``, ``-t1c``, ``-t2w``, ``-t2f``, ``-seg``. BraTS 2018-2022 naming:
``<case>_t1.nii.gz``, ``_t1ce``, ``_t2``, ``_flair``, ``_seg`` (label 4 = ET, converted to 3 on read).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .constants import BRATS2021_LABEL_MAP, MODALITIES
from .errors import InputError, OutputError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in IMAGE_SUFFIXES:
        if name.endswith(s):
            return s
    return ""


def read_image(path: str | Path, what: str | None = None) -> sitk.Image:
    """Read a 3-D scalar volume. ``what`` names it in error messages (e.g. the modality)."""
    p = Path(path)
    label = f"{what} " if what else ""
    if not p.exists():
        raise InputError(f"The {label}file '{p}' does not exist. Check the path.")
    if p.is_dir():
        raise InputError(f"The {label}path '{p}' is a folder; give an image file (.nii.gz, .nrrd, .mha).")
    if not _suffix(p):
        raise InputError(f"The {label}file '{p}' is not a NIfTI, NRRD or MHA file (by its name); "
                         f"supported: {', '.join(IMAGE_SUFFIXES)}.")
    try:
        image = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else "unreadable"
        raise InputError(f"Cannot read the {label}file '{p}': {first}. Is it a complete image file?") from exc
    return check_volume(image, what or p.name)


def check_volume(image: sitk.Image, what: str) -> sitk.Image:
    """A 3-D scalar volume with finite values, or a clear :class:`InputError`."""
    size = image.GetSize()
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"Volume '{what}' has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                         "a scalar (grey-level) volume is needed.")
    if image.GetDimension() == 4 and size[3] == 1:
        image = image[:, :, :, 0]
        size = image.GetSize()
    if image.GetDimension() != 3:
        shape = "x".join(map(str, size))
        raise InputError(f"Volume '{what}' is {image.GetDimension()}-D ({shape}); a 3-D volume is needed.")
    if min(size) < 2:
        raise InputError(f"Volume '{what}' is 2-D ({'x'.join(map(str, size))}); a 3-D volume is needed.")
    return image


def find_case_files(folder: str | Path) -> tuple[dict[str, Path], Path | None]:
    """The modality files (and label file, if any) of a case folder, in BraTS 2023 or 2021 naming.

    Returns ``({modality code: path}, seg_path_or_None)``.
    """
    d = Path(folder)
    if not d.is_dir():
        raise InputError(f"The case folder '{d}' does not exist or is not a folder.")
    found: dict[str, Path] = {}
    seg: Path | None = None
    suffix_re = "|".join(re.escape(s) for s in IMAGE_SUFFIXES)
    pattern = re.compile(rf"^(?P<case>.+?)[-_](?P<key>[A-Za-z0-9]+)(?P<ext>{suffix_re})$", re.IGNORECASE)
    names = {}
    for m in MODALITIES:
        names[m.code] = m.code
        names[m.brats2021] = m.code
    for f in sorted(d.iterdir()):
        match = pattern.match(f.name)
        if not match or not f.is_file():
            continue
        key = match.group("key").lower()
        if key == "seg":
            seg = f
        elif key in names:
            code = names[key]
            if code in found:
                raise InputError(f"Case folder '{d}' holds two files for {code}: '{found[code].name}' and "
                                 f"'{f.name}'. Keep one.")
            found[code] = f
    if not found:
        listing = ", ".join(sorted(p.name for p in d.iterdir())[:8]) or "nothing"
        raise InputError(
            f"No MRI volumes found in '{d}' (it holds {listing}). Expected BraTS 2023 names "
            "'<case>-t1n.nii.gz', '-t1c', '-t2w', '-t2f' or BraTS 2021 names '<case>_t1.nii.gz', '_t1ce', '_t2', '_flair'."
        )
    return found, seg


def read_labels(path: str | Path) -> sitk.Image:
    """Read a BraTS label map as uint8 with BraTS 2023 values (4 -> 3 for BraTS 2018-2022 files)."""
    image = read_image(path, "label map")
    arr = sitk.GetArrayViewFromImage(image)
    values = set(np.unique(arr).astype(int).tolist())
    if 4 in values:
        if 3 in values:
            raise InputError(f"Label map '{path}' uses both 3 and 4; expected BraTS 2023 (1,2,3) or 2021 (1,2,4).")
        lut = np.zeros(5, dtype=np.uint8)
        for old, new in BRATS2021_LABEL_MAP.items():
            lut[old] = new
        converted = sitk.GetImageFromArray(lut[np.asarray(arr, dtype=np.int64)])
        converted.CopyInformation(image)
        return converted
    if not values <= {0, 1, 2, 3}:
        raise InputError(f"Label map '{path}' has values {sorted(values)}; BraTS labels are 0, 1, 2, 3 (or 4 for ET).")
    return sitk.Cast(image, sitk.sitkUInt8)


def _read_umask() -> int:
    """The process umask (read once: setting it to read it is not thread-safe later on)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def new_file_mode() -> int:
    """Permissions a plain ``open(path, "w")`` would give (``mkstemp`` makes its files 0600)."""
    return 0o666 & ~_UMASK


def write_image(image: sitk.Image, path: str | Path, compress: bool = True) -> Path:
    """Write atomically: to a temporary file beside the target, then rename."""
    p = Path(path)
    if not _suffix(p):
        raise OutputError(f"Output '{p}' needs an image suffix ({', '.join(IMAGE_SUFFIXES)}).")
    parent = p.parent if str(p.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{p.name}.", suffix=_suffix(p))
        os.close(fd)
    except OSError as exc:
        raise OutputError(f"Cannot write to '{parent}': {exc.strerror or exc}. Choose a writable output folder.") from exc
    try:
        sitk.WriteImage(image, tmp, compress)
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, p)
    except (RuntimeError, OSError) as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise OutputError(f"Cannot write '{p}': {exc}") from exc
    return p


def image_from_nifti_array(array_xyz: np.ndarray, affine_ras: np.ndarray) -> sitk.Image:
    """A SimpleITK image from a NIfTI-style array (x, y, z voxel order) and its RAS affine."""
    affine = np.asarray(affine_ras, dtype=np.float64)
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array_xyz, (2, 1, 0))))
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps / spacing).flatten().tolist())
    image.SetOrigin((np.diag([-1.0, -1.0, 1.0]) @ affine[:3, 3]).tolist())
    return image
