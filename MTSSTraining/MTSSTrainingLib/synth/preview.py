"""Contact sheets: the four contrasts and the labels of cases, one row per case, as a PNG.

Rows show the axial slice with the largest tumour-core cross-section (or, without labels, the slice with
the most FLAIR-hyperintense voxels) in radiological convention: anterior up, patient's left on the
right, as ITK-SNAP and Slicer show BraTS files. Any case folder renders, synthetic or real. A clinical
study (series on their own grids) is shown resampled onto an axis-aligned grid around its t1c series.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from MTSSSegmenterLib.constants import LABELS, MODALITIES, MODALITY_CODES
from MTSSSegmenterLib.errors import InputError

logger = logging.getLogger(__name__)

MAX_ROWS = 4
"""Most cases on one sheet."""


@dataclass
class PreviewRow:
    """One case to show: images (X, Y, Z) in LPS voxel order, an optional label map, a title."""

    title: str
    images: dict[str, np.ndarray]
    seg: np.ndarray | None = None
    slice_index: int | None = None

    def axial_slice(self) -> int:
        """The slice to show: given, else the largest tumour-core (else tumour) section, else the most
        FLAIR-bright one."""
        if self.slice_index is not None:
            return int(self.slice_index)
        if self.seg is not None and self.seg.any():
            core = (self.seg == 1) | (self.seg == 3)
            return int(np.argmax((core if core.any() else self.seg > 0).sum(axis=(0, 1))))
        ref = self.images.get("t2f", next(iter(self.images.values())))
        brain = ref > 0
        if not brain.any():
            return ref.shape[2] // 2
        bright = ref > np.percentile(ref[brain], 98)
        return int(np.argmax(bright.sum(axis=(0, 1))))


def _window(img: np.ndarray) -> tuple[float, float]:
    vals = img[img > 0]
    if vals.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(vals, [0.5, 99.5])
    return 0.0, float(max(hi, lo + 1e-6))


def render_rows(rows: list[PreviewRow], out_png: str | Path, title: str = "", panel_px: int = 190) -> Path:
    """Write a contact sheet of ``rows`` (four contrasts and a label overlay each) to ``out_png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    if not rows:
        raise InputError("No case to preview.")
    out_png = Path(out_png)
    cols = [m.code for m in MODALITIES] + ["seg"]
    dpi = 100
    size = (len(cols) * panel_px / dpi, len(rows) * (panel_px + 18) / dpi + (0.25 if title else 0.05))
    fig, axes = plt.subplots(len(rows), len(cols), squeeze=False, figsize=size, dpi=dpi)
    cmap = ListedColormap([(0, 0, 0, 0)] + [lab.color + (1.0,) for lab in LABELS])
    for r, row in enumerate(rows):
        z = row.axial_slice()
        for c, code in enumerate(cols):
            ax = axes[r, c]
            ax.set_axis_off()
            if code == "seg":
                base = row.images.get("t2f", next(iter(row.images.values())))
                ax.imshow(base[:, :, z].T, cmap="gray", vmin=_window(base)[0], vmax=_window(base)[1],
                          interpolation="nearest")
                if row.seg is not None:
                    lab = row.seg[:, :, z].T.astype(int)
                    ax.imshow(np.ma.masked_equal(lab, 0), cmap=cmap, vmin=0, vmax=len(LABELS), alpha=0.5,
                              interpolation="nearest")
                    ax.set_title("labels", fontsize=7)
                else:
                    ax.set_title("no labels", fontsize=7)
                continue
            if code not in row.images:
                ax.set_title(f"{code}: missing", fontsize=7)
                continue
            img = row.images[code]
            lo, hi = _window(img)
            ax.imshow(img[:, :, z].T, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_title(f"{row.title} {code}" if c == 0 else code, fontsize=7)
    height = fig.get_figheight()
    top = 1.0 - (0.42 if title else 0.2) / height
    if title:
        fig.text(0.01, 1.0 - 0.06 / height, title, fontsize=8, va="top", ha="left", weight="bold")
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=top, wspace=0.02, hspace=0.22 * 190 / panel_px)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=out_png.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out_png)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out_png


