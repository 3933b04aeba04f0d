"""Model bundles: a folder with ``model.safetensors`` (weights) and ``model.json`` (everything else).

A bundle carries what is needed to rebuild and check a model: format version, network config, supported
modality subsets and how the network is told which are present, populations, label map, preprocessing,
inference settings, training provenance, metrics, licence and the sha256 of the weights. Loading checks
the checksum and never unpickles anything.

Bundles are found in this order: an explicit path (``--model PATH``); a name in the user's model folder
(``$MTSS_HOME/models``, default ``~/.mtss/models``, shared by the command line and Slicer); the bundles
shipped as package data (``MTSSSegmenterLib/data/``). Without ``--model``, ``default`` is looked up in the
same order.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .version import __version__
from .constants import LABELS, MODALITY_CODES, POPULATION_CODES, REGION_CODES, modality
from .errors import BundleError
from .io import new_file_mode
from .netconfig import NetworkConfig
from .postprocess import min_component_sizes

if TYPE_CHECKING:
    from .networks import SegNetwork

log = logging.getLogger(__name__)

FORMAT = "mtss-bundle"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
META = "model.json"
DEFAULT_NAME = "default"
PACKAGE_DATA = Path(__file__).resolve().parent / "data"
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")

DEFAULT_PREPROCESSING: dict[str, Any] = {
    "orientation": "LPS",  # canonical voxel order the network works in (DICOM/ITK axes)
    "spacing_mm": [1.0, 1.0, 1.0],
    "crop": "brain",  # crop to the bounding box of non-zero voxels, plus margin
    "crop_margin_mm": 8.0,
    "normalization": "zscore-brain",  # per modality, inside the brain mask
    "clip_percentiles": [0.5, 99.5],
}
DEFAULT_INFERENCE: dict[str, Any] = {"roi_size": [128, 128, 128], "overlap": 0.25, "threshold": 0.5}


def user_model_dir() -> Path:
    """``$MTSS_HOME/models`` (default ``~/.mtss/models``): where the command line and Slicer look."""
    home = os.environ.get("MTSS_HOME") or os.path.join(os.path.expanduser("~"), ".mtss")
    return Path(home) / "models"


def default_meta(network: NetworkConfig, **overrides: Any) -> dict[str, Any]:
    """A complete ``model.json`` dict with defaults; training code fills provenance and metrics."""
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": "unnamed",
        "description": "",
        "license": "Apache-2.0",
        "role": "student",
        "trained_on": "unknown",
        "network": network.to_dict(),
        "modalities": list(MODALITY_CODES),
        "modality_subsets": "any-nonempty",
        "modality_encoding": "mask-channels",
        "populations": list(POPULATION_CODES),
        "labels": {str(lab.value): lab.code for lab in LABELS},
        "regions": list(REGION_CODES),
        "output": "region-sigmoid",
        "preprocessing": copy.deepcopy(DEFAULT_PREPROCESSING),
        "inference": copy.deepcopy(DEFAULT_INFERENCE),
        "training": {},
        "metrics": {},
        "mtss_version": __version__,
    }
    meta.update(copy.deepcopy(overrides))
    return meta


@dataclass
class Bundle:
    """A loaded, checked bundle: its folder, metadata and network (in eval mode, on CPU)."""

    path: Path
    meta: dict[str, Any]
    network: SegNetwork

    @property
    def name(self) -> str:
        return str(self.meta.get("name", self.path.name))

    @property
    def network_config(self) -> NetworkConfig:
        return self.network.config

    def supports(self, modalities: list[str] | tuple[str, ...]) -> bool:
        """Whether the bundle accepts this set of input modalities."""
        present = set(modalities)
        if not present or not present <= set(self.meta["modalities"]):
            return False
        subsets = self.meta.get("modality_subsets", "any-nonempty")
        if subsets == "any-nonempty":
            return True
        return any(present == set(s) for s in subsets)

    @property
    def thresholds(self) -> tuple[float, float, float]:
        """Decision threshold per region (WT, TC, ET) with all inputs; see :func:`region_thresholds`."""
        return region_thresholds(self.meta)

    def chosen_thresholds(self, present: Iterable[str], slice_mm: float | None = None
                          ) -> tuple[tuple[float, float, float], bool]:
        """Decision threshold per region for this set of inputs (its own when calibrated for it) and series
        whose thickest voxel side is ``slice_mm``, and whether they are a thick-slice set
        (:func:`chosen_thresholds`)."""
        return chosen_thresholds(self.meta, present, slice_mm)

    def confident_core(self, present: Iterable[str], slice_mm: float | None = None) -> tuple[float, float] | None:
        """The thick-slice confident-core rule for these inputs (:func:`confident_core_rule`)."""
        return confident_core_rule(self.meta, present, slice_mm)

    def card(self) -> str:
        """A short human-readable model card (for tooltips and ``--json`` summaries)."""
        return model_card(self.meta, self.name)


def subset_key(present: Iterable[str]) -> str:
    """A set of inputs as ``inference.subset_thresholds`` names it: codes in t1n, t1c, t2w, t2f order, e.g.
    ``"t1c,t2f"``."""
    codes = set(present)
    return ",".join(c for c in MODALITY_CODES if c in codes)


def _three(value: Any, what: str) -> tuple[float, float, float]:
    values = [value] * 3 if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    if (not isinstance(values, (list, tuple)) or len(values) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 < v < 1.0 for v in values)):
        raise BundleError(f"{what} must be a number in (0, 1) or a list of three (WT, TC, ET), got {value!r}.")
    return (float(values[0]), float(values[1]), float(values[2]))


def _check_subset_key(key: Any, what: str) -> None:
    """An input set as a key of ``what``: modality codes joined by commas in :data:`MODALITY_CODES` order."""
    codes = str(key).split(",")
    if any(c not in MODALITY_CODES for c in codes) or subset_key(codes) != key:
        raise BundleError(f"{what} has the key {key!r}; keys are modality codes joined by commas in the order "
                          f"{', '.join(MODALITY_CODES)} (e.g. 't1c,t2f').")


def _threshold_sets(block: dict[str, Any], where: str) -> tuple[tuple[float, float, float], dict[str, tuple]]:
    """``threshold`` and ``subset_thresholds`` of one block of ``inference``, checked."""
    default = _three(block.get("threshold", 0.5), f"{where}threshold")
    subsets = block.get("subset_thresholds") or {}
    if not isinstance(subsets, dict):
        raise BundleError(f"{where}subset_thresholds must map input sets to thresholds, got {subsets!r}.")
    chosen = {}
    for key, value in subsets.items():
        _check_subset_key(key, f"{where}subset_thresholds")
        chosen[key] = _three(value, f"{where}subset_thresholds[{key!r}]")
    return default, chosen


def thick_slice_limit(meta: dict[str, Any]) -> float | None:
    """``inference.thick_slices.min_slice_mm``: from this slice thickness on, the thick-slice thresholds hold
    (None: the bundle has none)."""
    thick = (meta.get("inference") or {}).get("thick_slices")
    if thick is None:
        return None
    limit = thick.get("min_slice_mm") if isinstance(thick, dict) else None
    if not isinstance(limit, (int, float)) or isinstance(limit, bool) or not math.isfinite(limit) or limit <= 0:
        raise BundleError("inference.thick_slices must be {'min_slice_mm': mm, 'threshold': [wt, tc, et], ...}, "
                          f"got {thick!r}.")
    return float(limit)


def region_thresholds(meta: dict[str, Any], present: Iterable[str] | None = None,
                      slice_mm: float | None = None) -> tuple[float, float, float]:
    """``inference.threshold`` as one threshold per region (WT, TC, ET).

    A single number applies to every region (the format before calibration, still valid); a list of three
    comes from threshold calibration on validation cases (``mtss calibrate``). ``inference.subset_thresholds``
    (``{"t1c,t2f": [wt, tc, et], ...}``, chosen on the validation cases given only those inputs) overrides it
    when ``present`` is exactly one of its sets.

    ``inference.thick_slices`` (``{"min_slice_mm": 4, "threshold": [...], "subset_thresholds": {...}}``, chosen
    on clinical studies by ``mtss calibrate-thick-slices``) holds instead when ``slice_mm``, the thickest
    voxel side among the input series, reaches ``min_slice_mm``: thick slices blur the inputs, and the
    network's probabilities spread further than on the 1 mm grids the other thresholds were chosen on. An
    input subset without its own thick-slice set keeps its ordinary set. Every entry is checked whatever
    ``present`` and ``slice_mm`` are."""
    return chosen_thresholds(meta, present, slice_mm)[0]


def chosen_thresholds(meta: dict[str, Any], present: Iterable[str] | None = None,
                      slice_mm: float | None = None) -> tuple[tuple[float, float, float], bool]:
    """:func:`region_thresholds`, and whether they are a thick-slice set (an input subset without its own
    thick-slice set keeps its ordinary one: False)."""
    inference = meta.get("inference") or {}
    default, chosen = _threshold_sets(inference, "inference.")
    key = None if present is None or set(present) == set(MODALITY_CODES) else subset_key(present)
    limit = thick_slice_limit(meta)
    if limit is not None:
        thick_default, thick_chosen = _threshold_sets(inference["thick_slices"], "inference.thick_slices.")
        if slice_mm is not None and slice_mm >= limit:
            if key is None:
                return thick_default, True
            if key in thick_chosen:
                return thick_chosen[key], True
    return (default if key is None else chosen.get(key, default)), False


def confident_core_rule(meta: dict[str, Any], present: Iterable[str] | None = None,
                        slice_mm: float | None = None) -> tuple[float, float] | None:
    """``(probability, min_fraction)`` of ``inference.thick_slices.confident_core`` for these inputs on series
    whose thickest voxel side is ``slice_mm`` (:func:`MTSSSegmenterLib.postprocess.remove_unconfident_components`);
    None when the bundle has none, the slices are thinner than ``min_slice_mm``, or the rule was not chosen
    for this input set. The block reads ``{"probability": 0.99, "min_fraction": {"t1n,t1c,t2w,t2f": 0.1}}``
    (input sets as :func:`subset_key` writes them; ``mtss calibrate-confident-core``). It is checked
    whatever ``present`` and ``slice_mm`` are."""
    limit = thick_slice_limit(meta)
    block = meta["inference"]["thick_slices"].get("confident_core") if limit is not None else None
    if block is None:
        return None
    where = "inference.thick_slices.confident_core"
    shape = f"{where} must be {{'probability': p in (0, 1), 'min_fraction': {{inputs: fraction in [0, 1]}}}}"
    if not isinstance(block, dict):
        raise BundleError(f"{shape}, got {block!r}.")
    probability, fractions = block.get("probability"), block.get("min_fraction")
    if (not isinstance(probability, (int, float)) or isinstance(probability, bool) or not 0.0 < probability < 1.0
            or not isinstance(fractions, dict)):
        raise BundleError(f"{shape}, got {block!r}.")
    for key, value in fractions.items():
        _check_subset_key(key, f"{where}.min_fraction")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
            raise BundleError(f"{where}.min_fraction[{key!r}] must be a fraction in [0, 1], got {value!r}.")
    if present is None or slice_mm is None or slice_mm < limit:
        return None
    fraction = fractions.get(subset_key(present))
    return (float(probability), float(fraction)) if fraction else None


WEAK_INPUTS_MARGIN = 0.1  # whole-tumour validation Dice this far below all four inputs' gets a warning


def _validation_wt(found: dict[str, Any], key: str) -> float | None:
    """Whole-tumour validation Dice of one input set in a calibration's record (the four inputs: ``"all"``)."""
    entry = found if key == "all" else (found.get("subsets") or {}).get(key) or {}
    value = (entry.get("dice") or {}).get("WT")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def weak_inputs_warning(meta: dict[str, Any], present: Iterable[str], thick: bool = False) -> str | None:
    """A warning when the bundle's own validation cases say that these inputs alone segment the whole tumour
    much worse than all four (by ``WEAK_INPUTS_MARGIN`` Dice or more), naming the one series whose addition
    helps most; None otherwise, or when the bundle records no such figures.

    The figures are those its thresholds were chosen on: ``metrics.calibration`` (validation cases) or, for
    thick slices, ``metrics.thick_slice_calibration`` (clinical studies). On thick slices the default model's
    whole-tumour Dice was 0.28 from T1c alone against 0.69 from all four."""
    codes = set(present)
    if not codes or codes >= set(MODALITY_CODES):
        return None
    found = (meta.get("metrics") or {}).get("thick_slice_calibration" if thick else "calibration") or {}
    key = subset_key(codes)
    own, full = _validation_wt(found, key), _validation_wt(found, "all")
    if own is None or full is None or own > full - WEAK_INPUTS_MARGIN:
        return None
    options = []
    for code in MODALITY_CODES:
        if code not in codes:
            bigger = subset_key(codes | {code})
            value = _validation_wt(found, "all" if len(codes) == len(MODALITY_CODES) - 1 else bigger)
            if value is not None:
                options.append((value, code, bigger))
    where = "clinical studies with thick slices" if thick else "validation cases"
    text = (f"From {'+'.join(key.split(','))} alone this model's whole-tumour Dice on its {where} was {own:.2f}, "
            f"against {full:.2f} from all four series: check the result closely")
    if options:
        value, code, bigger = max(options)
        named = "all four" if len(codes) == len(MODALITY_CODES) - 1 else bigger.replace(",", "+")
        text += f"; adding the {modality(code).title} series ({named}: {value:.2f}) helps most"
    return text + "."


