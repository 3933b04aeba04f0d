"""``mtss distill``: several population teachers distilled into one small student (MTSS-KDNet).

Teachers are bundles keyed by population code (``--teachers GLI=RUN PED=RUN``), frozen, and see every
modality a case has; the student sees a random non-empty subset (always sometimes FLAIR+T1c and T1c
alone). The objective is ``gt`` plus the chosen KD terms of :mod:`MTSSTrainingLib.losses`, weighted
(``--kd-weights``), with each case's teachers weighted by :func:`~MTSSTrainingLib.losses.population_weights`
from the cross-population validation Dice recorded in each teacher's bundle (``--routing soft|hard``).
Each teacher's expert regions (for the ``region`` term, MS-KD) are the regions its training labels marked.

``--single-stage`` also trains a full-modality network beside the student (Choi et al., CMPB 2023): it
gets its own ground-truth loss and is the Barlow Twins reference for cases whose population has no
teacher (all cases when no teacher is given); it is written as a second bundle in ``RUN/full_modality``.

``--teacher-cache`` runs each teacher once per case over the whole prepared volume and keeps its logits
and bottleneck features on disk as float16 (``RUN/teacher_cache``); patches are then cut aligned with
the teachers' bottleneck grid, without rotation or scaling, and the terms that need the teachers' fine
decoder features (``attention``; the feature part of ``region``) are not available.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from MTSSSegmenterLib.bundle import Bundle, load_bundle
from MTSSSegmenterLib.constants import REGION_CODES
from MTSSSegmenterLib.errors import BundleError, InputError
from MTSSSegmenterLib.inference import pad_to_multiple
from MTSSSegmenterLib.networks import NetOutput, SegNetwork, build_network
from torch import nn

from .cache import CaseCache
from .checkpoint import atomic_write_bytes
from .data import DataIndex, Split
from .distributed import DistContext
from .ensemble import parse_assignments
from .losses import KDBatch, build_objective, population_weights
from .progress import ProgressCallback
from .runconfig import TrainConfig
from .trainer import TaskSpec, Trainer, TrainResult, init_from_bundle
from .transforms import network_inputs
from .validation import dice_matrix_row

log = logging.getLogger(__name__)

NEEDS_TEACHERS = ("output", "latent", "region", "attention")
CACHED_FEATURES = ("bottleneck",)


@dataclass
class Teacher:
    """A frozen teacher: its bundle, validation Dice row and expert regions."""

    code: str
    bundle: Bundle
    dice_row: dict[str, float]
    expert: tuple[bool, bool, bool]

    @property
    def network(self) -> SegNetwork:
        return self.bundle.network


def load_teachers(spec: dict[str, str], spacing: float | None = None) -> dict[str, Teacher]:
    """Load ``{population code: bundle folder}``; errors name the teacher and what to do."""
    if not spec:
        raise InputError("No teacher given. Use --teachers GLI=RUN_DIR PED=RUN_DIR ... (bundles from `mtss train-teacher`).")
    teachers: dict[str, Teacher] = {}
    for code, path in parse_assignments(spec).items():
        try:
            bundle = load_bundle(path)
        except BundleError as exc:
            raise InputError(f"Teacher {code} ('{path}') cannot be loaded: {exc}") from exc
        meta = bundle.meta
        if meta.get("role") not in (None, "teacher"):
            log.warning("Teacher %s is a '%s' bundle, not a teacher; using it anyway.", code, meta.get("role"))
        own = meta.get("populations") or []
        if own and code not in own:
            log.warning("Teacher %s ('%s') was trained on %s, not %s.", code, path, ", ".join(own), code)
        their = (meta.get("preprocessing") or {}).get("spacing_mm", [spacing] * 3)[0]
        if spacing is not None and abs(float(their) - float(spacing)) > 1e-6:
            log.warning("Teacher %s works at %.2f mm but this run at %.2f mm; its outputs will be less reliable.",
                        code, their, spacing)
        labelled = (meta.get("training") or {}).get("labelled_regions") or list(REGION_CODES)
        expert = tuple(r in labelled for r in REGION_CODES)
        row = dice_matrix_row((meta.get("metrics") or {}).get("validation") or {})
        if not row:
            log.warning("Teacher %s records no validation Dice; the other teachers weigh uniformly on its cases.", code)
        bundle.network.requires_grad_(False)
        teachers[code] = Teacher(code, bundle, row, expert)  # type: ignore[arg-type]
    return teachers


class TeacherOutputCache:
    """Teacher logits and bottleneck features per case, float16 ``.npy`` files, memory-mapped on use."""

    def __init__(self, folder: str | Path, teachers: dict[str, Teacher], cache: CaseCache, device: torch.device,
                 dist: DistContext) -> None:
        self.folder, self.teachers, self.cache, self.device, self.dist = Path(folder), teachers, cache, device, dist

    def _path(self, code: str, case: str, what: str) -> Path:
        return self.folder / code / f"{case}.{what}.npy"

    def fill(self, names: list[str]) -> None:
        for i, name in enumerate(names):
            if i % self.dist.world != self.dist.rank:
                continue
            case = self.cache.get(name)
            x = torch.from_numpy(case.network_input())[None]
            for code, teacher in self.teachers.items():
                if all(self._path(code, name, w).is_file() for w in ("logits",) + CACHED_FEATURES):
                    continue
                net = teacher.network.to(self.device).eval()
                xp, _ = pad_to_multiple(x, net.config.divisor)  # padded at the far end: origin kept
                with torch.inference_mode():
                    out = net.forward_features(xp.to(self.device))
                arrays = {"logits": out.logits[0].float().cpu().numpy().astype(np.float16)}
                arrays.update({k: out.features[k][0].float().cpu().numpy().astype(np.float16) for k in CACHED_FEATURES})
                for what, arr in arrays.items():
                    path = self._path(code, name, what)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    import io

                    buf = io.BytesIO()
                    np.save(buf, arr, allow_pickle=False)
                    atomic_write_bytes(path, buf.getvalue())
        self.dist.barrier()

    def __call__(self, name: str) -> dict[str, tuple[np.ndarray, int]]:
        out: dict[str, tuple[np.ndarray, int]] = {}
        for code, teacher in self.teachers.items():
            out[f"{code}/logits"] = (np.load(self._path(code, name, "logits"), mmap_mode="r"), 1)
            for key in CACHED_FEATURES:
                out[f"{code}/{key}"] = (np.load(self._path(code, name, key), mmap_mode="r"), teacher.network.config.divisor)
        return out


class DistillModule(nn.Module):
    """Student (+ optional full-modality network) and the KD objective; teachers held, not registered.

    ``forward(batch) -> (loss, {term: value})``: teachers see ``batch["present"]`` modalities (or their
    cached outputs in ``batch["extras"]``), the student ``batch["keep"]``.
    """

    def __init__(self, student: SegNetwork, objective: nn.Module, teachers: dict[str, Teacher], routing: str,
                 full: SegNetwork | None = None) -> None:
        super().__init__()
        self.network = student
        self.objective = objective
        self.full = full
        self.__dict__["teachers"] = {code: t.network for code, t in teachers.items()}  # frozen: not in state_dict
        self.teacher_order = list(teachers)
        self.dice_matrix = {code: t.dice_row for code, t in teachers.items()}
        self.expert_regions = {code: t.expert for code, t in teachers.items()}
        self.routing = routing

    def teacher_outputs(self, batch: dict[str, Any], x_full: torch.Tensor) -> dict[str, NetOutput]:
        extras = batch.get("extras")
        if extras:
            return {code: NetOutput(extras[f"{code}/logits"].to(x_full.dtype), [],
                                    {k: extras[f"{code}/{k}"] for k in CACHED_FEATURES})
                    for code in self.teacher_order}
        with torch.no_grad():
            return {code: net.forward_features(x_full) for code, net in self.teachers.items()}

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        x_full = network_inputs(batch["image"], batch["present"])
        x_student = network_inputs(batch["image"], batch["keep"])
        teachers = self.teacher_outputs(batch, x_full)
        student = self.network.forward_features(x_student)
        full = self.full.forward_features(x_full) if self.full is not None else None
        pops = list(batch["population"])
        if self.teacher_order:
            weights = population_weights(pops, self.teacher_order, self.dice_matrix, mode=self.routing)
        else:
            weights = torch.zeros(len(pops), 0)
        kd = KDBatch(student=student, teachers=teachers, populations=pops, target=batch["target"],
                     label_mask=batch["label_mask"], teacher_weights=weights.to(x_full.device),
                     teacher_order=self.teacher_order, expert_regions=self.expert_regions, full_student=full)
        return self.objective(kd)


def distill_task(config: TrainConfig, dist: DistContext, cache: CaseCache, index: DataIndex, split: Split) -> TaskSpec:
    kd = list(config.kd)
    teachers = load_teachers(config.teachers, config.spacing) if config.teachers else {}
    if not teachers and not config.single_stage:
        raise InputError("distill needs --teachers GLI=RUN ... (or --single-stage to train a full-modality "
                         "reference beside the student).")
    needing = [t for t in kd if t in NEEDS_TEACHERS]
    if needing and not teachers:
        raise InputError(f"KD terms {', '.join(needing)} need teachers; give --teachers or keep only 'barlow'.")
    patch = list(config.patch)
    for code, t in teachers.items():
        div = t.network.config.divisor
        if any(p % div for p in patch):
            raise InputError(f"--patch {patch} is not a multiple of {div}, the spatial divisor of teacher {code} "
                             f"({t.network.config.kind}); use e.g. {[max(div, p // div * div) for p in patch]}.")
    params = dict(config.kd_params or {})
    augment: dict[str, Any] = {}
    extras = None
    if config.teacher_cache and teachers:
        if "attention" in kd:
            raise InputError("--teacher-cache keeps the teachers' logits and bottleneck features only; the "
                             "'attention' term needs their fine decoder maps. Drop --teacher-cache or 'attention'.")
        if "region" in kd:
            params.setdefault("region", {})["feature_weight"] = 0.0
            log.warning("--teacher-cache: the region term uses logits only (no decoder features are cached).")
        tcache = TeacherOutputCache(Path(config.out) / "teacher_cache", teachers, cache, dist.device, dist)
        tcache.fill(split.train)
        extras = tcache
        augment = {"spatial_prob": 0.0}
    torch.manual_seed(config.seed)
    student = build_network(config.network_config)
    meta: dict[str, Any] = {}
    if config.init:
        init_meta = init_from_bundle(student, config.init)
        meta["init_from"] = {"path": config.init, "name": init_meta.get("name")}
    full = None
    if config.single_stage:
        full = build_network(config.full_network or config.network)
    teacher_channels = {code: t.network.feature_channels for code, t in teachers.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        objective = build_objective(kd, config.kd_weights or None, student.feature_channels, teacher_channels, **params)
    for code, t in teachers.items():
        t.bundle.network.to(dist.device)
    module = DistillModule(student, objective, teachers, config.routing, full)
    meta.update({
        "kd": kd, "kd_weights": {k: objective.weights[k] for k in objective.weights}, "objective": str(objective),
        "routing": config.routing, "single_stage": config.single_stage, "teacher_cache": bool(extras),
        "teachers": {code: {"path": str(Path(config.teachers[code]).resolve()) if code in config.teachers else None,
                            "name": t.bundle.name, "weights_sha256": t.bundle.meta.get("weights_sha256"),
                            "expert_regions": [r for r, e in zip(REGION_CODES, t.expert) if e],
                            "validation_dice": t.dice_row} for code, t in teachers.items()},
    })
    extra_networks = {"full_modality": full} if full is not None else {}
    return TaskSpec(module=module, network=student, role="student", train_populations=None, selection_population=None,
                    meta=meta, extra_networks=extra_networks, sampler_extras=extras, augment=augment)


def distill(config: TrainConfig, progress: ProgressCallback | None = None, resume: bool = False,
            data: tuple[DataIndex, CaseCache] | None = None) -> TrainResult:
    """Distil the teachers into a student; the bundle lands in ``config.out``."""
    return Trainer(config, distill_task, progress, resume, data).run()
