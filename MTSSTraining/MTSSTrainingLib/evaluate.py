"""``mtss evaluate``: every model on every case, per population x region, with a paired comparison.

Each case of the data folder is segmented by each model through the real pipeline
(:func:`MTSSSegmenterLib.pipeline.segment`: files in, label map on the reference grid out), optionally
from a subset of its modalities (``--modalities t1c,t2f``), and scored against its label map with
:func:`MTSSSegmenterLib.metrics.case_metrics`: Dice, HD95, BraTS 2023 lesion-wise Dice and HD95 per region
(WT, TC, ET). :func:`MTSSSegmenterLib.metrics.summarise` gives mean and median per population and the
macro average over populations. Models are compared pairwise with the first: mean difference of the
per-case Dice and the two-sided Wilcoxon signed-rank test (``scipy.stats.wilcoxon``).

Writes ``report.json`` (everything), ``report.md`` (tables) and PNG charts (per-population Dice, model
comparison, a few overlays) into the output folder.
"""

from __future__ import annotations

import datetime
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from MTSSSegmenterLib.bundle import Bundle, find_bundle, load_bundle
from MTSSSegmenterLib.constants import (
    MODALITY_CODES,
    POPULATION_CODES,
    REGION_CODES,
    modality,
)
from MTSSSegmenterLib.errors import Cancelled, InputError, MTSSError
from MTSSSegmenterLib.geometry import Grid
from MTSSSegmenterLib.io import read_image, read_labels
from MTSSSegmenterLib.metrics import case_metrics, summarise
from MTSSSegmenterLib.pipeline import segment

from .checkpoint import atomic_write_bytes, atomic_write_json
from .data import BrokenCase, discover
from .progress import ProgressCallback

log = logging.getLogger(__name__)

METRICS = ("dice", "hd95", "lesion_dice", "lesion_hd95")


@dataclass
class EvalModel:
    label: str
    bundle: Bundle
    source: str


def parse_modalities(text: str | Sequence[str] | None) -> list[str] | None:
    """``"t1c,flair"`` -> ``["t1c", "t2f"]`` (BraTS order); None for all four."""
    if text is None or text == "" or text == []:
        return None
    items = text.replace(" ", ",").split(",") if isinstance(text, str) else list(text)
    try:
        codes = {modality(i).code for i in items if i}
    except ValueError as exc:
        raise InputError(f"--modalities: {exc}") from exc
    if not codes:
        raise InputError("--modalities needs at least one of t1n, t1c, t2w, t2f.")
    return [m for m in MODALITY_CODES if m in codes]


def resolve_models(models: Sequence[str | Path | Bundle], ensemble: Bundle | None = None) -> list[EvalModel]:
    """Load each model (bundle path or installed name) once; labels are unique and readable."""
    out: list[EvalModel] = []
    seen: dict[str, int] = {}
    items: list[Any] = list(models) + ([ensemble] if ensemble is not None else [])
    if not items:
        raise InputError("No model to evaluate; give --model PATH (one or more) and/or --ensemble GLI=RUN ...")
    for item in items:
        bundle = item if isinstance(item, Bundle) else load_bundle(find_bundle(item))  # fresh: it may be retrained
        base = bundle.name if isinstance(item, Bundle) else (bundle.name if bundle.name != "unnamed" else Path(str(item)).name)
        seen[base] = seen.get(base, 0) + 1
        label = base if seen[base] == 1 else f"{base}-{seen[base]}"
        out.append(EvalModel(label, bundle, str(getattr(bundle, "path", item))))
    return out