MIRROR_AXES: dict[str, int] = {"SI": 0, "AP": 1, "LR": 2}  # axes of the canonical LPS (z, y, x) arrays


def mirror_axes_of(names: Any, what: str = "inference.mirror") -> tuple[int, ...]:
    """Test-time mirroring axis names (e.g. ``["LR"]``) as spatial axes of the network's arrays.

    Each named axis doubles the network passes; the logits of all flip combinations are averaged."""
    if not isinstance(names, list) or any(n not in MIRROR_AXES for n in names) or len(set(names)) != len(names):
        raise BundleError(f"{what} must be a list of distinct axes among {', '.join(MIRROR_AXES)} "
                          f"(left-right, anterior-posterior, superior-inferior), got {names!r}.")
    return tuple(sorted(MIRROR_AXES[n] for n in names))


def mirror_axes(meta: dict[str, Any]) -> tuple[int, ...]:
    """A bundle's ``inference.mirror`` as spatial axes (:func:`mirror_axes_of`)."""
    return mirror_axes_of((meta.get("inference") or {}).get("mirror") or [])


def parse_mirror(text: str) -> list[str]:
    """A ``--mirror`` option: ``LR`` or ``lr,si`` -> ``["LR", "SI"]``; ``none`` or empty -> ``[]``."""
    if text.strip().lower() in ("", "none"):
        return []
    return [a.strip().upper() for a in text.split(",") if a.strip()]


