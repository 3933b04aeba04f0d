"""Training targets of a synthetic clinical study from the label map it was drawn from.

A synthetic clinical study (``mtss synth --clinical``) keeps its label map on the grid of the t1c series:
nearest-neighbour samples of the aligned label map, one per voxel of that 2-6 mm oblique grid. The shares
of each working voxel in each region (the soft targets) computed from it describe those thick blocks, not
the tumour: at 5 mm slices a voxel is all tumour or none along the slice axis. The study also keeps the
aligned case it was drawn from (``aligned/``) and the drawn head motion of each series
(``acquisition.json``: the head at point p of the aligned case sits at T(p) in the series). Through the
reference series' motion, the aligned label map gives the true share of every working voxel:
:func:`label_fractions` samples each region's mask on a grid ``factor`` times finer than the working grid
(linear interpolation) and averages each block.

``mtss train-* --aligned-labels`` uses these shares for the studies that carry them; other cases keep the
shares of their own label map.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from MTSSSegmenterLib.errors import InputError
from MTSSSegmenterLib.io import find_case_files, read_labels
from MTSSSegmenterLib.preprocess import PreparedCase, labels_to_regions, working_image_of

from .clinical_acquisition import transform_from_params
from .synth.cohort import ACQUISITION_FILE, ALIGNED_FOLDER


def source_digest() -> str:
    """sha256 of this module's source: a prepared-case cache built with aligned labels is keyed on it."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def _aligned_seg(folder: Path) -> Path | None:
    aligned = Path(folder) / ALIGNED_FOLDER
    try:
        return find_case_files(aligned)[1] if aligned.is_dir() else None
    except InputError:  # no images there
        return None


def source_files(folder: Path) -> list[Path]:
    """The files :func:`aligned_label_source` reads for the study in ``folder`` (none for other cases): a
    prepared-case cache checks them for changes."""
    acquisition = Path(folder) / ACQUISITION_FILE
    if not acquisition.is_file():
        return []
    seg = _aligned_seg(folder)
    return [acquisition] + ([seg] if seg else [])


def aligned_label_source(folder: Path, reference: str) -> tuple[sitk.Image, sitk.Transform] | None:
    """The aligned label map of a synthetic clinical study and the transform from the ``reference`` series'
    physical space into it; None when ``folder`` is not such a study.

    Raises :class:`InputError` when the study says it has one but its files or its motion cannot be used
    (the case is then left out of training with that reason, like any broken case)."""
    acquisition = Path(folder) / ACQUISITION_FILE
    if not acquisition.is_file():
        return None
    try:
        info = json.loads(acquisition.read_text(encoding="utf-8"))
        grid = info["label_grid"]
        entry = info["series"][reference]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{acquisition}: cannot read the motion of the '{reference}' series ({exc}); "
                         "regenerate the study with `mtss synth --clinical` or train without --aligned-labels.") from exc
    if grid != reference:
        raise InputError(f"{acquisition}: the label map lies on the '{grid}' series but the study's reference is "
                         f"'{reference}'; train without --aligned-labels.")
    seg_path = _aligned_seg(folder)
    if seg_path is None:
        raise InputError(f"{acquisition} comes with no aligned label map in {Path(folder) / ALIGNED_FOLDER}; "
                         "regenerate the study with `mtss synth --clinical` or train without --aligned-labels.")
    motion = transform_from_params(entry)  # aligned -> series
    return read_labels(seg_path), motion.GetInverse()


def label_fractions(label: sitk.Image, transform: sitk.Transform, case: PreparedCase, factor: int = 3) -> np.ndarray:
    """(3, Z, Y, X) uint8: the share x 255 of each working voxel of ``case`` in WT, TC and ET of ``label``.

    ``transform`` maps points of the case's physical space into ``label``'s (as ``sitk.Resample`` takes it).
    Each region's mask is sampled by linear interpolation at the centres of a grid ``factor`` times finer
    than the working grid along each axis, and each block of ``factor``³ samples is averaged.
    """
    shape = tuple(int(n) for n in case.image.shape[1:])
    working = working_image_of(np.zeros(shape, dtype=np.float32), case)
    spacing = np.asarray(working.GetSpacing(), dtype=np.float64)
    direction = np.asarray(working.GetDirection(), dtype=np.float64).reshape(3, 3)
    fine_spacing = spacing / factor
    fine = sitk.Image([int(n) * factor for n in working.GetSize()], sitk.sitkFloat32)
    fine.SetSpacing(fine_spacing.tolist())
    fine.SetDirection(working.GetDirection())
    # the first fine voxel centre sits a third of a working voxel (factor 3) before the first working centre
    fine.SetOrigin((np.asarray(working.GetOrigin()) - direction @ ((spacing - fine_spacing) / 2)).tolist())
    regions = labels_to_regions(sitk.GetArrayFromImage(label).astype(np.uint8))
    out = []
    for channel in regions:
        mask = sitk.GetImageFromArray(np.ascontiguousarray(channel, dtype=np.float32))
        mask.CopyInformation(label)
        sampled = sitk.GetArrayFromImage(sitk.Resample(mask, fine, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
        z, y, x = shape
        out.append(sampled.reshape(z, factor, y, factor, x, factor).mean(axis=(1, 3, 5)))
    return (np.clip(np.stack(out), 0.0, 1.0) * 255.0).round().astype(np.uint8)


__all__ = ["aligned_label_source", "label_fractions", "source_digest", "source_files"]