def wilcoxon_p(differences: Sequence[float]) -> float | None:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (1.0 when all are zero)."""
    d = np.asarray([x for x in differences if math.isfinite(x)], dtype=np.float64)
    if d.size < 2:
        return None
    if np.all(d == 0):
        return 1.0
    from scipy.stats import wilcoxon

    return float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def compare(rows: list[dict[str, Any]], reference: str, other: str) -> dict[str, Any]:
    """Paired per-case comparison of ``other`` against ``reference`` (Dice and lesion-wise Dice)."""
    by_case: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_case.setdefault(r["case"], {})[r["model"]] = r
    pairs = [(c[reference], c[other]) for c in by_case.values() if reference in c and other in c]
    out: dict[str, Any] = {"reference": reference, "model": other, "n_cases": len(pairs), "regions": {}}
    for region in REGION_CODES:
        entry: dict[str, Any] = {}
        for metric in ("dice", "lesion_dice"):
            diffs = [b[region][metric] - a[region][metric] for a, b in pairs]
            entry[metric] = {"mean_difference": float(np.mean(diffs)) if diffs else None, "wilcoxon_p": wilcoxon_p(diffs)}
            per_pop = {}
            for pop in POPULATION_CODES:
                d = [b[region][metric] - a[region][metric] for a, b in pairs if a["population"] == pop]
                if d:
                    per_pop[pop] = float(np.mean(d))
            entry[metric]["by_population"] = per_pop
        out["regions"][region] = entry
    return out


def evaluate(data: str | Path | Sequence[str | Path], models: Sequence[str | Path | Bundle], out_dir: str | Path,
             modalities: Sequence[str] | str | None = None, ensemble: Bundle | None = None, device: str = "auto",
             mapping: str | Path | None = None, overlays: int = 3, progress: ProgressCallback | None = None
             ) -> dict[str, Any]:
    """Evaluate ``models`` on every labelled case of ``data``; write the report into ``out_dir``.

    Returns the report dict (also in ``report.json``).
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"Cannot create the report folder '{out}': {exc.strerror}. Choose a writable folder.") from exc
    mods = parse_modalities(modalities)  # type: ignore[arg-type]
    index = discover(data, mapping)
    evaluated = resolve_models(models, ensemble)
    left_out: list[BrokenCase] = list(index.broken)
    cases = []
    for rec in index.cases:
        if tuple(rec.labels) != REGION_CODES:
            left_out.append(BrokenCase(rec.name, str(rec.folder), f"partial labels ({'+'.join(rec.labels)}); "
                                                                  "evaluation needs WT, TC and ET labels."))
        else:
            cases.append(rec)
    if not cases:
        raise InputError(f"No fully labelled case to evaluate in {data} ({index.summary()}).")
    rows: list[dict[str, Any]] = []
    overlay_cases: dict[str, Any] = {}
    started = time.monotonic()
    total = len(cases) * len(evaluated)
    done = 0
    for rec in cases:
        wanted = {m: p for m, p in rec.files.items() if mods is None or m in mods}
        if not wanted:
            left_out.append(BrokenCase(rec.name, str(rec.folder), f"has none of the modalities {mods}."))
            continue
        try:
            images = {m: read_image(p, f"{rec.name} {m}") for m, p in wanted.items()}
            truth_img = read_labels(rec.seg)  # type: ignore[arg-type]
        except MTSSError as exc:
            left_out.append(BrokenCase(rec.name, str(rec.folder), str(exc)))
            continue
        truth = sitk.GetArrayFromImage(truth_img)
        spacing_zyx = tuple(truth_img.GetSpacing()[::-1])
        preds = {}
        for model in evaluated:
            t = time.perf_counter()
            try:
                result = segment(images, model=model.bundle, device=device)
            except Cancelled:
                raise
            except MTSSError as exc:
                raise InputError(f"Model '{model.label}' failed on case {rec.name}: {exc}") from exc
            pred = sitk.GetArrayFromImage(result.label)
            if pred.shape != truth.shape:
                raise InputError(f"Case {rec.name}: the label map ({'x'.join(map(str, truth.shape[::-1]))}) is not on "
                                 f"the grid of the reference image; resample it onto the '{result.reference}' volume.")
            row = case_metrics(pred, truth, spacing_zyx, rec.population)
            row.update({"case": rec.name, "model": model.label, "time_s": time.perf_counter() - t,
                        "inputs": list(result.inputs)})
            rows.append(row)
            preds[model.label] = result.label
            done += 1
            if progress is not None:
                rate = (time.monotonic() - started) / done
                progress({"stage": "evaluating", "step": done, "steps": total, "fraction": done / total,
                          "eta_s": rate * (total - done), "message": f"{rec.name} {model.label}"})
        if len(overlay_cases) < overlays and rec.population not in {v["population"] for v in overlay_cases.values()}:
            shown = images.get("t2f", images[result.reference])
            if Grid.of(shown).same_as(Grid.of(truth_img)):
                overlay_cases[rec.name] = {"population": rec.population, "image": _lps(shown), "truth": _lps(truth_img),
                                           "preds": {k: _lps(v) for k, v in preds.items()}}
    summaries = {m.label: summarise([r for r in rows if r["model"] == m.label]) for m in evaluated}
    comparisons = [compare(rows, evaluated[0].label, m.label) for m in evaluated[1:]]
    report: dict[str, Any] = {
        "data": [str(d) for d in ([data] if isinstance(data, (str, Path)) else data)],
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "modalities": mods or list(MODALITY_CODES),
        "models": {m.label: {"source": m.source, "name": m.bundle.name, "role": m.bundle.meta.get("role"),
                             "populations": m.bundle.meta.get("populations")} for m in evaluated},
        "n_cases": len({r["case"] for r in rows}),
        "summary": summaries,
        "comparison": comparisons,
        "cases": rows,
        "left_out": [b.to_dict() for b in left_out],
        "figures": [],
    }
    report["figures"] = _figures(out, summaries, overlay_cases)
    atomic_write_json(out / "report.json", report)
    atomic_write_bytes(out / "report.md", render_markdown(report).encode("utf-8"))
    return report


