#!/usr/bin/env python3
"""Write the default bundle's ``report.md`` from a finished ``train_default.py`` work folder.

It reads the evaluation reports (all models with four inputs; the student with FLAIR+T1c, T1c and FLAIR),
segments the real case ``../shared/real/BraTS-GLI-00001-000`` with the shipped model and draws it, checks the
targets of the default-model issue, and writes everything beside the bundle (``report.md``, PNG charts,
``real_case_overlay.png``), plus a one-line metrics summary into the bundle's ``model.json``.

Usage::

    python MTSSTraining/Resources/Scripts/default_report.py --work DIR --bundle MTSSSegmenter/MTSSSegmenterLib/data/default
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

POPULATIONS = ("GLI", "PED", "SSA", "MEN", "MET")
REGIONS = ("WT", "TC", "ET")
REAL = Path(__file__).resolve().parents[3].parent / "shared" / "real" / "BraTS-GLI-00001-000"


def mean(summary: dict, model: str, pop: str | None, region: str, key: str = "dice") -> float | None:
    s = summary.get(model)
    if s is None:
        return None
    block = s["macro"] if pop is None else s["populations"].get(pop)
    if not block or region not in block:
        return None
    v = block[region][key]
    return v["mean"] if isinstance(v, dict) else v


def fmt(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def flair_lesion(flair: np.ndarray, brain: np.ndarray, z: float = 1.5) -> np.ndarray:
    """A crude reference for an unlabelled case: the largest connected region of FLAIR brighter than the brain's
    mean by ``z`` standard deviations (after one opening). It is the FLAIR-hyperintense tumour and edema, not
    a necrotic core dark on FLAIR, so a good segmentation covers nearly all of it and extends a little beyond."""
    from scipy import ndimage

    v = flair[brain]
    bright = ndimage.binary_opening((flair > v.mean() + z * v.std()) & brain)
    comps, n = ndimage.label(bright)
    if not n:
        return bright
    return comps == int(np.argmax(np.bincount(comps.ravel())[1:])) + 1


def coverage(seg: np.ndarray, reference: np.ndarray, spacing_zyx: np.ndarray, margin_mm: float = 10.0) -> tuple[float, float]:
    """(percent of ``reference`` inside ``seg``, mL of ``seg`` farther than ``margin_mm`` from ``reference``)."""
    from scipy import ndimage

    far = ndimage.distance_transform_edt(~reference, sampling=spacing_zyx) > margin_mm
    return (100.0 * (seg & reference).sum() / max(int(reference.sum()), 1),
            float((seg & far).sum() * np.prod(spacing_zyx) / 1000.0))


def real_case(student: Path, out_png: Path) -> list[str]:
    """Segment the real case with the shipped model; describe where the tumour was found."""
    import SimpleITK as sitk
    from scipy import ndimage

    from MTSSSegmenterLib.overlay import render_axial_montage, render_overlay
    from MTSSSegmenterLib.pipeline import segment_folder

    out_png.with_name(out_png.stem + "_2.png").unlink(missing_ok=True)  # a previous model's second component
    if not REAL.is_dir():
        return [f"The real case was not found at {REAL}; skipped."]
    r = segment_folder(REAL, model=str(student), device="cpu")
    flair = sitk.ReadImage(str(REAL / "BraTS-GLI-00001-000-t2f.nii.gz"))
    lab = sitk.DICOMOrient(r.label, "LPS")
    arr = sitk.GetArrayFromImage(lab) > 0  # z, y, x in LPS
    comps, n = ndimage.label(arr, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(comps.ravel())[1:] * np.prod(lab.GetSpacing()) / 1000.0
    lines = [f"Whole tumour found: {r.volumes_ml['WT']:.1f} mL in {n} connected component(s) "
             f"(NCR {r.volumes_ml['NCR']:.1f}, ED {r.volumes_ml['ED']:.1f}, ET {r.volumes_ml['ET']:.1f} mL); "
             f"network {r.timings_s['network']:.2f} s, total {r.timings_s['total']:.2f} s on the CPU."]
    flair_lps = sitk.GetArrayFromImage(sitk.DICOMOrient(flair, "LPS")).astype(np.float32)
    reference = flair_lesion(flair_lps, flair_lps > 0)
    sp_zyx = np.asarray(lab.GetSpacing())[::-1]
    covered, far = coverage(arr, reference, sp_zyx)
    lines.append(f"Against a crude reference, the FLAIR-hyperintense lesion (largest region of FLAIR > brain mean + "
                 f"1.5 SD, {reference.sum() * np.prod(sp_zyx) / 1000:.1f} mL; tumour and edema, not a necrotic "
                 f"core dark on FLAIR), the model covers **{covered:.0f} %** of it and marks **{far:.1f} mL** more "
                 "than 10 mm away from it.")
    render_axial_montage(flair, r.label, out_png.with_name(out_png.stem + "_axial.png"),
                         "Real BraTS-GLI-00001-000 (FLAIR): axial slices through the segmentation")
    if n:
        order = np.argsort(sizes)[::-1]
        big = order[0] + 1
        zyx = np.argwhere(comps == big).mean(0)
        render_overlay(flair, r.label, out_png, "Real BraTS-GLI-00001-000 (FLAIR) segmented by the default "
                       "model: largest component", centre_zyx=tuple(np.round(zyx).astype(int)))
        centre = np.argwhere(flair_lps > 0).mean(0)
        d = (zyx - centre) * sp_zyx  # mm, LPS axes: +x left, +y posterior, +z superior
        side = "left" if d[2] > 0 else "right"
        ap = "posterior" if d[1] > 0 else "anterior"
        third = int(zyx[0] / arr.shape[0] * 3) + 1
        lines.append(f"Largest component: {sizes[big - 1]:.1f} mL, centred {abs(d[2]):.0f} mm to the {side}, "
                     f"{abs(d[1]):.0f} mm {ap} of the brain centre, in third {third} of 3 of the axial slices "
                     "(the visible tumour is a large left posterior glioma around the occipital horn, in the "
                     "middle third).")
        if n > 1:  # the second largest component too, so that both are seen
            second = np.round(np.argwhere(comps == order[1] + 1).mean(0)).astype(int)
            render_overlay(flair, r.label, out_png.with_name(out_png.stem + "_2.png"),
                           "Real BraTS-GLI-00001-000: second largest component", centre_zyx=tuple(second))
        others = sorted((float(sizes[i]) for i in order[1:]), reverse=True)
        lines.append("Other components: " + (", ".join(f"{v:.2f}" for v in others[:8]) + " mL"
                                               if others else "none") + ".")
    else:
        render_overlay(flair, r.label, out_png, "Real BraTS-GLI-00001-000 (FLAIR): no tumour found")
    return lines


def clinical_cohort(training: dict) -> str:
    """Words on the clinical studies among a run's training data (from their folders' cohort.json), or ''."""
    n = 0
    for folder in training.get("data", []):
        cohort = Path(folder) / "cohort.json"
        if cohort.is_file():
            doc = json.loads(cohort.read_text())
            n += sum(1 for c in doc.get("cases", []) if c.get("acquisition"))
    if not n:
        return ""
    return (f", and train on {n} synthetic clinical studies beside the aligned cases (`mtss synth --clinical`: "
            "each series on its own 2-6 mm oblique grid, head motion, bias field, skull on about half), prepared "
            "through registration and brain extraction as `mtss segment` prepares them")


def soft_targets_line(runs: Path) -> str:
    """Which runs trained on soft targets (region shares of each working voxel), from their run.json."""
    soft = [r.name for r in sorted(runs.iterdir()) if (r / "run.json").is_file()
            and json.loads((r / "run.json").read_text()).get("augment", {}).get("soft_targets")]
    if not soft:
        return ""
    return (" Trained on soft targets (`--soft-targets`, the share of each working voxel in each region; the "
            f"others on nearest-neighbour labels): {', '.join(soft)}.")


def subset_label(sub: str) -> str:
    """A report folder's input subset as readers name it: ``t1c+t2f`` -> ``T1c+FLAIR``."""
    return sub.replace("t1c", "T1c").replace("t2f", "FLAIR")