def _to_lps(img) -> np.ndarray:
    """Array of a nibabel image reordered to LPS voxel axes (the BraTS files' order)."""
    import nibabel as nib

    ornt = nib.orientations.axcodes2ornt(("L", "P", "S"))
    trans = nib.orientations.ornt_transform(nib.orientations.io_orientation(img.affine), ornt)
    return np.asarray(nib.orientations.apply_orientation(np.asanyarray(img.dataobj), trans), dtype=np.float32)


def load_case_folder(folder: str | Path, slice_index: int | None = None) -> PreviewRow:
    """Read a BraTS-style case folder (``*-t1n.nii.gz`` ... and optional ``*-seg.nii.gz``)."""
    import nibabel as nib

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"Case folder '{folder}' does not exist.")
    images = {}
    for code in MODALITY_CODES:
        found = sorted(folder.glob(f"*{code}.nii*"))
        if found:
            images[code] = _to_lps(nib.load(str(found[0])))
    if not images:
        raise InputError(f"No '*-t1n/t1c/t2w/t2f.nii.gz' volume in '{folder}'; is it a BraTS case folder?")
    segs = sorted(folder.glob("*seg.nii*"))
    seg = _to_lps(nib.load(str(segs[0]))).astype(np.uint8) if segs else None
    return PreviewRow(folder.name, images, seg, slice_index)


def load_clinical_case_folder(folder: str | Path, slice_index: int | None = None) -> PreviewRow:
    """Read a case folder whose series lie on their own grids, resampled (as they are, head motion and all)
    onto an axis-aligned LPS grid covering the t1c series at its in-plane spacing."""
    import SimpleITK as sitk

    from MTSSSegmenterLib.io import find_case_files

    files, seg_path = find_case_files(folder)
    ref_image = sitk.ReadImage(str(files.get("t1c", next(iter(files.values())))))
    extent = np.asarray(ref_image.GetSize()) - 1
    corners = np.array([ref_image.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner * extent])
                        for corner in np.array(list(np.ndindex(2, 2, 2)))])
    step = float(min(ref_image.GetSpacing()))
    lo, hi = corners.min(0), corners.max(0)
    ref = sitk.Image([int(n) for n in np.ceil((hi - lo) / step).astype(int) + 1], sitk.sitkFloat32)
    ref.SetSpacing([step] * 3)
    ref.SetOrigin(lo.tolist())

    def xyz(image: sitk.Image, interpolator: int) -> np.ndarray:
        out = sitk.Resample(image, ref, sitk.Transform(), interpolator, 0.0, sitk.sitkFloat32)
        return np.transpose(sitk.GetArrayFromImage(out), (2, 1, 0))

    images = {code: xyz(sitk.ReadImage(str(path)), sitk.sitkLinear) for code, path in files.items()}
    seg = xyz(sitk.ReadImage(str(seg_path)), sitk.sitkNearestNeighbor).astype(np.uint8) if seg_path else None
    return PreviewRow(f"{Path(folder).name} (clinical)", images, seg, slice_index)


def render_case_folder(folder: str | Path, out_png: str | Path, slice_index: int | None = None,
                       title: str = "") -> Path:
    """Contact sheet of one case folder (synthetic or real) in the same layout as the cohort sheets."""
    row = load_case_folder(folder, slice_index)
    return render_rows([row], out_png, title or f"{row.title} (axial slice {row.axial_slice()})")


def cohort_sheets(out_dir: str | Path, cases: list[dict], max_rows: int = MAX_ROWS) -> list[Path]:
    """One sheet per population, ``OUT_DIR/preview_<POP>.png``, from the cohort's case entries."""
    out_dir = Path(out_dir)
    by_pop: dict[str, list[dict]] = {}
    for entry in cases:
        by_pop.setdefault(entry["population"], []).append(entry)
    written = []
    for pop, entries in by_pop.items():
        rows = [(load_clinical_case_folder if "acquisition" in e else load_case_folder)(out_dir / e["case"])
                for e in entries[:max_rows]]
        written.append(render_rows(rows, out_dir / f"preview_{pop}.png", f"synthetic {pop}"))
        logger.info("preview written: %s", written[-1])
    return written
