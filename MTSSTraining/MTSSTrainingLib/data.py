"""Training data: find the cases of a data folder, know their population and labels, split them.

A data folder holds BraTS case folders (BraTS 2023 ``BraTS-GLI-00000-000/BraTS-GLI-00000-000-t1c.nii.gz``
naming, BraTS 2018-2022 ``BraTS2021_00000/BraTS2021_00000_t1ce.nii.gz`` naming, or ``mtss synth`` output),
directly or one level down in dataset sub-folders (``DATA/glioma/BraTS-GLI-...``). Each case gets:

* a **population** (GLI PED SSA MEN MET): from a mapping (``{case: population}``), else from the case
  name ``BraTS-<POP>-...``; BraTS 2018-2022 names are adult glioma (GLI);
* the **regions its labels mark** (partial labels): all of WT, TC, ET unless ``cohort.json`` in its
  dataset folder (or a mapping file) says otherwise, e.g. ``{"labels": ["WT"]}`` for a dataset whose label
  maps only outline the whole tumour;
* its files, found with :func:`MTSSSegmenterLib.io.find_case_files`.

A case that cannot be used (no label map, unknown population, two files for one modality, unreadable
file) is reported in :attr:`DataIndex.broken` and left out; it never stops a run.

Mapping and ``cohort.json`` files are JSON. Accepted shapes (all keys optional)::

    {"BraTS-X-0001": "GLI", ...}                                 # flat case -> population
    {"populations": {"case": "GLI"}, "labels": ["WT"]}           # dataset-wide labelled regions
    {"labels": {"case or dataset": ["WT", "TC", "ET"]}}          # per case or per dataset
    {"cases": [{"name": "case", "population": "GLI", "labels": ["WT"]}, ...]}   # or {"cases": {name: {...}}}
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from MTSSSegmenterLib.constants import (
    POPULATION_CODES,
    REGION_CODES,
    population,
    region,
)
from MTSSSegmenterLib.errors import InputError
from MTSSSegmenterLib.io import find_case_files

log = logging.getLogger(__name__)

COHORT_FILE = "cohort.json"
_BRATS2023 = re.compile(r"^BraTS-(?P<pop>[A-Za-z]+)-\d+", re.IGNORECASE)
_BRATS2021 = re.compile(r"^BraTS(20\d\d)?_(Training_|Validation_)?\d+", re.IGNORECASE)


@dataclass
class CaseRecord:
    """One usable case: where its files are and what it is."""

    name: str
    folder: Path
    population: str
    files: dict[str, Path]
    seg: Path | None
    dataset: str
    labels: tuple[str, ...] = REGION_CODES

    @property
    def label_mask(self) -> tuple[float, float, float]:
        """1.0 for each region channel (WT, TC, ET) that this case's label map marks."""
        return tuple(1.0 if r in self.labels else 0.0 for r in REGION_CODES)  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "folder": str(self.folder), "population": self.population,
                "files": {k: str(v) for k, v in self.files.items()}, "seg": str(self.seg) if self.seg else None,
                "dataset": self.dataset, "labels": list(self.labels)}


@dataclass
class BrokenCase:
    """A case left out, and why (said so that the user can fix it)."""

    name: str
    folder: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "folder": self.folder, "reason": self.reason}


@dataclass
class DataIndex:
    """The cases found under one or more data folders."""

    roots: list[Path]
    cases: list[CaseRecord]
    broken: list[BrokenCase] = field(default_factory=list)
    datasets: dict[str, list[str]] = field(default_factory=dict)  # dataset -> labelled regions
    synthetic: bool = False  # every root's cohort.json says so (``mtss synth`` output)

    def populations(self) -> list[str]:
        """Population codes present, in BraTS order."""
        present = {c.population for c in self.cases}
        return [p for p in POPULATION_CODES if p in present]

    def by_name(self) -> dict[str, CaseRecord]:
        return {c.name: c for c in self.cases}

    def select(self, names: Sequence[str]) -> list[CaseRecord]:
        lookup = self.by_name()
        return [lookup[n] for n in names if n in lookup]

    def leave_out(self, broken: Sequence[BrokenCase]) -> None:
        """Drop cases found broken later (e.g. while preparing them) and record why."""
        bad = {b.name for b in broken}
        self.cases = [c for c in self.cases if c.name not in bad]
        known = {b.name for b in self.broken}
        self.broken.extend(b for b in broken if b.name not in known)

    def summary(self) -> str:
        counts = ", ".join(f"{p} {sum(c.population == p for c in self.cases)}" for p in self.populations())
        text = f"{len(self.cases)} cases ({counts or 'none'})"
        partial = {d: r for d, r in self.datasets.items() if tuple(r) != REGION_CODES}
        if partial:
            text += "; partial labels: " + ", ".join(f"{d}: {'+'.join(r)}" for d, r in sorted(partial.items()))
        if self.broken:
            text += f"; {len(self.broken)} left out"
        return text

    def broken_report(self) -> str:
        return "\n".join(f"  {b.name}: {b.reason}" for b in self.broken)

    def to_dict(self) -> dict[str, Any]:
        return {"roots": [str(r) for r in self.roots], "datasets": self.datasets, "synthetic": self.synthetic,
                "cases": [c.to_dict() for c in self.cases], "broken": [b.to_dict() for b in self.broken]}


