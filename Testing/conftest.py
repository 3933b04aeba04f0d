"""Shared fixtures: small volumes made with numpy and a tiny bundle with UNTRAINED weights.

Tests using ``tiny_bundle`` check plumbing (geometry, files, messages), never segmentation quality.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REAL_CASE = Path(__file__).resolve().parents[2] / "shared" / "real" / "BraTS-GLI-00001-000"


@pytest.fixture(autouse=True)
def _isolated_mtss_home(tmp_path_factory, monkeypatch):
    """Never read or write the user's ~/.mtss in tests."""
    monkeypatch.setenv("MTSS_HOME", str(tmp_path_factory.mktemp("mtss_home")))


def make_volume(shape_xyz=(40, 44, 36), spacing=(3.0, 3.0, 3.0), seed=0, tumour=True,
                direction=None, origin=(10.0, -20.0, 5.0)) -> sitk.Image:
    """A head-like ellipsoid with texture and a brighter spherical 'lesion'."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape_xyz[::-1]], indexing="ij")
    brain = (x / 0.85) ** 2 + (y / 0.9) ** 2 + (z / 0.8) ** 2 < 1
    arr = np.where(brain, 100 + 10 * rng.standard_normal(brain.shape), 0).astype(np.float32)
    if tumour:
        les = (x - 0.3) ** 2 + (y + 0.2) ** 2 + z ** 2 < 0.1
        arr[les & brain] += 80
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(tuple(np.asarray(direction, dtype=float).flatten()))
    return img


@pytest.fixture
def small_case(tmp_path) -> Path:
    """A BraTS 2023-named case folder of four small volumes on one grid."""
    case = tmp_path / "BraTS-GLI-99999-000"
    case.mkdir()
    for i, code in enumerate(("t1n", "t1c", "t2w", "t2f")):
        sitk.WriteImage(make_volume(seed=i), str(case / f"{case.name}-{code}.nii.gz"))
    return case


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A bundle with untrained weights (plumbing tests only), working at 4 mm."""
    import torch

    from MTSSSegmenterLib.bundle import default_meta, save_bundle
    from MTSSSegmenterLib.networks import NetworkConfig, build_network

    torch.manual_seed(0)
    net = build_network(NetworkConfig(channels=(4, 8, 16), deep_supervision=1))
    meta = default_meta(net.config, name="tiny-untrained", description="UNTRAINED weights for plumbing tests")
    meta["preprocessing"]["spacing_mm"] = [4.0, 4.0, 4.0]
    meta["inference"]["roi_size"] = [64, 64, 64]
    return save_bundle(net, meta, tmp_path_factory.mktemp("bundles") / "tiny")


def real_case_available() -> bool:
    return (REAL_CASE / "BraTS-GLI-00001-000-t1c.nii.gz").is_file()


requires_real = pytest.mark.skipif(not real_case_available() and not os.environ.get("CI"),
                                   reason="../shared/real is not beside the checkout")
