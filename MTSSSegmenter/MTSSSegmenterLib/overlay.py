"""Pictures of a segmentation: axial, coronal and sagittal slices through the tumour with labels overlaid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .constants import LABELS


def _canonical(image: sitk.Image) -> np.ndarray:
    """(z, y, x) array in LPS orientation, so slices are shown the radiological way round."""
    return sitk.GetArrayFromImage(sitk.DICOMOrient(image, "LPS")).astype(np.float32)


def _label_on(image: sitk.Image, label: sitk.Image | None) -> np.ndarray | None:
    """The label map resampled onto ``image``'s grid, as a (z, y, x) array in LPS orientation (None: None)."""
    if label is None:
        return None
    return sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.Resample(label, image, sitk.Transform(),
                                                                 sitk.sitkNearestNeighbor), "LPS"))


def largest_component_centre(lab: np.ndarray) -> np.ndarray:
    """(z, y, x) index of the centre of the largest 26-connected labelled component of ``lab``."""
    from scipy import ndimage

    comps, n = ndimage.label(lab > 0, structure=np.ones((3, 3, 3)))
    biggest = int(np.argmax(np.bincount(comps.ravel())[1:])) + 1
    return np.round(np.argwhere(comps == biggest).mean(0)).astype(int)


def _figure_setup(image: sitk.Image, label: sitk.Image | None, alpha: float):
    """What both pictures start from: pyplot on a file backend, the image and the label map as LPS arrays, the
    grey window (1st to 99th percentile of the non-background voxels) and a colour map of the labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    img, lab = _canonical(image), _label_on(image, label)
    fg = img > img.min()
    window = tuple(np.percentile(img[fg], [1, 99])) if fg.any() else (0.0, 1.0)
    cmap = ListedColormap([(0, 0, 0, 0)] + [(*lab_.color, alpha) for lab_ in LABELS])
    return plt, img, lab, window, cmap


def _save(plt, fig, path: str | Path, title: str, dpi: int) -> Path:
    if title:
        fig.suptitle(title, color="white", fontsize=10)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, facecolor="black", bbox_inches="tight")
    plt.close(fig)
    return out


def render_overlay(image: sitk.Image, label: sitk.Image | None, path: str | Path, title: str = "",
                   centre_zyx: tuple[int, int, int] | None = None) -> Path:
    """Write a PNG with three orthogonal slices through ``centre_zyx`` (an index of the image in LPS order),
    by default the centre of the label's largest connected component (or the image centre)."""
    plt, img, lab, (lo, hi), cmap = _figure_setup(image, label, alpha=0.55)
    centre = np.array(img.shape) // 2
    if centre_zyx is not None:
        centre = np.clip(np.asarray(centre_zyx, dtype=int), 0, np.array(img.shape) - 1)
    elif lab is not None and lab.any():
        centre = largest_component_centre(lab)
    sp = np.asarray(sitk.DICOMOrient(image, "LPS").GetSpacing())[::-1]  # z, y, x
    views = [
        ("axial", img[centre[0]], None if lab is None else lab[centre[0]], sp[1] / sp[2]),
        ("coronal", img[:, centre[1]][::-1], None if lab is None else lab[:, centre[1]][::-1], sp[0] / sp[2]),
        ("sagittal", img[:, :, centre[2]][::-1], None if lab is None else lab[:, :, centre[2]][::-1], sp[0] / sp[1]),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.8), facecolor="black")
    for ax, (name, sl, ls, aspect) in zip(axes, views):
        ax.imshow(sl, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
        if ls is not None:
            ax.imshow(ls, cmap=cmap, vmin=0, vmax=3, aspect=aspect, interpolation="nearest")
        ax.set_title(name, color="white", fontsize=9)
        ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=lab_.color) for lab_ in LABELS]
    fig.legend(handles, [f"{lab_.value} {lab_.name}" for lab_ in LABELS], loc="lower center", ncol=3,
               frameon=False, labelcolor="white", fontsize=8)
    return _save(plt, fig, path, title, dpi=90)


def render_axial_montage(image: sitk.Image, label: sitk.Image | None, path: str | Path, title: str = "",
                         n: int = 6) -> Path:
    """Write a PNG of ``n`` axial slices evenly spread over the label's extent (or the image's), the image
    above and the image with the labels overlaid below, so that what a segmentation misses is seen too."""
    plt, img, lab, (lo, hi), cmap = _figure_setup(image, label, alpha=0.5)
    rows = np.flatnonzero(lab.any(axis=(1, 2))) if lab is not None and lab.any() else np.arange(img.shape[0])
    slices = np.unique(np.linspace(rows[0], rows[-1], n + 2).round().astype(int)[1:-1])
    sp = np.asarray(sitk.DICOMOrient(image, "LPS").GetSpacing())  # x, y, z
    fig, axes = plt.subplots(2, len(slices), figsize=(1.9 * len(slices), 4.2), facecolor="black", squeeze=False)
    for j, z in enumerate(slices):
        for i in range(2):
            ax = axes[i, j]
            ax.imshow(img[z], cmap="gray", vmin=lo, vmax=hi, aspect=sp[1] / sp[0], interpolation="nearest")
            if i == 1 and lab is not None:
                ax.imshow(lab[z], cmap=cmap, vmin=0, vmax=3, aspect=sp[1] / sp[0], interpolation="nearest")
            ax.axis("off")
        axes[0, j].set_title(f"slice {z}", color="white", fontsize=8)
    return _save(plt, fig, path, title, dpi=80)
