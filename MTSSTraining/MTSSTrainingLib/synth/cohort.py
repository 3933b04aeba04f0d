"""A synthetic cohort on disk (BraTS 2023 layout) or in memory, generated in parallel.

``write_cohort(out_dir, cases=N, populations=..., seed=S)`` writes N cases per population::

    OUT_DIR/BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz
    OUT_DIR/cohort.json

With ``clinical=True`` each case folder holds a clinical study instead (:mod:`.clinical`: every series on
its own grid, the label map on the t1c series' grid), with the aligned case it was drawn from and the
drawn acquisition beside it::

    OUT_DIR/BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz   (clinical)
    OUT_DIR/BraTS-GLI-00000-000/acquisition.json
    OUT_DIR/BraTS-GLI-00000-000/aligned/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz

The aligned copies sit inside the case folder, where :func:`MTSSTrainingLib.data.discover` (which looks
for case folders at most two levels below a root, and not inside a case folder) does not count them as
cases of their own.

Case ``i`` of a cohort with seed ``S`` is ``generate_case(pop, S * 100000 + i)``: cohorts with different
seeds (train, validation, test) never share a case, and any case can be regenerated from cohort.json.
Files are written atomically (temporary file, then rename); gzip headers carry no time stamp, so the same
seed gives byte-identical files whatever the number of workers.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MTSSSegmenterLib.constants import MODALITY_CODES, POPULATION_CODES
from MTSSSegmenterLib.errors import InputError, OutputError

from . import anatomy
from .case import SynthCase, check_population, check_seed, check_spacing, generate_case
from .clinical import ClinicalCase, acquire, check_probability

logger = logging.getLogger(__name__)

SEED_STRIDE = 100_000
"""Case seeds of a cohort: ``seed * SEED_STRIDE + index``."""
MAX_CASES = SEED_STRIDE
ALIGNED_FOLDER = "aligned"
"""Sub-folder of a clinical case folder that holds the aligned case."""
ACQUISITION_FILE = "acquisition.json"
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class CaseTask:
    """One case to generate: its population, index in the population, seed, spacing and acquisition."""

    population: str
    index: int
    seed: int
    spacing: float
    clinical: bool = False
    skull_prob: float = 0.5

    @property
    def case_id(self) -> str:
        return f"BraTS-{self.population}-{self.index:05d}-000"


def plan(cases: int, populations: Iterable[str] | None = None, seed: int = 0, spacing: float = 1.0,
         clinical: bool = False, skull_prob: float = 0.5, first_index: int = 0) -> list[CaseTask]:
    """The tasks of a cohort, population by population (in BraTS order: GLI PED SSA MEN MET), validated.

    Raises:
        InputError: for zero or too many cases, an unknown population, a bad seed, spacing or skull
            probability.
    """
    if isinstance(cases, bool) or not isinstance(cases, (int, np.integer)) or not 1 <= cases <= MAX_CASES:
        raise InputError(f"The number of cases per population must be at least 1 and at most {MAX_CASES} "
                         f"(got {cases!r}); e.g. --cases 10.")
    seed = check_seed(seed)
    spacing = check_spacing(spacing)
    skull_prob = check_probability(skull_prob)
    if isinstance(first_index, bool) or not isinstance(first_index, (int, np.integer)) or not (
            0 <= first_index and first_index + cases <= MAX_CASES):
        raise InputError(f"The first case index must be an integer from 0 with index + cases at most {MAX_CASES} "
                         f"(got {first_index!r} with {cases} cases); e.g. --first-index 1000.")
    pops = list(POPULATION_CODES if populations is None else populations)
    if not pops:
        raise InputError(f"No population given; choose from {', '.join(POPULATION_CODES)}.")
    codes: list[str] = []
    for p in pops:
        code = check_population(p)
        if code not in codes:
            codes.append(code)
    codes.sort(key=POPULATION_CODES.index)
    return [CaseTask(code, i, seed * SEED_STRIDE + i, spacing, bool(clinical), skull_prob)
            for code in codes for i in range(int(first_index), int(first_index) + int(cases))]


def check_writable(out_dir: str | Path) -> Path:
    """Create ``out_dir`` if needed and prove it writable, or raise an OutputError saying why."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"Output folder '{out}' exists and is not a folder; give a folder path.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".mtss-probe-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"Cannot write to output folder '{out}' ({exc.strerror or exc}); "
                          "choose a folder you can write to.") from None
    return out


