#!/usr/bin/env python3
"""Regenerate the small synthetic sample case shipped in the segmenter's package data.

    python MTSSTraining/Resources/Scripts/make_sample_case.py [--out DIR] [--seed 6] [--spacing 2]

Writes ``MTSS-sample-{t1n,t1c,t2w,t2f,seg}.nii.gz`` (BraTS 2023 suffixes) and ``README.txt`` into
``MTSSSegmenter/MTSSSegmenterLib/data/sample/``: one synthetic adult glioma (GLI) at 2 mm, about 1 MB.
The README demo (``mtss demo``) and the Slicer self-test read it, so they need neither the generator
nor any download. The same seed and spacing reproduce the files byte for byte.
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--population", default="GLI")
    parser.add_argument("--seed", type=int, default=6, help="case seed (6: a left posterior glioblastoma)")
    parser.add_argument("--spacing", type=float, default=2.0)
    parser.add_argument("--median", type=float, default=300.0, help="brain median intensity of each image")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