def model_card(meta: dict[str, Any], name: str) -> str:
    """Populations, inputs, training data, licence and metrics of a bundle, for tooltips."""
    subsets = meta.get("modality_subsets", "any-nonempty")
    inputs = ("any non-empty subset of " + ", ".join(meta.get("modalities", []))) if subsets == "any-nonempty" \
        else "; ".join("+".join(s) for s in subsets)
    lines = [f"{name}: {meta.get('description', '')}".strip().rstrip(":"),
             f"Populations: {', '.join(meta.get('populations', [])) or 'unknown'}", f"Inputs: {inputs}",
             f"Trained on: {meta.get('trained_on', 'unknown')}", f"Licence: {meta.get('license', 'unknown')}"]
    summary = (meta.get("metrics") or {}).get("summary")
    if summary:
        lines.append(f"Metrics: {summary}")
    try:
        thresholds = region_thresholds(meta)
        thick_mm = thick_slice_limit(meta)
    except BundleError:
        thresholds = thick_mm = None
    if thresholds and thresholds != (0.5, 0.5, 0.5):
        chosen = " (chosen on validation cases)" if (meta.get("metrics") or {}).get("calibration") else ""
        lines.append("Thresholds WT/TC/ET: " + "/".join(f"{t:g}" for t in thresholds) + chosen)
    own = (meta.get("inference") or {}).get("subset_thresholds") or {}
    if thresholds and own:
        summary = subset_thresholds_summary(own)
        lines.append(summary[0].upper() + summary[1:])
    if thick_mm is not None:
        thick = region_thresholds(meta, slice_mm=thick_mm)
        lines.append(f"Series with slices of {thick_mm:g} mm or more: thresholds WT/TC/ET "
                     + "/".join(f"{t:g}" for t in thick) + " (chosen on clinical studies)")
    mirror = (meta.get("inference") or {}).get("mirror")
    if mirror:
        lines.append(f"Test-time mirroring: {', '.join(map(str, mirror))} ({2 ** len(mirror)} network passes)")
    try:
        sizes = min_component_sizes(meta)
    except BundleError:
        sizes = None
    if sizes and any(sizes):
        lines.append("Smallest components kept WT/TC/ET: " + "/".join(f"{v:g}" for v in sizes)
                     + " mL (chosen on validation cases)")
    try:
        rule = confident_core_rule(meta, MODALITY_CODES, thick_mm)
    except BundleError:
        rule = None
    if rule:
        lines.append(f"Thick slices: whole-tumour components with under {rule[1]:.0%} of their voxels at p >= "
                     f"{rule[0]:g} are removed (chosen on clinical studies)")
    return "\n".join(lines)


