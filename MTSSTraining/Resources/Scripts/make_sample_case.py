#!/usr/bin/env python3
"""Regenerate the small synthetic sample case shipped in the segmenter's package data.

    python MTSSTraining/Resources/Scripts/make_sample_case.py [--out DIR] [--seed 6] [--spacing 2]

Writes ``MTSS-sample-{t1n,t1c,t2w,t2f,seg}.nii.gz`` (BraTS 2023 suffixes) and ``README.txt`` into
``MTSSSegmenter/MTSSSegmenterLib/data/sample/``: one synthetic adult glioma (GLI) at 2 mm, about 1 MB.
Then ``clinical/``: the same case as a scanner would give it (clinical acquisition draw: skull and scalp on,
each series on its own oblique 5 mm grid, moved by a small head motion, a bias field), about 1 MB, with its
label map on the t1c series' grid and the drawn motions in ``acquisition.json``.
The README demo (``mtss demo [--clinical]``) and the Slicer self-tests read them, so they need neither the
generator nor any download. The same seeds and spacing reproduce the files.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
DEFAULT_OUT = ROOT / "MTSSSegmenter" / "MTSSSegmenterLib" / "data" / "sample"

README = """MTSS sample case - SYNTHETIC, not patient data.

Files: MTSS-sample-{{t1n,t1c,t2w,t2f}}.nii.gz (T1, T1 post-contrast, T2, FLAIR; int16) and
MTSS-sample-seg.nii.gz (uint8 labels: 1 NCR/NETC, 2 ED/SNFH, 3 ET, as in BraTS 2023).
Geometry: the BraTS 240x240x155 mm frame at {spacing:g} mm ({shape}), LPS voxel order, skull stripped.

Made by the MTSS synthetic cohort generator (MTSSTrainingLib.synth): MNI152 2009c anatomy from the nilearn
package, deformed per case, with a simulated {kind} of population {population} (seed {seed}) and simulated
MRI contrasts and acquisition, each image rescaled to a brain median of {median:g}. Label volumes:
{volumes} mm3.

Regenerate with: python MTSSTraining/Resources/Scripts/make_sample_case.py --seed {seed} --spacing {spacing:g}
(needs the training extras: pip install -e '.[training]').
"""


def write_gz(img, path: Path) -> None:
    """Write a NIfTI image gzip-compressed at level 9 with no time stamp, atomically."""
    data = gzip.compress(img.to_bytes(), compresslevel=9, mtime=0)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


CLINICAL_README = """MTSS clinical sample - SYNTHETIC, not patient data.

The MTSS sample case (the folder above) as a scanner would give it, drawn by
MTSSTrainingLib.clinical_acquisition (seed {seed}): skull and scalp painted on, a bias field, scanner-like
int16 intensities, and each series on its own oblique grid with {slice:g} mm slices, moved by a small rigid
head motion. Files: MTSS-clinical-{{t1n,t1c,t2w,t2f}}.nii.gz and MTSS-clinical-seg.nii.gz (the labels on the
t1c series' grid). acquisition.json: each series' grid and motion (aligned case -> series, Euler angles in
radians and translation in mm about a centre), for checking a registration.

{series}
Regenerate with: python MTSSTraining/Resources/Scripts/make_sample_case.py (after the aligned sample).
"""


def write_clinical(sample: Path, seed: int, slice_mm: float) -> int:
    """Draw the clinical version of the aligned sample in ``sample`` into ``sample/clinical``; its size in bytes."""
    import json

    import SimpleITK as sitk

    from MTSSSegmenterLib.io import find_case_files, read_image
    from MTSSTrainingLib.clinical_acquisition import clinical_acquisition, synthetic_head

    found, seg_path = find_case_files(sample)
    images = {code: read_image(path, code) for code, path in found.items()}
    seg = sitk.ReadImage(str(seg_path), sitk.sitkUInt8)
    rng = np.random.default_rng(seed)
    skull = synthetic_head(sitk.Cast(images["t1c"] > 0, sitk.sitkUInt8), rng)
    series, seg_t1c, params = clinical_acquisition(images, seg, rng, skull=skull,
                                                   spacing_range=(slice_mm, slice_mm))
    out = sample / "clinical"
    out.mkdir(exist_ok=True)
    total, lines = 0, []
    for code, image in [*series.items(), ("seg", seg_t1c)]:
        path = out / f"MTSS-clinical-{code}.nii.gz"
        tmp = path.with_name(f".tmp-{path.name}")
        sitk.WriteImage(image, str(tmp), useCompression=True, compressionLevel=9)
        os.replace(tmp, path)
        total += path.stat().st_size
        if code != "seg":
            lines.append(f"{code}: {'x'.join(map(str, image.GetSize()))} voxels of "
                         f"{' x '.join(f'{v:.2f}' for v in image.GetSpacing())} mm")
    (out / "acquisition.json").write_text(json.dumps({"seed": seed, **params}, indent=2) + "\n", encoding="utf-8")
    (out / "README.txt").write_text(CLINICAL_README.format(seed=seed, slice=slice_mm, series="\n".join(lines) + "\n"),
                                    encoding="utf-8")
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--population", default="GLI")
    parser.add_argument("--seed", type=int, default=6, help="case seed (6: a left posterior glioblastoma)")
    parser.add_argument("--spacing", type=float, default=2.0)
    parser.add_argument("--median", type=float, default=300.0, help="brain median intensity of each image")
    parser.add_argument("--clinical-seed", type=int, default=2023, help="seed of the clinical acquisition draw")
    parser.add_argument("--clinical-slice", type=float, default=5.0, help="slice thickness of the clinical series (mm)")
    args = parser.parse_args(argv)

    from MTSSTrainingLib.synth import generate_case
    from MTSSTrainingLib.synth.cohort import nifti_image

    case = generate_case(args.population, args.seed, spacing=args.spacing)
    args.out.mkdir(parents=True, exist_ok=True)
    total = 0
    images = {}
    for code, arr in case.images.items():  # a modest scanner gain keeps the files small (~1 MB)
        brain = arr > 0
        images[code] = np.where(brain, np.maximum(np.rint(arr * (args.median / np.median(arr[brain]))), 1), 0)
    for code, arr in [*images.items(), ("seg", case.seg)]:
        path = args.out / f"MTSS-sample-{code}.nii.gz"
        write_gz(nifti_image(arr, case.affine, "uint8" if code == "seg" else "int16"), path)
        total += path.stat().st_size
    meta = case.meta
    (args.out / "README.txt").write_text(README.format(
        spacing=args.spacing, shape="x".join(str(n) for n in case.seg.shape), kind=meta["lesions"][0]["kind"],
        population=meta["population"], seed=args.seed, median=args.median, volumes=meta["label_volumes_mm3"]), encoding="utf-8")
    print(f"wrote {args.out} ({total / 1e6:.2f} MB): {meta['lesions'][0]['kind']}, {meta['label_volumes_mm3']}")
    size = write_clinical(args.out, args.clinical_seed, args.clinical_slice)
    print(f"wrote {args.out / 'clinical'} ({size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
