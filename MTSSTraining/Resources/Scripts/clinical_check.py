#!/usr/bin/env python3
"""Does a model give the same tumour on a clinical acquisition as on the BraTS-preprocessed images?

For each aligned, skull-stripped case (BraTS layout: the real case and/or synthetic test cases), draw
clinical acquisitions with :func:`MTSSTrainingLib.clinical_acquisition.clinical_acquisition`: every series
on its own oblique grid with 4-6 mm slices, moved by a small rigid transform, a bias field, scanner-like
int16 intensities, and (every other draw) a synthetic skull and scalp. Segment the aligned case and each
draw with one ``segment`` call (registration, skull detection and brain extraction as a user gets them),
and compare: whole-tumour volume ratio (the clinical-MRI issue asks for 15 %), whole-tumour Dice in
physical space (the clinical label brought back through the t1c series' known motion), and, where the
case has a label map, each result's Dice against it.

Writes ``clinical_check.json``, ``clinical_check.md`` (a table) and an overlay of one clinical draw.

Usage::

    python MTSSTraining/Resources/Scripts/clinical_check.py --model BUNDLE --out DIR CASE_DIR [CASE_DIR ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MTSSSegmenterLib.io import find_case_files, read_image
from MTSSSegmenterLib.metrics import dice
from MTSSSegmenterLib.overlay import render_overlay
from MTSSSegmenterLib.pipeline import segment
from MTSSSegmenterLib.registration import transform_from_summary
from MTSSTrainingLib.clinical_acquisition import clinical_acquisition, synthetic_head, transform_from_params


def wt_dice(a: sitk.Image, b: sitk.Image) -> float:
    """Whole-tumour Dice of two label maps on one grid."""
    return dice(sitk.GetArrayViewFromImage(a) > 0, sitk.GetArrayViewFromImage(b) > 0)


def registration_errors(found: dict | str | None, params: dict, brain: sitk.Image,
                        reference: str = "t1c") -> dict[str, float]:
    """Worst error (mm) over brain points of each series' registration against the drawn motions.

    The reference series sits at ``T_t(p)``, series ``c`` at ``T_c(p)``, for a point ``p`` of the
    aligned case; the registration reports reference -> series, which should be ``T_c(T_t^-1(q))``.
    """
    if not isinstance(found, dict):
        return {}
    ref = transform_from_params(params["series"][reference])
    arr = sitk.GetArrayViewFromImage(brain) > 0
    idx = np.argwhere(arr)[:: max(1, int(arr.sum()) // 2000)]
    aligned = [brain.TransformIndexToPhysicalPoint([int(i) for i in z[::-1]]) for z in idx]
    points = [ref.TransformPoint(p) for p in aligned]  # the same points in the reference series
    out = {}
    for code, entry in found.items():
        true = transform_from_params(params["series"][code])
        reg = transform_from_summary(entry)
        err = [np.linalg.norm(np.subtract(reg.TransformPoint(q), true.TransformPoint(p)))
               for p, q in zip(aligned, points)]
        out[code] = round(float(max(err)), 2)
    return out


def check_case(folder: Path, model: str, draws: int, seed: int, out: Path, overlay: bool,
               output_spacing: float | None = None, n4: bool | None = None,
               modalities: list[str] | None = None) -> list[dict]:
    """``modalities``: segment only these series (the draws are made from all four, so that a subset sees the
    same acquisitions as the full study)."""
    found, seg_path = find_case_files(folder)
    images = {code: read_image(path, code) for code, path in found.items()}
    use = list(modalities or images)
    missing = [m for m in use if m not in images]
    if missing:
        raise SystemExit(f"{folder.name} has no {', '.join(missing)} series; give --modalities among {list(images)}.")
    truth = sitk.ReadImage(str(seg_path), sitk.sitkUInt8) if seg_path else None
    seg_in = truth if truth is not None else sitk.Image(images["t1c"].GetSize(), sitk.sitkUInt8)
    if truth is None:
        seg_in.CopyInformation(images["t1c"])
    t = time.perf_counter()
    aligned = segment({c: images[c] for c in use}, model=model, device="cpu")
    t_aligned = time.perf_counter() - t
    brain = sitk.Cast(images["t1c"] > 0, sitk.sitkUInt8)
    rows = []
    if not aligned.volumes_ml["WT"]:
        print(f"{folder.name}: the model finds no tumour on the aligned case; the volume ratio is undefined.")
    for k in range(draws):
        rng = np.random.default_rng([seed, k])
        skull = synthetic_head(brain, rng) if k % 2 == 0 else None
        series, _, params = clinical_acquisition(images, seg_in, rng, skull=skull, spacing_range=(4.0, 6.0))
        t = time.perf_counter()
        clin = segment({c: series[c] for c in use}, model=model, device="cpu", output_spacing=output_spacing, n4=n4)
        t_clin = time.perf_counter() - t
        # The clinical label lies on the reference series' grid; bring it back onto the aligned grid through
        # that series' known motion (aligned point p sits at T(p) in the series).
        back = sitk.Resample(clin.label, aligned.label, transform_from_params(params["series"][clin.reference]),
                             sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        v0, v1 = aligned.volumes_ml["WT"], clin.volumes_ml["WT"]
        row = {"case": folder.name, "draw": k, "skull": skull is not None, "modalities": use,
               "slice_mm": {c: p["spacing_mm"][2] for c, p in params["series"].items() if c in use},
               "wt_ml_aligned": round(v0, 2), "wt_ml_clinical": round(v1, 2),
               "volume_ratio": round(v1 / v0, 3) if v0 > 0 else None,
               "wt_dice_physical": round(wt_dice(back, aligned.label), 3),
               "skull_detected": clin.details.get("skull_detected"),
               "registration_worst_error_mm": registration_errors(clin.details.get("registration"), params, brain,
                                                               clin.reference),
               "registration": clin.details.get("registration"),
               "warnings": clin.warnings, "seconds_aligned": round(t_aligned, 2), "seconds_clinical": round(t_clin, 2)}
        if truth is not None:
            row["wt_dice_truth_aligned"] = round(wt_dice(aligned.label, truth), 3)
            row["wt_dice_truth_clinical"] = round(wt_dice(back, truth), 3)
        rows.append(row)
        print(json.dumps({k2: v for k2, v in row.items() if k2 != "registration"}), flush=True)
        if overlay and k == 0:
            ref = series["t2f"] if "t2f" in use else series[clin.reference]
            render_overlay(ref, sitk.Resample(clin.label, ref, sitk.Transform(), sitk.sitkNearestNeighbor),
                           out / f"clinical_{folder.name}.png",
                           f"{folder.name}: clinical draw (skull on, {max(row['slice_mm'].values()):.1f} mm oblique "
                           f"slices, {'+'.join(use)}), segmented by one call")
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| case | draw | skull | slices (mm) | registration worst error (mm) | WT aligned (mL) | WT clinical (mL) "
             "| ratio | WT Dice (physical) | Dice vs truth: aligned / clinical |", "|---" * 10 + "|"]
    for r in rows:
        truth = (f"{r['wt_dice_truth_aligned']:.3f} / {r['wt_dice_truth_clinical']:.3f}"
                 if "wt_dice_truth_aligned" in r else "–")
        sl = "/".join(f"{v:.1f}" for v in r["slice_mm"].values())
        ratio = "–" if r["volume_ratio"] is None else f"{r['volume_ratio']:.3f}"
        reg = "/".join(f"{v:.1f}" for v in r["registration_worst_error_mm"].values()) or "–"
        lines.append(f"| {r['case']} | {r['draw']} | {'on' if r['skull'] else 'off'} | {sl} | {reg} "
                     f"| {r['wt_ml_aligned']:.1f} | {r['wt_ml_clinical']:.1f} | {ratio} | {r['wt_dice_physical']:.3f} "
                     f"| {truth} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cases", nargs="+", type=Path, help="aligned case folders (BraTS 2023 or 2021 names)")
    ap.add_argument("--model", default=None, help="bundle (default: the default student)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--draws", type=int, default=2, help="clinical draws per case (even draws: skull on)")
    ap.add_argument("--seed", type=int, default=8)
    ap.add_argument("--output-spacing", type=float, default=None, metavar="MM",
                    help="segment the clinical draws with `--output-spacing MM` (the label map, and so the volume, "
                         "on an isotropic grid instead of the t1c series' thick slices)")
    ap.add_argument("--n4", action=argparse.BooleanOptionalAction, default=None,
                    help="force N4 bias-field correction of the clinical draws on or off (default: as `mtss "
                         "segment` does, on for the registered series of a clinical draw)")
    ap.add_argument("--modalities", default=None, metavar="CODES",
                    help="segment only these series, comma-separated (e.g. t1c,t2f); default: all the case has")
    args = ap.parse_args(argv)
    modalities = [m.strip() for m in args.modalities.split(",") if m.strip()] if args.modalities else None
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, folder in enumerate(args.cases):
        rows += check_case(folder, args.model, args.draws, args.seed + i, args.out, overlay=i == 0,
                           output_spacing=args.output_spacing, n4=args.n4, modalities=modalities)
    ratios = [r["volume_ratio"] for r in rows if r["volume_ratio"] is not None]
    within = sum(abs(v - 1) <= 0.15 for v in ratios)
    summary = {"draws": len(rows), "within_15_percent": within,
               "median_ratio": float(np.median(ratios)) if ratios else None,
               "median_wt_dice_physical": float(np.median([r["wt_dice_physical"] for r in rows])) if rows else None}
    (args.out / "clinical_check.json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=2))
    md = table(rows) + (f"\n\nWhole-tumour volume within 15 % of the aligned case's in {within} of {len(ratios)} draws "
                        f"(median ratio {summary['median_ratio']:.3f}); median whole-tumour Dice between the two "
                        f"results in physical space {summary['median_wt_dice_physical']:.3f}.\n" if ratios else "\n")
    (args.out / "clinical_check.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