@dataclass
class _Declarations:
    populations: dict[str, str] = field(default_factory=dict)
    labels: dict[str, tuple[str, ...]] = field(default_factory=dict)  # case or dataset -> regions
    default_labels: tuple[str, ...] | None = None
    synthetic: bool = False


def _regions(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v for v in re.split(r"[,+ ]+", value) if v]
    if not isinstance(value, (list, tuple)) or not value:
        raise InputError(f"{where}: labels must be a non-empty list of regions (WT, TC, ET), got {value!r}.")
    try:
        codes = {region(str(v)).code for v in value}
    except ValueError as exc:
        raise InputError(f"{where}: {exc}") from exc
    return tuple(r for r in REGION_CODES if r in codes)


def _read_declarations(source: str | Path | dict[str, Any] | None, decl: _Declarations | None = None) -> _Declarations:
    """Merge a mapping or cohort file (path or parsed dict) into ``decl``."""
    decl = decl or _Declarations()
    if source is None:
        return decl
    where = "mapping" if isinstance(source, dict) else str(source)
    if isinstance(source, dict):
        data: Any = source
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(f"The mapping file '{path}' does not exist. Give a JSON file such as "
                             '{"BraTS-X-0001": "GLI"}.')
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"The mapping file '{path}' is not valid JSON ({exc}).") from exc
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(data).__name__}.")
    structured = {"populations", "labels", "cases", "datasets"} & set(data)
    if not structured:  # flat {case: population}
        data = {"populations": {k: v for k, v in data.items() if isinstance(v, str)}}
    populations = data.get("populations")
    for name, pop in (populations.items() if isinstance(populations, dict) else ()):  # a list: cohort.json's summary
        decl.populations[str(name)] = str(pop)
    if data.get("synthetic") is True:
        decl.synthetic = True
    labels = data.get("labels")
    if isinstance(labels, dict):
        for name, value in labels.items():
            decl.labels[str(name)] = _regions(value, f"{where}, labels of '{name}'")
    elif labels is not None:
        decl.default_labels = _regions(labels, f"{where}, labels")
    for name, info in (data.get("datasets") or {}).items():
        if isinstance(info, dict) and "labels" in info:
            decl.labels[str(name)] = _regions(info["labels"], f"{where}, dataset '{name}'")
    cases = data.get("cases") or []
    items = cases.items() if isinstance(cases, dict) else ((c.get("name") or c.get("case"), c) for c in cases
                                                            if isinstance(c, dict))
    for name, info in items:
        if not name or not isinstance(info, dict):
            continue
        if isinstance(info.get("population"), str):
            decl.populations[str(name)] = info["population"]
        if "labels" in info:
            decl.labels[str(name)] = _regions(info["labels"], f"{where}, case '{name}'")
    return decl


def population_from_name(name: str) -> str | None:
    """``BraTS-GLI-00001-000`` -> ``GLI``; BraTS 2018-2022 names -> ``GLI`` (adult glioma); else None."""
    m = _BRATS2023.match(name)
    if m and m.group("pop").upper() in POPULATION_CODES:
        return m.group("pop").upper()
    if _BRATS2021.match(name):
        return "GLI"
    return None


def _has_images(folder: Path) -> bool:
    return any(p.is_file() and (p.name.endswith(".nii.gz") or p.suffix in (".nii", ".nrrd", ".mha")) for p in folder.iterdir())


def _case_folders(root: Path) -> list[tuple[Path, str]]:
    """(case folder, dataset name) pairs under ``root``: case folders directly or one level down."""
    if _has_images(root):
        return [(root, root.parent.name or root.name)]
    found: list[tuple[Path, str]] = []
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if _has_images(child):
            found.append((child, root.name))
        else:
            found.extend((g, child.name) for g in sorted(p for p in child.iterdir()
                                                         if p.is_dir() and not p.name.startswith(".")) if _has_images(g))
    return found


