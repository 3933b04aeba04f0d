"""Pictures of a segmentation: the labels are drawn where they are, and only there."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from MTSSSegmenterLib.overlay import render_axial_montage, render_overlay


def _case() -> tuple[sitk.Image, sitk.Image]:
    rng = np.random.default_rng(0)
    arr = (rng.random((30, 40, 40)) * 50 + 100).astype(np.float32)
    lab = np.zeros(arr.shape, np.uint8)
    lab[10:20, 15:25, 22:32] = 2
    lab[13:17, 18:22, 25:29] = 3
    img, seg = sitk.GetImageFromArray(arr), sitk.GetImageFromArray(lab)
    for im in (img, seg):
        im.SetSpacing((1.0, 1.0, 2.0))
    return img, seg


def _coloured(rgb: np.ndarray) -> np.ndarray:
    """Pixels that are clearly not grey (the image is drawn in grey, labels in colour)."""
    return (rgb.max(-1) - rgb.min(-1)) > 0.2


def test_axial_montage_draws_the_labels_below_the_plain_slices(tmp_path):
    import matplotlib.image as mpimg

    img, seg = _case()
    out = render_axial_montage(img, seg, tmp_path / "m.png", n=4)
    rgb = mpimg.imread(out)[..., :3]
    half = rgb.shape[0] // 2
    assert _coloured(rgb[:half]).sum() == 0  # the top row is the image alone
    assert _coloured(rgb[half:]).sum() > 100  # the bottom row shows the labels
    plain = mpimg.imread(render_axial_montage(img, None, tmp_path / "plain.png", n=4))[..., :3]
    assert _coloured(plain).sum() == 0


def test_orthogonal_overlay_is_centred_on_the_tumour(tmp_path):
    import matplotlib.image as mpimg

    img, seg = _case()
    centred = mpimg.imread(render_overlay(img, seg, tmp_path / "o.png"))[..., :3]
    # a centre far from the labelled block shows no label in any of the three views
    away = mpimg.imread(render_overlay(img, seg, tmp_path / "away.png", centre_zyx=(2, 2, 2)))[..., :3]
    legend_free = slice(0, int(centred.shape[0] * 0.8))  # the colour legend sits at the bottom
    assert _coloured(centred[legend_free]).sum() > 100
    assert _coloured(away[legend_free]).sum() == 0