def shipped_lines(w: Path, run: str, key: str, student: str | None, summary: dict) -> list[str]:
    """Which model is installed when it is not the distilled student, and its figures beside the student's."""
    L = ["## The shipped model", "",
         f"The bundle installed as the default is **{run}**, not the distilled student: on the validation cases "
         "and on this test cohort it scored higher (below). The student's figures are kept in every section that "
         "follows, which evaluates the recipe.", "",
         "| inputs | model | WT | TC | ET |", "|---|---|---|---|---|",
         f"| all four | {run} | " + " | ".join(fmt(mean(summary, key, None, r)) for r in REGIONS) + " |",
         "| all four | student | " + " | ".join(fmt(mean(summary, student, None, r)) for r in REGIONS) + " |"]
    for sub in ("t1c+t2f", "t1c", "t2f"):
        for name, folder in ((run, f"{run}-{sub}"), ("student", sub)):
            f = w / "reports" / folder / "report.json"
            if f.is_file():
                r = json.loads(f.read_text())["summary"]
                L.append(f"| {subset_label(sub)} | {name} | " + " | ".join(fmt(mean(r, next(iter(r)), None, g)) for g in REGIONS)
                         + " |")
    return L + [""]


def steps_chain(run: Path) -> list[tuple[str, int]]:
    """``[(run name, steps)]`` from the first run to ``run``, following each bundle's ``init`` (fine-tuning)."""
    chain: list[tuple[str, int]] = []
    seen: set[Path] = set()
    current: Path | None = run
    while current is not None and (current / "model.json").is_file() and current.resolve() not in seen:
        seen.add(current.resolve())
        tr = json.loads((current / "model.json").read_text())["training"]
        chain.insert(0, (current.name, tr.get("steps_trained") or tr["epochs"] * tr["steps_per_epoch"]))
        current = Path(tr["init"]) if tr.get("init") else None
    return chain