def discover(roots: str | Path | Sequence[str | Path], mapping: str | Path | dict[str, Any] | None = None,
             require_labels: bool = True) -> DataIndex:
    """Find every case under ``roots`` with its population, files and labelled regions.

    Args:
        roots: one or more data folders.
        mapping: optional JSON file (or dict) with populations and/or labelled regions (module docstring).
        require_labels: leave out (as broken) cases without a ``-seg`` label map (training needs them).

    Raises:
        InputError: a root does not exist or holds no case folder at all.
    """
    root_list = [Path(roots)] if isinstance(roots, (str, Path)) else [Path(r) for r in roots]
    cases: list[CaseRecord] = []
    broken: list[BrokenCase] = []
    datasets: dict[str, list[str]] = {}
    cohort_flags: list[bool] = []
    for root in root_list:
        if not root.is_dir():
            raise InputError(f"The data folder '{root}' does not exist or is not a folder.")
        folders = _case_folders(root)
        if not folders:
            raise InputError(f"No case folders found in '{root}'. Expected BraTS case folders such as "
                             "'BraTS-GLI-00000-000/BraTS-GLI-00000-000-t1c.nii.gz' (or make some with `mtss synth`).")
        cohort_cache: dict[Path, _Declarations] = {}
        for folder, dataset in folders:
            parent = folder.parent
            if parent not in cohort_cache:
                decl = _Declarations()
                candidates = [root / COHORT_FILE] + ([parent / COHORT_FILE] if parent != root else [])
                for candidate in candidates:  # the dataset's own file overrides the root's
                    if candidate.is_file():
                        _read_declarations(candidate, decl)
                cohort_cache[parent] = _read_declarations(mapping, decl)
            decl = cohort_cache[parent]
            cohort_flags.append(decl.synthetic)
            record = _record(folder, dataset, decl, require_labels)
            if isinstance(record, BrokenCase):
                broken.append(record)
                log.warning("Leaving out case %s: %s", record.name, record.reason)
                continue
            cases.append(record)
            datasets.setdefault(dataset, list(record.labels))
            if list(record.labels) != datasets[dataset]:  # mixed within a dataset: keep the union
                datasets[dataset] = [r for r in REGION_CODES if r in set(datasets[dataset]) | set(record.labels)]
    synthetic = bool(cases) and all(cohort_flags)
    names = [c.name for c in cases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"Case names must be unique across the data folders; found {', '.join(duplicates[:5])} "
                         "more than once. Rename or remove the copies.")
    return DataIndex(root_list, cases, broken, datasets, synthetic)


def _record(folder: Path, dataset: str, decl: _Declarations, require_labels: bool) -> CaseRecord | BrokenCase:
    name = folder.name
    try:
        files, seg = find_case_files(folder)
    except InputError as exc:
        return BrokenCase(name, str(folder), str(exc))
    if seg is None and require_labels:
        return BrokenCase(name, str(folder), "no label map (a '<case>-seg.nii.gz' file) in the folder; "
                                             "training and evaluation need one.")
    pop = decl.populations.get(name) or population_from_name(name)
    if pop is None:
        return BrokenCase(name, str(folder), "unknown population: name the folder 'BraTS-<POP>-NNNNN-NNN' "
                                             f"({'/'.join(POPULATION_CODES)}) or give a mapping file {{case: population}}.")
    try:
        pop = population(pop).code
    except ValueError as exc:
        return BrokenCase(name, str(folder), str(exc))
    labels = decl.labels.get(name) or decl.labels.get(dataset) or decl.default_labels or REGION_CODES
    return CaseRecord(name, folder, pop, files, seg, dataset, tuple(labels))


@dataclass
class Split:
    """Which cases train and which validate; recorded in the run folder (``split.json``)."""

    train: list[str]
    val: list[str]
    seed: int
    val_fraction: float

    def to_dict(self) -> dict[str, Any]:
        return {"train": list(self.train), "val": list(self.val), "seed": self.seed, "val_fraction": self.val_fraction}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Split:
        return cls(list(d["train"]), list(d["val"]), int(d.get("seed", 0)), float(d.get("val_fraction", 0.0)))


def make_split(cases: Sequence[CaseRecord], val_fraction: float, seed: int) -> Split:
    """Stratified by population: each population with two or more cases gives at least one validation case.

    The split depends only on the case names, the fraction and the seed (not on the folder order).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"--val-fraction must be in [0, 1), got {val_fraction}.")
    rng = random.Random(seed)
    train: list[str] = []
    val: list[str] = []
    for pop in POPULATION_CODES:
        names = sorted(c.name for c in cases if c.population == pop)
        rng.shuffle(names)
        n_val = 0
        if val_fraction > 0 and len(names) >= 2:
            n_val = min(len(names) - 1, max(1, round(val_fraction * len(names))))
        val.extend(sorted(names[:n_val]))
        train.extend(sorted(names[n_val:]))
    return Split(train, val, seed, val_fraction)