def nifti_image(array: np.ndarray, affine: np.ndarray, dtype: str | type):
    """A NIfTI-1 image with the BraTS header conventions (qform = sform = scanner, mm units)."""
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(array).astype(dtype), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    return img


def nifti_from_sitk(image: sitk.Image, dtype: str | type):
    """A NIfTI-1 image (BraTS header conventions) of a SimpleITK image on any grid, oblique ones included."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(image.GetSpacing(), dtype=np.float64)
    lps[:3, 3] = image.GetOrigin()
    array = np.transpose(sitk.GetArrayViewFromImage(image), (2, 1, 0))
    return nifti_image(array, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, dtype)


def _save_atomic(img, path: Path) -> None:
    import nibabel as nib

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.nii.gz")
    try:
        nib.save(img, str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_case(case: SynthCase, folder: Path, case_id: str) -> list[Path]:
    """Write a case's four images (int16) and label map (uint8) in the BraTS 2023 naming."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for code in MODALITY_CODES:
        path = folder / f"{case_id}-{code}.nii.gz"
        _save_atomic(nifti_image(case.images[code], case.affine, np.int16), path)
        paths.append(path)
    path = folder / f"{case_id}-seg.nii.gz"
    _save_atomic(nifti_image(case.seg, case.affine, np.uint8), path)
    paths.append(path)
    return paths