def recipe_lines(w: Path, rep: dict, timings: dict) -> list[str]:
    """What was trained, where and how long, read from the run folders' bundles."""
    runs = w / "runs"
    meta = json.loads((runs / "student" / "model.json").read_text())
    t = meta["training"]
    teacher = json.loads((runs / "teacher-GLI" / "model.json").read_text())
    student_ch, teacher_ch = meta["network"]["channels"], teacher["network"]["channels"]
    steps = {}
    for run in ("teacher-GLI", "joint", "student", "joint-continued"):
        chain = steps_chain(runs / run)
        if chain:  # a run fine-tuned from others counts their steps too: "1000 + 150 + 300"
            steps[run] = " + ".join(str(n) for _, n in chain) if len(chain) > 1 else str(chain[0][1])
    start = Path(t["init"]).name if t.get("init") else None
    start_text = ("the joint baseline's weights" if start == "joint" else
                  f"the weights of *{start}* ({' → '.join(name for name, _ in steps_chain(Path(t['init'])))})"
                  if start else "scratch")
    gpu = str(t.get("device", "")).startswith("cuda")
    teacher_chain = [name for name, _ in steps_chain(runs / "teacher-GLI")][:-1]  # the runs it was fine-tuned from
    teacher_start = (", each fine-tuned on its population from *" + "* → *".join(teacher_chain) + "*"
                     if teacher_chain else ", each trained from scratch on its population")
    L = ["**Trained on synthetic data only** (`mtss synth`, MNI152 anatomy with simulated tumours), on "
         f"{'an NVIDIA GPU' if gpu else 'a 2-core CPU'}, at {meta['preprocessing']['spacing_mm'][0]:g} mm working "
         f"spacing, with patches of {t['patch'][0]}³ in batches of {t['batch']}"
         + (f", {'bf16' if t.get('amp') else 'fp32'}" if gpu else "") + ". Steps trained: "
         + ", ".join(f"{k} {v}" for k, v in steps.items()) + ". It is not a clinically validated model, and "
         "every Dice below is measured on held-out *synthetic* cases.", ""]
    L += [f"Recipe (`train_default.py`): five population teachers (ResUNet {teacher_ch[0]}→{teacher_ch[-1]} channels"
          + teacher_start + "); the joint baseline is the student's network "
          f"({student_ch[0]}→{student_ch[-1]}) trained on all populations without distillation; the student is the "
          f"same network distilled from the five teachers with the KD terms {', '.join(t.get('kd') or [])}, "
          f"starting from {start_text}, and *joint continued* is the same starting point "
          "trained for the same extra time without teachers (the fair comparison). The joint baselines and the "
          "student draw clinical degradations (thick slices, bias fields) on 30 % of their series"
          + clinical_cohort(t) + "." + soft_targets_line(runs), ""]
    L += [f"Test cohort: {rep['n_cases']} synthetic cases (seed 2000, never seen in training). Wall-clock seconds "
          f"of each step of the recipe: `{json.dumps(timings)}`.", ""]
    return L