def subset_thresholds_summary(own: dict[str, Any]) -> str:
    """``own thresholds for N input subsets (e.g. t1c,t2f: 0.5/0.65/0.5)`` for ``{subset key: thresholds}``."""
    example = "t1c,t2f" if "t1c,t2f" in own else next(iter(own))
    return (f"own thresholds for {len(own)} input subsets (e.g. {example}: "
            + "/".join(f"{t:g}" for t in _three(own[example], f"thresholds of {example}")) + ")")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename over it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_bundle(network: SegNetwork, meta: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``model.safetensors`` then ``model.json`` (with the weights' checksum) atomically."""
    from safetensors.torch import save

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BundleError(f"Cannot create the bundle folder '{out}': {exc.strerror}. Choose a writable folder.") from exc
    state = {k: v.detach().to("cpu").contiguous() for k, v in network.state_dict().items()}
    blob = save(state)
    meta = copy.deepcopy(meta)
    meta["network"] = network.config.to_dict()
    meta["weights_sha256"] = hashlib.sha256(blob).hexdigest()
    meta.setdefault("created", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    _validate_meta(meta, out)
    atomic_write_bytes(out / WEIGHTS, blob)
    atomic_write_bytes(out / META, (json.dumps(meta, indent=2, sort_keys=False) + "\n").encode())
    log.info("Wrote bundle %s (%d tensors)", out, len(state))
    return out


def _validate_meta(meta: dict[str, Any], where: Path) -> None:
    def fail(msg: str) -> BundleError:
        return BundleError(f"Bundle '{where}': {msg}")

    if meta.get("format") != FORMAT:
        raise fail(f"'{META}' is not an MTSS bundle description (format={meta.get('format')!r}, expected '{FORMAT}').")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise fail(f"format_version {version!r} is not supported by this MTSS ({__version__}, reads <= {FORMAT_VERSION}); "
                   "update MTSS.")
    for key in ("network", "modalities", "labels", "regions", "preprocessing", "inference", "weights_sha256"):
        if key not in meta:
            raise fail(f"'{META}' lacks the required key '{key}'.")
    bad = [m for m in meta["modalities"] if m not in MODALITY_CODES]
    if bad:
        raise fail(f"unknown modalities {bad} in '{META}'; known: {', '.join(MODALITY_CODES)}.")
    if meta.get("modality_encoding") not in ("mask-channels", "none"):
        raise fail(f"unknown modality_encoding {meta.get('modality_encoding')!r}.")
    try:
        NetworkConfig.from_dict(meta["network"])
    except (TypeError, ValueError) as exc:
        raise fail(f"invalid network config: {exc}") from exc
    try:
        region_thresholds(meta)
        mirror_axes(meta)
        min_component_sizes(meta)
        confident_core_rule(meta)
    except BundleError as exc:
        raise fail(f"'{META}': {exc}") from exc


def read_meta(path: str | Path) -> dict[str, Any]:
    """Read and validate ``model.json`` of a bundle folder (no weights loaded)."""
    folder = Path(path)
    if not folder.exists():
        raise BundleError(f"Model bundle '{folder}' does not exist. Give a folder containing {WEIGHTS} and {META}.")
    if folder.is_file():
        raise BundleError(f"'{folder}' is a file; a model bundle is a folder containing {WEIGHTS} and {META}.")
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    missing = [n for n in (WEIGHTS, META) if not (folder / n).is_file()]
    if missing:
        extra = (f" It holds {', '.join(pickles)}: pickled checkpoints are never loaded (they can run code); "
                 "convert the weights to safetensors.") if pickles else ""
        raise BundleError(f"Model bundle '{folder}' lacks {' and '.join(missing)}.{extra}")
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"Bundle '{folder}': {META} is not valid JSON ({exc}). Re-export or re-download the bundle.") from exc
    if not isinstance(meta, dict):
        raise BundleError(f"Bundle '{folder}': {META} must hold a JSON object.")
    _validate_meta(meta, folder)
    return meta


def load_bundle(path: str | Path) -> Bundle:
    """Load a bundle folder: validate ``model.json``, check the weights' sha256, rebuild the network."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    folder = Path(path)
    meta = read_meta(folder)
    blob = (folder / WEIGHTS).read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != meta["weights_sha256"]:
        raise BundleError(
            f"Bundle '{folder}': {WEIGHTS} does not match the checksum recorded in {META} "
            f"(sha256 {digest[:12]}... != {str(meta['weights_sha256'])[:12]}...). The file is corrupt or was "
            "modified; re-copy the bundle."
        )
    try:
        state = load(blob)
    except (SafetensorError, ValueError) as exc:
        raise BundleError(f"Bundle '{folder}': {WEIGHTS} is not a readable safetensors file ({exc}).") from exc
    from .networks import build_network

    network = build_network(meta["network"])
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BundleError(f"Bundle '{folder}': the weights do not fit the network in {META}: {str(exc)[:400]}") from exc
    network.eval()
    return Bundle(folder, meta, network)


def _is_bundle(folder: Path) -> bool:
    return (folder / META).is_file() and (folder / WEIGHTS).is_file()


def search_path() -> list[Path]:
    """Folders searched for named bundles, in order."""
    return [user_model_dir(), PACKAGE_DATA]


def find_bundle(model: str | Path | None = None) -> Path:
    """Resolve ``--model``: a path, or a bundle name in the user folder, then in the package data."""
    if model is not None:
        p = Path(model).expanduser()
        if p.exists() or os.sep in str(model) or str(model).startswith("."):
            return p  # load_bundle explains what is wrong with it
        for root in search_path():
            if _is_bundle(root / str(model)):
                return root / str(model)
        names = ", ".join(b.name for b in list_bundles()) or "none"
        raise BundleError(f"No model bundle named '{model}' in {' or '.join(map(str, search_path()))} "
                          f"and no such folder. Installed bundles: {names}.")
    for root in search_path():
        if _is_bundle(root / DEFAULT_NAME):
            return root / DEFAULT_NAME
    raise BundleError(
        "No default model is installed yet: this MTSS build ships no trained default model. "
        "Give a bundle with --model PATH (e.g. one made by `mtss distill`), or put one in "
        f"{user_model_dir() / DEFAULT_NAME}."
    )


def list_bundles() -> list[Path]:
    """Every bundle folder in the user model folder and the package data (user's first)."""
    found: list[Path] = []
    for root in search_path():
        if root.is_dir():
            found.extend(sorted(p for p in root.iterdir() if p.is_dir() and _is_bundle(p)))
    return found


def install_bundle(source: str | Path, name: str | None = None) -> Path:
    """Copy a checked bundle into the user model folder (what 'import from disk' in Slicer does)."""
    import shutil

    bundle_meta = read_meta(source)
    target = user_model_dir() / (name or str(bundle_meta.get("name") or Path(source).name))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".install-"))
    for fname in (WEIGHTS, META):
        shutil.copy2(Path(source) / fname, tmp / fname)
    for extra in Path(source).iterdir():
        if extra.suffix in (".md", ".png") and extra.is_file():
            shutil.copy2(extra, tmp / extra.name)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target