def write_clinical_case(case: ClinicalCase, folder: Path, case_id: str) -> list[Path]:
    """Write a clinical study in the BraTS 2023 naming (each series on its own grid, the label map on the
    t1c series' grid), its ``acquisition.json``, and the aligned case in ``aligned/``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for code in MODALITY_CODES:
        path = folder / f"{case_id}-{code}.nii.gz"
        _save_atomic(nifti_from_sitk(case.series[code], np.int16), path)
        paths.append(path)
    path = folder / f"{case_id}-seg.nii.gz"
    _save_atomic(nifti_from_sitk(case.seg, np.uint8), path)
    paths.append(path)
    path = folder / ACQUISITION_FILE
    _write_json(path, {"case": case_id, "aligned": f"{ALIGNED_FOLDER}/", **case.acquisition})
    paths.append(path)
    return paths + write_case(case.aligned, folder / ALIGNED_FOLDER, case_id)


def _entry(task: CaseTask, case: SynthCase | ClinicalCase) -> dict:
    meta = dict(case.meta)
    return {"case": task.case_id, **meta}


def _generate(task: CaseTask) -> SynthCase | ClinicalCase:
    case = generate_case(task.population, task.seed, task.spacing)
    return acquire(case, task.skull_prob) if task.clinical else case


def _write_task(args: tuple[CaseTask, str]) -> dict:
    task, out_dir = args
    case = _generate(task)
    folder = Path(out_dir) / task.case_id
    if isinstance(case, ClinicalCase):
        write_clinical_case(case, folder, task.case_id)
    else:
        write_case(case, folder, task.case_id)
    return _entry(task, case)


def _memory_task(task: CaseTask) -> tuple[str, SynthCase | ClinicalCase]:
    return task.case_id, _generate(task)


def _pool(workers: int):
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    return ctx.Pool(workers)


def _run(func: Callable, items: list, workers: int) -> Iterator:
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise InputError(f"The number of workers must be a positive integer (got {workers!r}).")
    anatomy.load_template()  # once in the parent; forked workers share it
    if workers == 1 or len(items) == 1:
        yield from map(func, items)
        return
    with _pool(min(int(workers), len(items))) as pool:
        yield from pool.imap(func, items)


def iter_cases(cases: int, populations: Iterable[str] | None = None, seed: int = 0, spacing: float = 1.0,
               workers: int = 1, clinical: bool = False, skull_prob: float = 0.5
               ) -> Iterator[tuple[str, SynthCase | ClinicalCase]]:
    """Generate a cohort in memory, in order, over ``workers`` processes: yields (case id, case), the case
    a :class:`SynthCase`, or with ``clinical`` a :class:`ClinicalCase`."""
    yield from _run(_memory_task, plan(cases, populations, seed, spacing, clinical, skull_prob), workers)


def write_cohort(out_dir: str | Path, cases: int, populations: Iterable[str] | None = None, seed: int = 0,
                 spacing: float = 1.0, workers: int = 1, preview: bool = False,
                 progress: Progress | None = None, clinical: bool = False, skull_prob: float = 0.5,
                 first_index: int = 0) -> dict:
    """Write a synthetic cohort in the BraTS 2023 layout and its ``cohort.json``; return that document.

    Args:
        out_dir: folder to write into (created if needed).
        cases: cases per population (at least 1).
        populations: BraTS population codes (default all five).
        seed: cohort seed; case ``i`` uses seed ``seed * 100000 + i``.
        spacing: voxel size (mm) of the 240x240x155 mm frame.
        workers: processes generating cases in parallel.
        preview: also write ``preview_<POP>.png`` contact sheets.
        progress: called as ``progress(done, total, case_id)`` after each case.
        clinical: write clinical studies (own grid per series, head motion, bias field, maybe a skull) with
            the aligned case in ``<case>/aligned/`` and the drawn acquisition in ``<case>/acquisition.json``
            and the case's ``cohort.json`` entry.
        skull_prob: with ``clinical``, the probability that a case's series show the skull and scalp.
        first_index: number of the first case of each population (``BraTS-GLI-01000-000`` for 1000), so that
            cohorts trained on together have distinct case names.

    Raises:
        InputError: for bad arguments; OutputError: when ``out_dir`` cannot be written.
    """
    tasks = plan(cases, populations, seed, spacing, clinical, skull_prob, first_index)
    out = check_writable(out_dir)
    start = time.perf_counter()
    entries = []
    for done, entry in enumerate(_run(_write_task, [(t, str(out)) for t in tasks], workers), start=1):
        entries.append(entry)
        if progress is not None:
            progress(done, len(tasks), entry["case"])
    elapsed = time.perf_counter() - start
    logger.info("%d cases in %.1f s (%.2f s per case with %d workers)", len(tasks), elapsed,
                elapsed / len(tasks), workers)
    doc = {
        "generator": "mtss synth",
        "format": "BraTS 2023: <case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz; labels 1 NCR/NETC, 2 ED/SNFH, 3 ET",
        "synthetic": True,
        "seed": int(seed),
        "seed_rule": f"case seed = seed * {SEED_STRIDE} + index; generate_case(population, case seed, spacing)",
        "spacing_mm": float(spacing),
        "cases_per_population": int(cases),
        "populations": sorted({t.population for t in tasks}, key=POPULATION_CODES.index),
        "clinical": bool(clinical),
    }
    if clinical:
        doc["format"] = (
            "clinical studies: <case>/<case>-{t1n,t1c,t2w,t2f}.nii.gz each on its own grid, <case>/<case>-seg.nii.gz "
            "on the t1c series' grid, <case>/acquisition.json; the aligned BraTS 2023 case it was drawn from (at "
            f"spacing_mm) in <case>/{ALIGNED_FOLDER}/<case>-{{t1n,t1c,t2w,t2f,seg}}.nii.gz; labels 1 NCR/NETC, "
            "2 ED/SNFH, 3 ET")
        doc["seed_rule"] += "; then synth.clinical.acquire(case, skull_prob)"
        doc["skull_prob"] = tasks[0].skull_prob
    doc["cases"] = entries
    _write_json(out / "cohort.json", doc)
    if preview:
        from .preview import cohort_sheets

        doc["previews"] = [str(p) for p in cohort_sheets(out, entries)]
    return doc


def _write_json(path: Path, doc: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".cohort-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=1)
            fh.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