def threshold_lines(rep: dict, summary: dict, before: dict | None) -> list[str]:
    """Each model's decision thresholds (chosen on its validation cases) and, given the evaluation of the
    same models at 0.5 (``--uncalibrated``), the test cohort's macro Dice before and after."""
    from MTSSSegmenterLib.bundle import region_thresholds

    L = ["", "## Decision thresholds (chosen on each run's validation cases)", "",
         "Each region's threshold was chosen on the run's own validation cases (never the test cohort; "
         "`mtss calibrate`, done by training itself since 2026-11-23): WT first, then TC given WT, then ET, "
         "kept when it raises the validation macro Dice by at least 0.005. The ensemble keeps 0.5. Runs marked "
         "mirrored segment with test-time mirroring (`--mirror`), and their thresholds were chosen for it.", "",
         "| run | WT / TC / ET threshold | validation cases | test macro Dice WT / TC / ET at 0.5 | at these thresholds |",
         "|---|---|---|---|---|"]
    for key, m in rep["models"].items():
        if m.get("role") == "ensemble" or not m.get("source"):
            continue
        f = Path(m["source"]) / "model.json"
        if not f.is_file():
            continue
        meta = json.loads(f.read_text())
        t = region_thresholds(meta)
        n = (meta.get("metrics", {}).get("calibration") or {}).get("n_cases", "–")
        old = " / ".join(fmt(mean(before, key, None, r)) for r in REGIONS) if before and key in before else "–"
        new = " / ".join(fmt(mean(summary, key, None, r)) for r in REGIONS)
        mirror = (meta.get("inference") or {}).get("mirror")
        run = Path(m["source"]).name + (f" (mirrored {'+'.join(mirror)})" if mirror else "")
        L.append(f"| {run} | {' / '.join(f'{v:g}' for v in t)} | {n} | {old} | {new} |")
    return L


def subset_threshold_lines(meta: dict) -> list[str]:
    """The shipped model's own thresholds per input subset, with the validation Dice they were chosen on."""
    own = ((meta.get("metrics") or {}).get("calibration") or {}).get("subsets") or {}
    if not own:
        return []
    L = ["", "### Thresholds per input subset (shipped model)", "",
         "Chosen the same way on the validation cases segmented with only those inputs; the pipeline applies "
         "the set matching the inputs it is given.", "",
         "| inputs | WT / TC / ET threshold | validation macro Dice WT / TC / ET at 0.5 | at these thresholds |",
         "|---|---|---|---|"]
    for key, c in own.items():
        half = " / ".join(fmt(c["dice_at_0.5"].get(r)) for r in REGIONS)
        chosen = " / ".join(fmt(c["dice"].get(r)) for r in REGIONS)
        L.append(f"| {key.replace(',', '+')} | {' / '.join(f'{v:g}' for v in c['threshold'])} | {half} | {chosen} |")
    return L


