"""Fixtures shared by the segmenter tests of clinical-like inputs (registration, skull, pipeline)."""

from __future__ import annotations

import pytest
import SimpleITK as sitk

from Testing.conftest import REAL_CASE


@pytest.fixture(scope="session")
def brats_2mm() -> dict[str, sitk.Image]:
    """The real BraTS case (skull-stripped, aligned) smoothed and resampled to 2 mm, float32."""
    from MTSSSegmenterLib.registration import working_image

    return {m: working_image(sitk.ReadImage(str(REAL_CASE / f"{REAL_CASE.name}-{m}.nii.gz"), sitk.sitkFloat32), 2.0)
            for m in ("t1n", "t1c", "t2w", "t2f")}
