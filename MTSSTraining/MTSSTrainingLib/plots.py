"""Charts for runs and reports (matplotlib, ``Agg`` backend, PNG written atomically).

* :func:`training_curves`: training loss (and KD terms) and validation Dice per epoch, from ``log.jsonl``;
* :func:`population_bars`: Dice per population and region, one bar group per model;
* :func:`model_comparison`: macro Dice per region, one bar per model;
* :func:`overlay`: one axial slice of an image with the truth and predicted outlines.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from MTSSSegmenterLib.constants import LABELS, POPULATION_CODES, REGION_CODES

from .checkpoint import atomic_write_bytes

REGION_COLOURS = {"WT": "#f2c84b", "TC": "#cc3333", "ET": "#3b8ced"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def training_curves(records: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path | None:
    """Loss terms and validation Dice per epoch; None when the log has no epoch record."""
    epochs = [r for r in records if "train" in r and "epoch" in r]
    if not epochs:
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    x = [r["epoch"] for r in epochs]
    terms = sorted({k for r in epochs for k in r["train"]})
    for term in terms:
        ax1.plot(x, [r["train"].get(term, math.nan) for r in epochs], marker=".", label=term,
                 linewidth=2.5 if term == "loss" else 1.2)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss")
    ax1.set_yscale("symlog", linthresh=1e-2)
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    vals = [r for r in epochs if r.get("val")]
    if vals:
        vx = [r["epoch"] for r in vals]
        for key in ["macro"] + [p for p in POPULATION_CODES if any(p in r["val"] for r in vals)]:
            ys = [r["val"].get(key, {}).get("mean") for r in vals]
            ax2.plot(vx, [math.nan if y is None else y for y in ys], marker=".", label=key,
                     linewidth=2.5 if key == "macro" else 1.2)
        ax2.set_ylim(0, 1)
        ax2.legend(fontsize=8)
    else:
        ax2.text(0.5, 0.5, "no validation cases", ha="center", va="center", transform=ax2.transAxes)
    ax2.set_xlabel("epoch")
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.set_ylabel("validation Dice (mean of WT, TC, ET)")
    ax2.grid(alpha=0.3)
    fig.suptitle(title or "training")
    return _save(fig, path)


def population_bars(summaries: dict[str, dict[str, Any]], path: str | Path, metric: str = "dice") -> Path:
    """Grouped bars: for each population and region, one bar per model (``summaries[model]`` from
    :func:`MTSSSegmenterLib.metrics.summarise`)."""
    plt = _pyplot()
    models = list(summaries)
    pops = [p for p in POPULATION_CODES if any(p in s["populations"] for s in summaries.values())]
    fig, axes = plt.subplots(1, len(REGION_CODES), figsize=(4.2 * len(REGION_CODES), 3.8), sharey=True)
    width = 0.8 / max(1, len(models))
    for ax, region in zip(np.atleast_1d(axes), REGION_CODES):
        for i, model in enumerate(models):
            vals = [summaries[model]["populations"].get(p, {}).get(region, {}).get(metric, {}).get("mean", math.nan)
                    for p in pops]
            ax.bar(np.arange(len(pops)) + i * width - 0.4 + width / 2, vals, width, label=model)
        ax.set_xticks(np.arange(len(pops)))
        ax.set_xticklabels(pops)
        ax.set_title(region)
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel(metric.replace("_", " "))
    np.atleast_1d(axes)[-1].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{metric.replace('_', ' ')} per population")
    return _save(fig, path)


def model_comparison(summaries: dict[str, dict[str, Any]], path: str | Path, metric: str = "dice") -> Path:
    """Macro average over populations per region, one bar group per model."""
    plt = _pyplot()
    models = list(summaries)
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(models), 3.8))
    width = 0.8 / len(REGION_CODES)
    for j, region in enumerate(REGION_CODES):
        vals = [summaries[m]["macro"].get(region, {}).get(metric, math.nan) for m in models]
        bars = ax.bar(np.arange(len(models)) + j * width - 0.4 + width / 2, vals, width, label=region,
                      color=REGION_COLOURS[region])
        for bar, v in zip(bars, vals):
            if math.isfinite(v):
                ax.text(bar.get_x() + bar.get_width() / 2, v + 0.01, f"{v:.2f}", ha="center", fontsize=7)
    ax.set_xticks(np.arange(len(models)))
    ax.set_xticklabels(models, rotation=15)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel(f"macro {metric.replace('_', ' ')}")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def overlay(image: np.ndarray, truth: np.ndarray, predictions: dict[str, np.ndarray], path: str | Path,
            title: str = "") -> Path:
    """The axial slice with the most tumour: image, truth outline, each prediction's outline.

    Arrays are (z, y, x) in LPS order (row 0 anterior, column 0 the patient's right), shown radiologically.
    """
    plt = _pyplot()
    z = int(np.argmax((truth > 0).sum(axis=(1, 2)))) if truth.any() else image.shape[0] // 2
    panels = [("truth", truth)] + list(predictions.items())
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    lo, hi = np.percentile(image[z], [1, 99]) if image[z].any() else (0.0, 1.0)
    for ax, (name, labels) in zip(np.atleast_1d(axes), panels):
        ax.imshow(image[z], cmap="gray", vmin=lo, vmax=hi)
        for lab in LABELS:
            mask = labels[z] == lab.value
            if mask.any():
                ax.contour(mask.astype(float), levels=[0.5], colors=[lab.color], linewidths=1.0)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