def thick_slice_lines(meta: dict) -> list[str]:
    """The shipped model's thresholds for thick slices, with the clinical studies' Dice they were chosen on."""
    found = (meta.get("metrics") or {}).get("thick_slice_calibration")
    if not found:
        return []
    L = ["", f"### Thresholds for series with slices of {found['min_slice_mm']:g} mm or more (shipped model)", "",
         f"Chosen by `mtss calibrate-thick-slices` on {found['n_cases']} clinical studies that no run trained on "
         "(`mtss synth --clinical`, their own seed; N4, registration and brain extraction as `mtss segment` "
         "does them), each set starting from the ordinary thresholds for the same inputs"
         + (": of the thresholds within 0.005 of the best macro Dice, the one whose volumes (voxels summed over "
            "each population's studies) are least biased against the label maps" if found.get("volume_ties")
            else ", moving only for a gain of at least 0.005 macro Dice")
         + ". The pipeline uses them when the thickest input series has voxels that large.", "",
         "| inputs | WT / TC / ET threshold | clinical macro Dice WT / TC / ET at the ordinary thresholds | "
         "at these thresholds |", "|---|---|---|---|"]
    rows = [("all four", found)] + [(k.replace(",", "+"), c) for k, c in (found.get("subsets") or {}).items()]
    for key, c in rows:
        start = " / ".join(fmt(c["dice_at_start"].get(r)) for r in REGIONS)
        chosen = " / ".join(fmt(c["dice"].get(r)) for r in REGIONS)
        L.append(f"| {key} | {' / '.join(f'{v:g}' for v in c['threshold'])} | {start} | {chosen} |")
    return L


def component_lines(meta: dict) -> list[str]:
    """The shipped model's minimum component sizes, with the validation search they were chosen on."""
    found = (meta.get("metrics") or {}).get("component_calibration")
    if not found:
        return []
    sizes = " / ".join(f"{v:g}" for v in found["min_component_ml"])
    L = ["", "### Minimum component sizes (shipped model)", "",
         f"Chosen by `mtss calibrate-components` on {found['n_cases']} labelled cases that no run trained on: "
         "WT, then TC, then ET, the size with the best macro lesion-wise Dice that costs at most "
         f"{found['max_dice_loss']:g} macro Dice, kept only for a gain of {found['min_gain']:g} or more. Chosen "
         f"WT / TC / ET: **{sizes} mL** (a whole-tumour component below its size is erased, a core one becomes "
         "edema, an enhancing one necrosis). Macro lesion-wise Dice / Dice per candidate size:", "",
         "| region | " + " | ".join(f"{c:g} mL" for c in found["candidates"]) + " |",
         "|---" * (len(found["candidates"]) + 1) + "|"]
    for region in REGIONS:
        L.append(f"| {region} | " + " | ".join(f"{a:.3f} / {b:.3f}" for a, b in found["table"][region]) + " |")
    return L


