"""Prepared training cases, each preprocessed once and kept in memory up to a budget, else on disk.

Every case goes through :func:`MTSSSegmenterLib.preprocess.prepare_case` with the bundle's
preprocessing at the run's working spacing (so training sees exactly what inference will), and is kept
as four float16 image channels, the modalities present, the label map and the brain mask. Cases that
fit in the memory budget stay in RAM; the others are written as ``.npy`` files in the run folder and
memory-mapped. Under ``torchrun``, the processes prepare disjoint shares of the cases, write them to the
run folder, and each then loads all of them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from MTSSSegmenterLib.constants import MODALITY_CODES, REGION_CODES
from MTSSSegmenterLib.errors import MTSSError
from MTSSSegmenterLib.io import read_image, read_labels
from MTSSSegmenterLib.clinical import prepare_study
from MTSSSegmenterLib.preprocess import PreparedCase, prepare_case, reference_modality, validate_inputs

from .aligned_labels import aligned_label_source, label_fractions, source_digest, source_files
from .data import BrokenCase, CaseRecord
from .distributed import DistContext

log = logging.getLogger(__name__)

N_MOD = len(MODALITY_CODES)
CACHE_VERSION = 3  # 2: cases go through prepare_study (registration, brain extraction) as in segment; 3: fractions
ARRAYS = ("image", "seg", "brain", "fractions")  # one .npy file each per case
# The segmenter modules a prepared case depends on: a change to any of them makes a new cache key, so a
# persistent --cache-dir never serves cases prepared by older registration or brain-extraction code.
PREPARATION_MODULES = ("bias", "clinical", "geometry", "io", "preprocess", "registration", "skull")


def preparation_fingerprint() -> str:
    """sha256 of the source of :data:`PREPARATION_MODULES` (the code that turns files into a prepared case)."""
    import importlib

    digest = hashlib.sha256()
    for name in PREPARATION_MODULES:
        module = importlib.import_module(f"MTSSSegmenterLib.{name}")
        digest.update(name.encode())
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()


@dataclass
class CachedCase:
    """One prepared case in canonical (z, y, x) order at the working spacing, cropped to the brain."""

    name: str
    population: str
    image: np.ndarray  # (4, Z, Y, X) float16, zero channels for missing modalities
    present: np.ndarray  # (4,) float32, 1 where the modality exists
    seg: np.ndarray  # (Z, Y, X) uint8 labels 0..3
    brain: np.ndarray  # (Z, Y, X) bool
    label_mask: np.ndarray  # (3,) float32, 1 for each region the label map marks
    spacing_zyx: tuple[float, float, float]
    fractions: np.ndarray  # (3, Z, Y, X) uint8: share x 255 of each voxel in WT, TC, ET (soft targets)

    @property
    def nbytes(self) -> int:
        return int(self.image.nbytes + self.seg.nbytes + self.brain.nbytes + self.fractions.nbytes)

    def network_input(self, keep: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
        """(8, Z, Y, X) float32: image channels then modality-mask channels (``keep`` drops modalities)."""
        present = self.present if keep is None else self.present * np.asarray(keep, dtype=np.float32)
        image = np.asarray(self.image, dtype=np.float32) * present[:, None, None, None]
        masks = np.broadcast_to(present[:, None, None, None], image.shape).astype(np.float32)
        return np.concatenate([image, masks])


def from_prepared(name: str, population: str, prepared: PreparedCase,
                  labels: Sequence[str] = REGION_CODES) -> CachedCase:
    """A :class:`CachedCase` from what ``prepare_case`` returned (the case must have a label map)."""
    if prepared.seg is None or prepared.fractions is None:
        raise MTSSError(f"Case '{name}' was prepared without a label map; training needs one.")
    present = np.array([1.0 if m in prepared.present else 0.0 for m in MODALITY_CODES], dtype=np.float32)
    return CachedCase(name, population, prepared.image[:N_MOD].astype(np.float16), present,
                      prepared.seg.astype(np.uint8), prepared.brain.astype(bool),
                      np.array([1.0 if r in labels else 0.0 for r in REGION_CODES], dtype=np.float32),
                      tuple(float(s) for s in prepared.working_spacing_zyx),  # type: ignore[arg-type]
                      prepared.fractions.astype(np.uint8))


def prepare_record(record: CaseRecord, preprocessing: dict[str, Any], aligned_labels: bool = False) -> CachedCase:
    """Read and prepare one case from its files (raises :class:`MTSSError` or OSError when it cannot).

    The case goes through what ``mtss segment`` does before the network: :func:`prepare_study` registers
    series on their own grids to the reference (a clinical study, e.g. ``mtss synth --clinical``; its label
    map lies on the reference's grid), detects a skull and extracts the brain, then :func:`prepare_case`.
    Skull-stripped cases on one grid pass through unchanged (no transforms, their foreground is the brain).
    With ``aligned_labels``, a synthetic clinical study's soft targets come from the aligned label map it was
    drawn from (:mod:`.aligned_labels`) instead of its thick-slice label map.
    """
    images = validate_inputs({code: read_image(path, f"{record.name} {code}") for code, path in record.files.items()})
    seg = read_labels(record.seg) if record.seg else None
    ref = reference_modality(images)
    source = aligned_label_source(record.folder, ref) if aligned_labels and seg is not None else None
    images, transforms, brain, _ = prepare_study(images, ref)
    prepared = prepare_case(images, preprocessing, seg=seg, reference=ref, transforms=transforms, brain_mask=brain)
    if source is not None:
        prepared = replace(prepared, fractions=label_fractions(*source, prepared))
    return from_prepared(record.name, record.population, prepared, record.labels)


def _prepare_or_report(args: tuple[CaseRecord, dict[str, Any], bool]) -> CachedCase | BrokenCase:
    record, preprocessing, aligned_labels = args
    try:
        return prepare_record(record, preprocessing, aligned_labels)
    except (MTSSError, OSError, RuntimeError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        return BrokenCase(record.name, str(record.folder), f"cannot be prepared: {reason}")


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _prepare_all(todo: list[tuple[CaseRecord, list[Any] | None]], preprocessing: dict[str, Any], workers: int,
                 aligned_labels: bool = False):
    """Yield ``(record, stamp, CachedCase or BrokenCase)`` in order, over a process pool when ``workers`` > 1."""
    jobs = [(record, preprocessing, aligned_labels) for record, _ in todo]
    if workers <= 1 or len(todo) <= 1:
        results = map(_prepare_or_report, jobs)
        for (record, stamp), result in zip(todo, results):
            yield record, stamp, result
        return
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ctx.Pool(min(workers, len(todo)), initializer=_one_thread) as pool:
        for (record, stamp), result in zip(todo, pool.imap(_prepare_or_report, jobs)):
            yield record, stamp, result


def _stamp(record: CaseRecord, aligned_labels: bool = False) -> list[Any]:
    files = sorted(record.files.items()) + ([("seg", record.seg)] if record.seg else [])
    if aligned_labels:
        files += [("aligned-label-source", path) for path in source_files(record.folder)]
    out: list[Any] = []
    for key, path in files:
        st = Path(path).stat()
        out.append([key, Path(path).name, st.st_size, st.st_mtime_ns])
    return out


def _available_memory() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def default_budget(world: int = 1) -> int:
    """A third of the memory available now, shared among the processes of this machine."""
    return int(_available_memory() * 0.33 / max(1, world))


def _atomic_save(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class CaseCache:
    """Prepared cases by name: in RAM up to ``budget_bytes``, the rest memory-mapped from ``folder``.

    Args:
        preprocessing: the preprocessing dict given to ``prepare_case`` (bundle preprocessing at the
            run's working spacing, plus ``modality_encoding``).
        folder: where cases that do not fit in memory go (``RUN/cache``); None keeps everything in RAM.
        budget_bytes: RAM for arrays; None: :func:`default_budget`.
        persist: write every prepared case to ``folder`` (not only those beyond the budget), so that other
            runs with the same preprocessing find it there (checked against the files' size and time).
        aligned_labels: soft targets of synthetic clinical studies from the aligned label map they were drawn
            from (:mod:`.aligned_labels`); a cache folder of its own.
    """

    def __init__(self, preprocessing: dict[str, Any], folder: str | Path | None = None,
                 budget_bytes: int | None = None, dist: DistContext | None = None, persist: bool = False,
                 aligned_labels: bool = False) -> None:
        self.preprocessing = dict(preprocessing)
        self.aligned_labels = aligned_labels
        self.persist = persist and folder is not None
        self.dist = dist or DistContext()
        self.budget = default_budget(self.dist.world) if budget_bytes is None else int(budget_bytes)
        keyed: list[Any] = [CACHE_VERSION, preparation_fingerprint(), self.preprocessing]
        if aligned_labels:
            keyed.append(["aligned-labels", source_digest()])
        key = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:12]
        self.folder = Path(folder) / key if folder is not None else None
        self._memory: dict[str, CachedCase] = {}
        self._disk: dict[str, tuple[str, np.ndarray, np.ndarray, tuple[float, float, float]]] = {}
        self.used = 0

    # ------------------------------------------------------------------ filling
    def put(self, case: CachedCase) -> None:
        """Add a prepared case (e.g. generated in memory); spills to disk beyond the budget."""
        if self.used + case.nbytes <= self.budget or self.folder is None:
            self._memory[case.name] = case
            self.used += case.nbytes
        else:
            self._write(case)
            self._disk_entry(case.name)

    def fill(self, records: Sequence[CaseRecord], progress: Callable[[int, int], None] | None = None,
             workers: int = 1) -> list[BrokenCase]:
        """Prepare every record (this process's share under torchrun) over ``workers`` processes; return the
        cases that could not be prepared."""
        d = self.dist
        shared = d.distributed and self.folder is not None
        mine = [r for i, r in enumerate(records) if not shared or i % d.world == d.rank]
        broken: list[BrokenCase] = []
        todo: list[tuple[CaseRecord, list[Any] | None]] = []
        for record in mine:
            if record.name in self._memory:
                continue
            try:
                stamp = _stamp(record, self.aligned_labels)
            except OSError as exc:
                broken.append(BrokenCase(record.name, str(record.folder), f"cannot be read: {exc}"))
                continue
            if self._on_disk(record.name, stamp):
                if not shared:
                    self._load_disk(record.name)
                continue
            todo.append((record, stamp))
        for i, (record, stamp, result) in enumerate(_prepare_all(todo, self.preprocessing, workers, self.aligned_labels)):
            if progress:
                progress(i, len(todo))
            if isinstance(result, BrokenCase):
                broken.append(result)
                log.warning("Leaving out case %s: %s", result.name, result.reason)
            elif shared:
                self._write(result, stamp)
            elif self.persist:
                self._write(result, stamp)
                self._load_disk(result.name)
            elif self.used + result.nbytes <= self.budget or self.folder is None:
                self._memory[result.name] = result
                self.used += result.nbytes
            else:
                self._write(result, stamp)
                self._disk_entry(result.name)
        if progress:
            progress(len(todo), len(todo))
        if shared:
            d.barrier()
            broken = [b for part in d.gather(broken) for b in part]
            bad = {b.name for b in broken}
            for record in records:
                if record.name not in bad:
                    self._load_disk(record.name)
        return broken

    # ------------------------------------------------------------------ disk
    def _paths(self, name: str) -> dict[str, Path]:
        assert self.folder is not None
        return {k: self.folder / f"{name}.{k}.npy" for k in ARRAYS} | {"json": self.folder / f"{name}.json"}

    def _on_disk(self, name: str, stamp: list[Any]) -> bool:
        if self.folder is None:
            return False
        p = self._paths(name)
        if not all(x.is_file() for x in p.values()):
            return False
        try:
            info = json.loads(p["json"].read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return False
        return info.get("stamp") == stamp

    def _write(self, case: CachedCase, stamp: list[Any] | None = None) -> None:
        assert self.folder is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        p = self._paths(case.name)
        _atomic_save(p["image"], case.image)
        _atomic_save(p["seg"], case.seg)
        _atomic_save(p["brain"], case.brain)
        _atomic_save(p["fractions"], case.fractions)
        info = {"population": case.population, "present": case.present.tolist(),
                "label_mask": case.label_mask.tolist(), "spacing_zyx": list(case.spacing_zyx), "stamp": stamp}
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{case.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(info, f)
        os.replace(tmp, p["json"])  # written last: marks the entry complete

    def _disk_entry(self, name: str) -> None:
        info = json.loads(self._paths(name)["json"].read_text(encoding="utf-8"))
        self._disk[name] = (info["population"], np.asarray(info["present"], np.float32),
                            np.asarray(info["label_mask"], np.float32), tuple(info["spacing_zyx"]))

    def _load_disk(self, name: str) -> None:
        """Bring a case written to disk into RAM if it fits, else keep it memory-mapped."""
        self._disk_entry(name)
        p = self._paths(name)
        size = sum(p[k].stat().st_size for k in ARRAYS)
        if self.used + size <= self.budget:
            self._memory[name] = self._read(name, mmap=False)
            self.used += size
            del self._disk[name]

    def _read(self, name: str, mmap: bool) -> CachedCase:
        pop, present, label_mask, spacing = self._disk[name]
        p = self._paths(name)
        mode = "r" if mmap else None
        return CachedCase(name, pop, np.load(p["image"], mmap_mode=mode), present, np.load(p["seg"], mmap_mode=mode),
                          np.load(p["brain"], mmap_mode=mode), label_mask, spacing,  # type: ignore[arg-type]
                          np.load(p["fractions"], mmap_mode=mode))

    # ------------------------------------------------------------------ access
    def __contains__(self, name: str) -> bool:
        return name in self._memory or name in self._disk

    def __len__(self) -> int:
        return len(self._memory) + len(self._disk)

    def names(self) -> list[str]:
        return sorted(set(self._memory) | set(self._disk))

    def get(self, name: str) -> CachedCase:
        if name in self._memory:
            return self._memory[name]
        if name in self._disk:
            return self._read(name, mmap=True)
        raise KeyError(f"Case '{name}' is not in the cache (known: {len(self)} cases).")

    def describe(self) -> str:
        return (f"{len(self._memory)} cases in memory ({self.used / 2**20:.0f} MiB of a {self.budget / 2**20:.0f} MiB budget), "
                f"{len(self._disk)} on disk" + (f" in {self.folder}" if self._disk else ""))


def prepare_arrays(images_xyz: dict[str, np.ndarray], seg_xyz: np.ndarray, affine_ras: np.ndarray,
                   preprocessing: dict[str, Any]) -> PreparedCase:
    """Prepare a case held in memory as NIfTI-style arrays (x, y, z) and a RAS affine, e.g. a
    :class:`~MTSSTrainingLib.synth.case.SynthCase` (``case.images, case.seg, case.affine``)."""
    from MTSSSegmenterLib.io import image_from_nifti_array

    images = {code: image_from_nifti_array(arr, affine_ras) for code, arr in images_xyz.items()}
    seg = image_from_nifti_array(np.asarray(seg_xyz, dtype=np.uint8), affine_ras)
    return prepare_case(images, preprocessing, seg=seg)


def memory_data(cases: Sequence[tuple[str, str, PreparedCase]], preprocessing: dict[str, Any],
                labels: Sequence[str] = REGION_CODES) -> tuple[Any, CaseCache]:
    """``(DataIndex, CaseCache)`` for training on cases prepared in memory (no files): give it to
    ``train_teacher(config, data=...)``, ``train_joint`` or ``distill``.

    Args:
        cases: ``(case name, population code, prepared case)`` triples, prepared with ``preprocessing``.
        preprocessing: ``TrainConfig.preprocessing()`` of the run.
        labels: regions the label maps mark.
    """
    from .data import DataIndex

    cache = CaseCache(preprocessing, None, budget_bytes=1 << 62)
    records = []
    for name, pop, prepared in cases:
        cache.put(from_prepared(name, pop, prepared, labels))
        records.append(CaseRecord(name, Path("<memory>"), pop, {}, None, "memory", tuple(labels)))
    return DataIndex([], records, [], {"memory": list(labels)}), cache
