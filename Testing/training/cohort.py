"""Small synthetic cohorts on disk for the training tests, made once per test process.

Uses the project's generator (:func:`MTSSTrainingLib.synth.case.generate_case`) at coarse spacing and
writes BraTS 2023 case folders (``BraTS-<POP>-NNNNN-000/...-{t1n,t1c,t2w,t2f,seg}.nii.gz``).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from MTSSSegmenterLib.constants import MODALITY_CODES
from MTSSSegmenterLib.io import image_from_nifti_array


def write_case(folder: Path, population: str, seed: int, spacing: float, index: int | None = None) -> Path:
    """Generate one case and write it as a BraTS 2023 case folder under ``folder``."""
    from MTSSTrainingLib.synth.case import generate_case

    case = generate_case(population, seed, spacing=spacing)
    name = f"BraTS-{population}-{seed if index is None else index:05d}-000"
    out = folder / name
    out.mkdir(parents=True, exist_ok=True)
    for code in MODALITY_CODES:
        sitk.WriteImage(image_from_nifti_array(case.images[code], case.affine), str(out / f"{name}-{code}.nii.gz"))
    sitk.WriteImage(image_from_nifti_array(case.seg, case.affine), str(out / f"{name}-seg.nii.gz"))
    return out


@functools.cache
def cohort(populations: tuple[str, ...], per_population: int, spacing: float = 4.0, seed: int = 100) -> Path:
    """A read-only cohort folder (shared by the tests of one process; copy it before modifying)."""
    root = Path(tempfile.mkdtemp(prefix="mtss-cohort-"))
    atexit.register(shutil.rmtree, root, True)
    for pop in populations:
        for i in range(per_population):
            write_case(root, pop, seed + i, spacing)
    return root


def write_fake_case(folder: Path, name: str, seed: int = 0, shape_xyz: tuple[int, int, int] = (36, 40, 32),
                    spacing: float = 4.0, labels: tuple[int, ...] = (1, 2, 3), naming: str = "2023") -> Path:
    """A fast numpy case: an ellipsoid brain with a spherical tumour (edema shell, core, enhancing rim).

    ``labels`` restricts the label map (e.g. ``(2,)`` marks the whole tumour as one label: WT-only data);
    ``naming`` is ``2023`` (``-t1c``) or ``2021`` (``_t1ce``, label 4 for ET).
    """
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape_xyz[::-1]], indexing="ij")
    brain = (x / 0.85) ** 2 + (y / 0.9) ** 2 + (z / 0.8) ** 2 < 1
    c = rng.uniform(-0.35, 0.35, 3)
    r = np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2)
    rad = rng.uniform(0.22, 0.32)
    seg = np.zeros(brain.shape, np.uint8)
    seg[(r < rad * 1.6) & brain] = 2
    seg[(r < rad) & brain] = 3
    seg[(r < rad * 0.6) & brain] = 1
    if labels != (1, 2, 3):
        seg = np.where(seg > 0, labels[0], 0).astype(np.uint8)
    contrast = {"t1n": (100, -20, -40, 10), "t1c": (100, -20, 80, -10), "t2w": (80, 60, 20, 40), "t2f": (90, 90, 40, 50)}
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / name
    out.mkdir(parents=True, exist_ok=True)
    sep = "-" if naming == "2023" else "_"
    codes = {"t1n": "t1n", "t1c": "t1c", "t2w": "t2w", "t2f": "t2f"} if naming == "2023" else \
        {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair"}
    full = np.zeros(brain.shape, np.uint8)
    full[(r < rad * 1.6) & brain] = 2
    full[(r < rad) & brain] = 3
    full[(r < rad * 0.6) & brain] = 1
    for code, (base, ed, et, ncr) in contrast.items():
        arr = np.where(brain, base + 8 * rng.standard_normal(brain.shape), 0).astype(np.float32)
        arr[full == 2] += ed
        arr[full == 3] += et
        arr[full == 1] += ncr
        img = sitk.GetImageFromArray(np.clip(arr, 0, None) * brain)
        img.SetSpacing((spacing,) * 3)
        sitk.WriteImage(img, str(out / f"{name}{sep}{codes[code]}.nii.gz"))
    lab = seg.copy()
    if naming == "2021":
        lab[lab == 3] = 4
    img = sitk.GetImageFromArray(lab)
    img.SetSpacing((spacing,) * 3)
    sitk.WriteImage(img, str(out / f"{name}{sep}seg.nii.gz"))
    return out


def copy_cohort(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def fake_bundle(path: Path, population: str | None = "GLI", role: str = "teacher",
                labelled: tuple[str, ...] = ("WT", "TC", "ET"), spacing: float = 4.0,
                channels: tuple[int, ...] = (8, 16, 32), seed: int = 0,
                dice: dict[str, float] | None = None) -> Path:
    """A bundle with UNTRAINED weights shaped like a teacher's (plumbing tests only)."""
    import torch
    from MTSSSegmenterLib.bundle import default_meta, save_bundle
    from MTSSSegmenterLib.networks import NetworkConfig, build_network

    torch.manual_seed(seed)
    net = build_network(NetworkConfig(channels=channels, deep_supervision=1))
    rows = {p: {"WT": v, "TC": v, "ET": v, "mean": v, "n_cases": 1} for p, v in (dice or {}).items()}
    meta = default_meta(net.config, name=f"untrained-{role}-{population}", role=role,
                        populations=[population] if population else ["GLI", "MET"],
                        training={"labelled_regions": list(labelled)},
                        metrics={"validation": {"populations": rows}} if rows else {})
    meta["preprocessing"]["spacing_mm"] = [spacing] * 3
    meta["inference"]["roi_size"] = [64, 64, 64]
    return save_bundle(net, meta, path)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Torch on one thread in these tests: on shared, busy cores two OpenMP threads spin-wait on each other
    and a training step takes several times longer than on one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