def _lps(image: sitk.Image) -> np.ndarray:
    """(z, y, x) array in LPS order: row 0 anterior, column 0 the patient's right (radiological display)."""
    return sitk.GetArrayFromImage(sitk.DICOMOrient(image, "LPS"))


def _figures(out: Path, summaries: dict[str, Any], overlay_cases: dict[str, Any]) -> list[str]:
    try:
        from . import plots
    except ImportError as exc:  # matplotlib missing
        log.warning("No charts (%s); install matplotlib for them.", exc)
        return []
    figures = [plots.population_bars(summaries, out / "population_dice.png").name,
               plots.model_comparison(summaries, out / "model_comparison.png").name]
    for name, c in overlay_cases.items():
        figures.append(plots.overlay(c["image"], c["truth"], c["preds"], out / f"overlay_{name}.png",
                                     title=f"{name} ({c['population']})").name)
    return figures


def _f(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def render_markdown(report: dict[str, Any]) -> str:
    """The human-readable report: macro table, per-population Dice, comparisons, figures, left-out cases."""
    lines = ["# Evaluation report", "", (f"Data: {', '.join(report['data'])} · {report['n_cases']} cases · inputs: "
                                         f"{', '.join(report['modalities'])} · {report['created']}"), ""]
    lines += ["## Macro average over populations", "",
              "| model | " + " | ".join(f"{r} Dice | {r} HD95 | {r} lesion Dice | {r} lesion HD95" for r in REGION_CODES) + " |",
              "|---|" + "---|" * (4 * len(REGION_CODES))]
    for model, s in report["summary"].items():
        cells = [_f(s["macro"].get(r, {}).get(m), 3 if "dice" in m else 1) for r in REGION_CODES for m in METRICS]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines += ["", "## Dice per population (mean / median)", ""]
    pops = [p for p in POPULATION_CODES if any(p in s["populations"] for s in report["summary"].values())]
    lines += ["| model | population | n | " + " | ".join(REGION_CODES) + " |", "|---|---|---|" + "---|" * len(REGION_CODES)]
    for model, s in report["summary"].items():
        for p in pops:
            row = s["populations"].get(p)
            if not row:
                continue
            cells = [f"{_f(row[r]['dice']['mean'])} / {_f(row[r]['dice']['median'])}" for r in REGION_CODES]
            lines.append(f"| {model} | {p} | {row['n_cases']} | " + " | ".join(cells) + " |")
    if report["comparison"]:
        lines += ["", "## Paired comparison (per-case Dice difference, Wilcoxon signed-rank)", "",
                  "| model − reference | " + " | ".join(f"{r} ΔDice (p)" for r in REGION_CODES) + " |",
                  "|---|" + "---|" * len(REGION_CODES)]
        for c in report["comparison"]:
            cells = [f"{_f(c['regions'][r]['dice']['mean_difference'])} ({_f(c['regions'][r]['dice']['wilcoxon_p'])})"
                     for r in REGION_CODES]
            lines.append(f"| {c['model']} − {c['reference']} | " + " | ".join(cells) + " |")
    if report["figures"]:
        lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in report["figures"]]
    if report["left_out"]:
        lines += ["", "## Cases left out", ""] + [f"- {b['name']}: {b['reason']}" for b in report["left_out"]]
    return "\n".join(lines) + "\n"
