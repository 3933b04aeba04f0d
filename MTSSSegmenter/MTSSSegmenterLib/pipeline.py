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

from .bundle import Bundle, find_bundle, load_bundle, mirror_axes, weak_inputs_warning
from .clinical import brain_on_grid, isotropic_grid, prepare_study, restore_on_grid
from .constants import LABELS, MODALITY_CODES, REGIONS, modality, reference_modality
from .errors import Cancelled, InputError
from .geometry import Grid
from .inference import Progress, predict, resolve_device
from .io import find_case_files, read_image
from .postprocess import min_component_sizes, remove_small_components, remove_unconfident_components
from .preprocess import PreparedCase, prepare_case, probability_on_grid, restore, validate_inputs

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
    brain_mask: sitk.Image | None = None  # uint8, on the label's grid, when asked for (brain_mask_out=True)
    wt_probability: sitk.Image | None = None  # float32 on the label's grid, when asked for (probability_out=True)

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
    counts = [0] + [int(np.count_nonzero(arr == v)) for v in (1, 2, 3)]  # no int64 copy of the volume
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
    probs, ran_on, warnings = predict(bundle.network, x, inf.get("roi_size", [128] * 3),
                                      float(inf.get("overlap", 0.25)), device, amp=None,
                                      divisor=bundle.network_config.divisor, progress=progress,
                                      mirror=mirror_axes(bundle.meta))
    return probs[0], ran_on, warnings


def segment(images: dict[str, sitk.Image], model: str | Path | Bundle | None = None, device: str = "auto",
            progress: Progress | None = None, reference: str | None = None, register: bool | None = None,
            n4: bool | None = None, brain_mask_out: bool = False, output_spacing: float | None = None,
            keep_small_components: bool = False, probability_out: bool = False, **options: Any
            ) -> SegmentationResult:
    """Segment a case given as ``{modality: image}`` (any non-empty subset of t1n, t1c, t2w, t2f).

    Args:
        images: the input volumes; other grids are resampled onto the reference's.
        model: bundle path, installed bundle name, loaded :class:`Bundle`, or None for the default.
        device: ``auto``, ``cpu`` or ``cuda``.
        progress: ``progress(stage, fraction)``; raise :class:`Cancelled` inside it to stop.
        reference: modality whose grid the result lies on (default t1c > t1n > t2w > t2f).
        register: rigidly register the series to the reference (None: when their grids differ).
        n4: N4 bias-field correction of every series first (None: when the series are registered).
        brain_mask_out: also return the brain mask the network saw (``result.brain_mask``).
        output_spacing: write the label map on an isotropic grid of this spacing (mm) aligned with the
            reference (same direction and corner) instead of on the reference grid.
        keep_small_components: keep every connected component; by default those below the bundle's
            ``inference.min_component_ml`` (chosen on validation cases) are removed, and on thick slices the
            whole-tumour components without a confident core (``inference.thick_slices.confident_core``,
            chosen on clinical studies; :mod:`.postprocess`).
        probability_out: also return the whole-tumour probability on the label map's grid
            (``result.wt_probability``, float32), as the network gave it before any threshold.

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
    thickest = max(max(img.GetSpacing()) for img in images.values())  # the coarsest voxel side of any series
    bundle = get_bundle(model)
    if not bundle.supports(list(images)):
        raise InputError(f"Model '{bundle.name}' does not accept the inputs {sorted(images)}; it accepts "
                         f"{bundle.meta.get('modality_subsets')} of {bundle.meta['modalities']}.")
    dev = resolve_device(device)
    timings["load_model"] = time.perf_counter() - t0
    _notify(progress, "preparing", 0.0)
    t = time.perf_counter()
    ref = reference_modality(list(images)) if reference is None else modality(reference).code
    if ref not in images:
        raise InputError(f"Reference modality '{ref}' was asked for but not given (given: {', '.join(images)}).")
    images, transforms, brain, study = prepare_study(images, ref, register=register, n4=n4)
    _notify(progress, "preparing", 0.7)
    case = prepare_case(images, bundle_preprocessing(bundle), reference=ref, device=dev, transforms=transforms,
                        brain_mask=brain)
    timings.update({f"prepare_{k}": v for k, v in study.timings_s.items()})
    timings["prepare"] = time.perf_counter() - t
    _notify(progress, "segmenting", 0.0)
    t = time.perf_counter()
    probs, ran_on, warnings = run_network(bundle, case, dev, progress)
    if ran_on.type == "cuda":
        torch.cuda.synchronize()
    timings["network"] = time.perf_counter() - t
    _notify(progress, "finishing", 0.0)
    t = time.perf_counter()
    threshold, thick = bundle.chosen_thresholds(case.present, thickest)
    weak = weak_inputs_warning(bundle.meta, case.present, thick)
    grid = Grid.of(images[case.reference]) if output_spacing is None else isotropic_grid(images[case.reference],
                                                                                           output_spacing)
    label = restore(probs, case, threshold) if output_spacing is None else restore_on_grid(probs, case, grid,
                                                                                           threshold)
    sizes, rule = min_component_sizes(bundle.meta), bundle.confident_core(case.present, thickest)
    removed = doubtful = wt_probability = None
    if probability_out or (rule and not keep_small_components):
        wt_probability = probability_on_grid(probs[0], case, grid)
    if not keep_small_components and ((sizes and any(sizes)) or rule):
        kept = sitk.GetArrayFromImage(label)
        if sizes and any(sizes):
            kept, removed = remove_small_components(kept, label.GetSpacing(), sizes)
        if rule:
            kept, doubtful = remove_unconfident_components(kept, wt_probability, label.GetSpacing(), *rule)
        label = _placed(kept, label)
    mask = brain_on_grid(case, grid) if brain_mask_out else None
    timings["restore"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    _notify(progress, "finishing", 1.0)
    missing = [m for m in MODALITY_CODES if m not in case.present]
    details = {"working_spacing_mm": list(case.working_spacing_zyx[::-1]), "missing_modalities": missing,
               "canonical_mapping": "exact" if case.frame.exact else "resampled (oblique input)",
               "test_time_mirroring": list(bundle.meta["inference"].get("mirror") or []),
               "thickest_slice_mm": round(thickest, 2), "thresholds": [float(t) for t in threshold],
               "thick_slice_thresholds": thick,
               "output_grid": "reference" if output_spacing is None else f"isotropic {output_spacing:g} mm",
               "min_component_ml": None if removed is None else list(sizes),
               "small_components_removed": removed,
               "confident_core": None if doubtful is None else {"probability": rule[0], "min_fraction": rule[1]},
               "unconfident_components_removed": doubtful, **study.summary()}
    return SegmentationResult(label, case.reference, label_volumes_ml(label), timings, str(ran_on), bundle.name,
                              case.present, study.warnings + case.warnings + warnings + ([weak] if weak else []),
                              details, mask, None if wt_probability is None else _placed(wt_probability, label))


def _placed(array: np.ndarray, like: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(like)
    return image


def read_inputs(files: dict[str, str | Path]) -> dict[str, sitk.Image]:
    """Read ``{modality: path}`` into images, with errors naming the modality."""
    return {code: read_image(path, code) for code, path in files.items()}


def segment_folder(case_dir: str | Path, **kwargs: Any) -> SegmentationResult:
    """Segment a BraTS 2023/2021 case folder."""
    files, _seg = find_case_files(case_dir)
    return segment(read_inputs(files), **kwargs)


__all__ = ["SegmentationResult", "segment", "segment_folder", "read_inputs", "label_volumes_ml", "Cancelled"]