def confident_core_lines(meta: dict) -> list[str]:
    """The shipped model's thick-slice confident-core rule, with the search it was chosen on."""
    record = (meta.get("metrics") or {}).get("confident_core_calibration")
    if not record:
        return []
    L = ["", "### Components without a confident core, on thick slices (shipped model)", "",
         "Chosen by `mtss calibrate-confident-core` on labelled clinical studies that no run trained on (series of "
         "4 mm or more, after the minimum sizes): a whole-tumour component stays only when at least the chosen "
         "fraction of its voxels reach the whole-tumour probability given; the smallest fraction with the best "
         "macro lesion-wise Dice that costs no more than the allowed Dice, kept only for a large enough gain. "
         "Macro lesion-wise Dice / Dice of the whole tumour per candidate fraction:", ""]
    for key, found in record.items():
        chosen = (f"**{found['min_fraction']:.0%} at p >= {found['probability']:g}**" if found["min_fraction"]
                  else "**no rule** (no fraction gained enough)")
        L += [f"Inputs {key}, {found['n_cases']} studies: {chosen}.", "",
              "| " + " | ".join(f"{c:.0%}" for c in found["candidates"]) + " |",
              "|---" * len(found["candidates"]) + "|",
              "| " + " | ".join(f"{a:.3f} / {b:.3f}" for a, b in found["table"]) + " |", ""]
    return L


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--bundle", required=True, type=Path)
    ap.add_argument("--benchmark", type=Path, help="JSON written by `mtss benchmark -o`")
    ap.add_argument("--clinical", type=Path, help="folder written by clinical_check.py for this bundle")
    ap.add_argument("--notes", type=Path, help="a Markdown file appended after the real case (what was seen by eye)")
    ap.add_argument("--uncalibrated", type=Path, nargs="*", default=[],
                    help="report.json files of the same models evaluated at threshold 0.5 (before `mtss calibrate`)")
    ap.add_argument("--ceiling", type=Path, help="JSON written by `mtss ceiling TEST -o` (the resolution ceiling; "
                                                 "default: WORK/reports/ceiling.json, written by the recipe)")
    ap.add_argument("--shipped", default="student",
                    help="the run (folder name under WORK/runs) whose bundle is installed as the default; its "
                         "missing-modality reports are WORK/reports/SHIPPED-{t1c+t2f,t1c,t2f} (default: student)")
    ap.add_argument("--title", default="MTSS default model: evaluation report")
    args = ap.parse_args(argv)
    w, b = args.work, args.bundle
    rep = json.loads((w / "reports" / "all" / "report.json").read_text())
    summary = rep["summary"]
    ablation_file = w / "reports" / "ablation" / "report.json"  # the ablation runs, evaluated beside the others
    if ablation_file.is_file():
        extra = json.loads(ablation_file.read_text())
        summary = {**summary, **extra["summary"]}
        rep["models"] = {**rep["models"], **extra["models"]}
    # Run-folder name -> model key; an ensemble records its first member's folder as its source, so it is
    # left out here (it is found by its role below).
    names = {Path(m["source"]).name: k for k, m in rep["models"].items() if m.get("role") != "ensemble"}
    student = names.get("student")
    joint = names.get("joint") or names.get("teacher-base")
    continued = names.get("joint-continued")
    teachers = {p: names.get(f"teacher-{p}") for p in POPULATIONS}
    ensemble = next((k for k, m in rep["models"].items() if m.get("role") == "ensemble"), None)
    subsets = {}
    for sub in ("t1c+t2f", "t1c", "t2f"):
        f = w / "reports" / sub / "report.json"
        if f.is_file():
            r = json.loads(f.read_text())
            subsets[sub] = (r["summary"], next(iter(r["summary"])))  # (summary, its one model)
    timings = json.loads((w / "timings.json").read_text()) if (w / "timings.json").is_file() else {}
    L: list[str] = [f"# {args.title}", ""] + recipe_lines(w, rep, timings)
    shipped = names.get(args.shipped)
    if shipped is None:
        ap.error(f"--shipped {args.shipped}: no evaluated run of that name (have: {', '.join(sorted(names))})")
    if args.shipped != "student":
        L += shipped_lines(w, args.shipped, shipped, student, summary)
    L += ["## Dice per population (four inputs)", "",
          "| population | region | student | joint baseline | joint continued | own teacher | teacher ensemble |",
          "|---|---|---|---|---|---|---|"]
    for pop in POPULATIONS:
        for reg in REGIONS:
            L.append(f"| {pop} | {reg} | {fmt(mean(summary, student, pop, reg))} | {fmt(mean(summary, joint, pop, reg))} "
                     f"| {fmt(mean(summary, continued, pop, reg))} | {fmt(mean(summary, teachers[pop], pop, reg))} "
                     f"| {fmt(mean(summary, ensemble, pop, reg))} |")
    for reg in REGIONS:
        L.append(f"| macro | {reg} | {fmt(mean(summary, student, None, reg))} | {fmt(mean(summary, joint, None, reg))} "
                 f"| {fmt(mean(summary, continued, None, reg))} | – | {fmt(mean(summary, ensemble, None, reg))} |")
    L += ["", "## Student: HD95 and BraTS 2023 lesion-wise metrics (four inputs)", "",
          "| population | region | Dice | HD95 (mm) | lesion-wise Dice | lesion-wise HD95 (mm) |", "|---|---|---|---|---|---|"]
    for pop in POPULATIONS:
        for reg in REGIONS:
            L.append(f"| {pop} | {reg} | {fmt(mean(summary, student, pop, reg))} | "
                     f"{fmt(mean(summary, student, pop, reg, 'hd95'), 1)} | {fmt(mean(summary, student, pop, reg, 'lesion_dice'))} | "
                     f"{fmt(mean(summary, student, pop, reg, 'lesion_hd95'), 1)} |")
    L += ["", "## Student with missing modalities (macro Dice over populations)", "",
          "| inputs | WT | TC | ET |", "|---|---|---|---|",
          "| all four | " + " | ".join(fmt(mean(summary, student, None, r)) for r in REGIONS) + " |"]
    for sub, s in subsets.items():
        L.append(f"| {subset_label(sub)} | " + " | ".join(
            fmt(mean(*s, None, r)) for r in REGIONS) + " |")
    # targets
    L += ["", "## Targets of the default-model issue", "", "| target | measured | met |", "|---|---|---|"]
    for pop in POPULATIONS:
        st = np.mean([mean(summary, student, pop, r) or 0 for r in REGIONS])
        te = np.mean([mean(summary, teachers[pop], pop, r) or 0 for r in REGIONS])
        jo = np.mean([mean(summary, continued or joint, pop, r) or 0 for r in REGIONS])
        L.append(f"| {pop}: student ≥ own teacher − 0.01 and > joint (mean Dice of WT/TC/ET) | student {st:.3f}, "
                 f"teacher {te:.3f}, joint{' continued' if continued else ''} {jo:.3f} | {'yes' if st >= te - 0.01 and st > jo else 'no'} |")
    for reg, goal in zip(REGIONS, (0.90, 0.85, 0.80)):
        v = mean(summary, student, None, reg) or 0
        L.append(f"| macro {reg} ≥ {goal:.2f} | {v:.3f} | {'yes' if v >= goal else 'no'} |")
    if "t1c+t2f" in subsets:
        s = subsets["t1c+t2f"]
        worst = max((mean(summary, student, None, r) or 0) - (mean(*s, None, r) or 0) for r in REGIONS)
        L.append(f"| FLAIR+T1c within 0.03 of all four (worst region) | {worst:+.3f} | {'yes' if worst <= 0.03 else 'no'} |")
    ceiling = args.ceiling or w / "reports" / "ceiling.json"
    if ceiling.is_file():
        from MTSSTrainingLib.ceiling import render_table

        working = json.loads((b / "model.json").read_text())["preprocessing"]["spacing_mm"][0]
        L += ["", "### What the working spacing allows (`mtss ceiling`)", "",
              f"The models work at {working:g} mm. Each test label map brought to a working grid and back, as "
              "training targets and segmentation bring it, without any network: no model at that spacing can "
              "score above these Dice figures. *nearest*: nearest-neighbour labels (the default targets); "
              "*soft*: the share of each voxel in each region (`--soft-targets`).", "",
              render_table(json.loads(ceiling.read_text()))]
    before: dict = {}
    for f in args.uncalibrated:
        before.update(json.loads(f.read_text())["summary"])
    L += threshold_lines(rep, summary, before or None)
    shipped_meta = json.loads((b / "model.json").read_text())
    L += (subset_threshold_lines(shipped_meta) + thick_slice_lines(shipped_meta) + component_lines(shipped_meta)
          + confident_core_lines(shipped_meta))
    figures = [f for f in rep.get("figures", []) if f.endswith(".png")]
    for f in figures[:3]:
        shutil.copy2(w / "reports" / "all" / f, b / f)
    if figures:
        L += ["", "## Charts", ""] + [f"![{f}]({f})" for f in figures[:3]]
    L += ["", "## Real MRI: BraTS-GLI-00001-000 (no labels; looked at, not scored)", ""]
    L += real_case(b if (b / "model.json").is_file() else w / "runs" / "student", b / "real_case_overlay.png")
    L += ["", "![real case](real_case_overlay.png)", "", "![real case, axial slices](real_case_overlay_axial.png)"]
    if (b / "real_case_overlay_2.png").is_file():
        L += ["", "![real case, second component](real_case_overlay_2.png)"]
    if args.notes and args.notes.is_file():
        L += ["", args.notes.read_text().strip()]
    if args.benchmark and args.benchmark.is_file():
        from MTSSTrainingLib.benchmark import table

        bench = json.loads(args.benchmark.read_text())
        L += ["", "## Benchmark (`mtss benchmark`)", "", f"Device {bench['device']}, case {Path(bench['case']).name}, "
              f"median of {bench['repeats']}.", "", table(bench["rows"])]
        if "cpu_target" in bench:
            c = bench["cpu_target"]
            L.append(f"\nCPU target: cold `mtss segment` {c['student_cold_command_s']:.2f} s vs a cold bare "
                     f"SegResNet-8 sliding window {c['bare_segresnet8_cold_s']:.2f} s (ratio {c['ratio']:.2f}; "
                     f"target ≤ 0.33: {'met' if c['met'] else 'not met'}).")
        L.append(f"Student GFLOP per 128³ patch / SegResNet-16's: {bench['gflop_ratio_vs_segresnet16']:.3f} (target ≤ 0.20).")
    ablation = {k: v for k, v in names.items() if k.startswith("student-without-") or k == "student-ablation-all"}
    if ablation:
        first = Path(rep["models"][next(iter(ablation.values()))]["source"])
        chain = steps_chain(first)
        start = f"the weights of *{chain[-2][0]}*" if len(chain) > 1 else "scratch"
        L += ["", "## Ablation: one KD term removed at a time (macro Dice, four inputs)", "",
              f"Every variant starts from {start} and is distilled for {chain[-1][1] if chain else '?'} steps "
              "(fewer than the student's run), so the variants differ only in their KD terms.", "",
              "| variant | WT | TC | ET | mean | change of the mean vs all terms |", "|---|---|---|---|---|---|"]
        ref = ablation.get("student-ablation-all")
        ref_mean = np.mean([mean(summary, ref, None, r) or 0 for r in REGIONS]) if ref else None
        for name in sorted(ablation, key=lambda n: (n != "student-ablation-all", n)):
            vals = [mean(summary, ablation[name], None, r) for r in REGIONS]
            m = float(np.mean([v or 0 for v in vals]))
            delta = "–" if ref_mean is None or name == "student-ablation-all" else f"{m - ref_mean:+.3f}"
            label = ("all five terms" if name == "student-ablation-all" else "no KD term (ground truth only)"
                     if name == "student-without-kd" else "without " + name.split("-without-")[1])
            L.append(f"| {label} | " + " | ".join(fmt(v) for v in vals) + f" | {m:.3f} | {delta} |")
    if args.clinical and (args.clinical / "clinical_check.md").is_file():
        L += ["", "## Clinical acquisitions (skull on, 4-6 mm oblique series, head motion, bias)", "",
              "Each case segmented as BraTS-preprocessed images and as clinical draws of the same images "
              "(`clinical_check.py`: one `segment` call with N4, registration, skull detection and brain "
              "extraction).",
              "", (args.clinical / "clinical_check.md").read_text().strip()]
        for png in sorted(args.clinical.glob("clinical_*.png"))[:1]:
            shutil.copy2(png, b / png.name)
            L += ["", f"![clinical draw]({png.name})"]
    (b / "report.md").write_text("\n".join(L) + "\n")
    meta_path = b / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["metrics"]["summary"] = "synthetic test macro Dice " + ", ".join(
        f"{r} {fmt(mean(summary, shipped, None, r), 2)}" for r in REGIONS)
    fd, tmp = tempfile.mkstemp(dir=b)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, meta_path)
    print("\n".join(L))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
