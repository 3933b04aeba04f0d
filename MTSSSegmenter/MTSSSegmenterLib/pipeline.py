"""Segment one case: volumes in, BraTS 2023 label map on the reference grid out."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from .bundle import Bundle, find_bundle, load_bundle
from .constants import LABELS, MODALITY_CODES, REGIONS
from .errors import Cancelled, InputError
from .inference import Progress, predict, resolve_device
from .io import find_case_files, read_image
from .preprocess import PreparedCase, prepare_case, restore, validate_inputs

log = logging.getLogger(__name__)

STAGES = ("preparing", "loading model", "segmenting", "finishing")


@dataclass
class SegmentationResult:
    """The label map (uint8, 0..3, on exactly the reference image's grid) and what it took."""

    label: sitk.Image
    reference: str
    volumes_ml: dict[str, float]
    timings_s: dict[str, float]
    device: str
    model_name: str
    inputs: tuple[str, ...]
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "inputs": list(self.inputs),
            "model": self.model_name,
            "device": self.device,
            "volumes_ml": {k: round(v, 3) for k, v in self.volumes_ml.items()},
            "timings_s": {k: round(v, 4) for k, v in self.timings_s.items()},
            "grid": {"size": list(self.label.GetSize()), "spacing": list(self.label.GetSpacing()),
                     "origin": list(self.label.GetOrigin()), "direction": list(self.label.GetDirection())},
            "warnings": list(self.warnings),
            **self.details,
        }


def label_volumes_ml(label: sitk.Image) -> dict[str, float]:
    """Volume in mL of each label (NCR, ED, ET) and region (WT, TC, ET)."""
    arr = sitk.GetArrayViewFromImage(label)
    voxel_ml = float(np.prod(label.GetSpacing())) / 1000.0
    counts = np.bincount(np.asarray(arr, dtype=np.int64).ravel(), minlength=4)
    out = {lab.code: float(counts[lab.value] * voxel_ml) for lab in LABELS}
    for reg in REGIONS:
        out[reg.code] = float(sum(counts[v] for v in reg.labels) * voxel_ml)
    return out


def _notify(progress: Progress | None, stage: str, fraction: float) -> None:
    if progress is not None:
        progress(stage, fraction)  # may raise Cancelled


_BUNDLE_CACHE: dict[str, Bundle] = {}


def get_bundle(model: str | Path | Bundle | None) -> Bundle:
    """Load (once per process) the bundle named by ``model`` (path, installed name, or None = default)."""
    if isinstance(model, Bundle):
        return model
    path = str(find_bundle(model).resolve())
    if path not in _BUNDLE_CACHE:
        _BUNDLE_CACHE[path] = load_bundle(path)
    return _BUNDLE_CACHE[path]


def bundle_preprocessing(bundle: Bundle) -> dict[str, Any]:
    return {**bundle.meta["preprocessing"], "modality_encoding": bundle.meta.get("modality_encoding", "mask-channels")}


def run_network(bundle: Bundle, case: PreparedCase, device: torch.device,
                progress: Progress | None = None) -> tuple[torch.Tensor, torch.device, list[str]]:
    """Region probabilities (3, z, y, x) for a prepared case."""
    inf = bundle.meta["inference"]
    x = torch.from_numpy(case.image)[None]
    probs, ran_on, warnings = predict(bundle.network, x, inf.get("roi_size", [128] * 3), float(inf.get("overlap", 0.25)),
                                      device, amp=None, divisor=bundle.network_config.divisor, progress=progress)
    return probs[0], ran_on, warnings


def segment(images: dict[str, sitk.Image], model: str | Path | Bundle | None = None, device: str = "auto",
            progress: Progress | None = None, reference: str | None = None, **options: Any) -> SegmentationResult:
    """Segment a case given as ``{modality: image}`` (any non-empty subset of t1n, t1c, t2w, t2f).

    Args:
        images: the input volumes; other grids are resampled onto the reference's.
        model: bundle path, installed bundle name, loaded :class:`Bundle`, or None for the default.
        device: ``auto``, ``cpu`` or ``cuda``.
        progress: ``progress(stage, fraction)``; raise :class:`Cancelled` inside it to stop.
        reference: modality whose grid the result lies on (default t1c > t1n > t2w > t2f).

    Raises:
        InputError, BundleError: with a message that names the problem and the fix.
        Cancelled: when the progress callback cancelled.
    """
    if options:
        unknown = ", ".join(sorted(options))
        raise InputError(f"Unknown segmentation option(s): {unknown}.")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    _notify(progress, "loading model", 0.0)
    images = validate_inputs(images)
    bundle = get_bundle(model)
    if not bundle.supports(list(images)):
        raise InputError(f"Model '{bundle.name}' does not accept the inputs {sorted(images)}; it accepts "
                         f"{bundle.meta.get('modality_subsets')} of {bundle.meta['modalities']}.")
    dev = resolve_device(device)
    timings["load_model"] = time.perf_counter() - t0
    _notify(progress, "preparing", 0.0)
    t = time.perf_counter()
    case = prepare_case(images, bundle_preprocessing(bundle), reference=reference, device=dev)
    timings["prepare"] = time.perf_counter() - t
    _notify(progress, "segmenting", 0.0)
    t = time.perf_counter()
    probs, ran_on, warnings = run_network(bundle, case, dev, progress)
    if ran_on.type == "cuda":
        torch.cuda.synchronize()
    timings["network"] = time.perf_counter() - t
    _notify(progress, "finishing", 0.0)
    t = time.perf_counter()
    threshold = float(bundle.meta["inference"].get("threshold", 0.5))
    label = restore(probs, case, threshold)
    timings["restore"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    _notify(progress, "finishing", 1.0)
    missing = [m for m in MODALITY_CODES if m not in case.present]
    details = {"working_spacing_mm": list(case.working_spacing_zyx[::-1]), "missing_modalities": missing,
               "canonical_mapping": "exact" if case.frame.exact else "resampled (oblique input)"}
    return SegmentationResult(label, case.reference, label_volumes_ml(label), timings, str(ran_on), bundle.name,
                              case.present, case.warnings + warnings, details)


def read_inputs(files: dict[str, str | Path]) -> dict[str, sitk.Image]:
    """Read ``{modality: path}`` into images, with errors naming the modality."""
    return {code: read_image(path, code) for code, path in files.items()}


def segment_folder(case_dir: str | Path, **kwargs: Any) -> SegmentationResult:
    """Segment a BraTS 2023/2021 case folder."""
    files, _seg = find_case_files(case_dir)
    return segment(read_inputs(files), **kwargs)


__all__ = ["SegmentationResult", "segment", "segment_folder", "read_inputs", "label_volumes_ml", "Cancelled"]
