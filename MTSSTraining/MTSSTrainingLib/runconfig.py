"""What a training run is: its options as a dataclass with a JSON round trip (``RUN/run.json``).

The same :class:`TrainConfig` drives ``train-teacher``, ``train-joint`` and ``distill``; ``--resume``
reads it back from the run folder, so a resumed run continues with exactly the options it started with
(only ``epochs``, ``device`` and ``workers`` may change on resume).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from MTSSSegmenterLib.constants import population
from MTSSSegmenterLib.errors import InputError
from MTSSSegmenterLib.networks import NetworkConfig

COMMANDS = ("train-teacher", "train-joint", "distill")
SCHEDULES = ("cosine", "poly")
RESUMABLE_OVERRIDES = ("epochs", "device", "workers", "cache_gb", "cache_dir", "time_limit_min", "calibrate", "mirror")


def shipped_configs() -> list[str]:
    """Names of the network configs shipped in ``MTSSTrainingLib/configs`` (``tiny``, ``student_small``...)."""
    folder = resources.files("MTSSTrainingLib") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def resolve_network(spec: str | dict[str, Any] | NetworkConfig) -> NetworkConfig:
    """A network config from a JSON file path, a shipped config name, inline JSON or a dict."""
    if isinstance(spec, NetworkConfig):
        return spec
    if isinstance(spec, dict):
        return NetworkConfig.from_dict(spec)
    text = str(spec).strip()
    try:
        if text.startswith("{"):
            return NetworkConfig.from_json(text)
        path = Path(text).expanduser()
        if path.is_file():
            return NetworkConfig.from_json(str(path))
        name = text.removesuffix(".json")
        shipped = resources.files("MTSSTrainingLib") / "configs" / f"{name}.json"
        if shipped.is_file():
            return NetworkConfig.from_json(shipped.read_text(encoding="utf-8"))
    except (ValueError, TypeError, json.JSONDecodeError) as exc:
        raise InputError(f"Network config '{spec}' is invalid: {exc}") from exc
    raise InputError(f"Network config '{spec}' is neither a JSON file nor a shipped config; shipped: "
                     f"{', '.join(shipped_configs())}.")


@dataclass
class TrainConfig:
    """Every option of a training run (command-line names with ``-`` -> ``_``)."""

    command: str
    data: list[str]
    out: str
    network: dict[str, Any] = field(default_factory=lambda: resolve_network("student_small").to_dict())
    population: str | None = None
    epochs: int = 50
    steps_per_epoch: int = 250
    patch: tuple[int, int, int] = (128, 128, 128)
    batch: int = 2
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_fraction: float = 0.02
    grad_clip: float = 12.0
    device: str = "auto"
    amp: bool = False
    seed: int = 0
    workers: int = 0
    val_fraction: float = 0.2
    spacing: float = 1.0
    mapping: str | None = None
    init: str | None = None
    cache_gb: float | None = None
    # A folder where every prepared case is kept and found again by other runs with the same preprocessing
    # (None: RUN/cache, only for cases that do not fit in memory).
    cache_dir: str | None = None
    # Wall-clock budget (minutes, all sessions of the run together): the schedule runs on whichever is further
    # along, steps or time, and training ends after the step that reaches it (that epoch is validated and saved).
    time_limit_min: float | None = None
    modality_dropout: float = 0.0
    augment: dict[str, Any] = field(default_factory=dict)
    val_subsets: list[list[str]] = field(default_factory=list)
    # choose each region's decision threshold on the validation cases at the end (calibration.py)
    calibrate: bool = True
    # test-time mirroring the bundle segments with (axes among LR, AP, SI); calibration chooses for it
    mirror: list[str] = field(default_factory=list)
    # distillation
    kd: list[str] = field(default_factory=list)
    kd_weights: dict[str, float] = field(default_factory=dict)
    kd_params: dict[str, Any] = field(default_factory=dict)
    routing: str = "soft"
    teachers: dict[str, str] = field(default_factory=dict)
    single_stage: bool = False
    full_network: dict[str, Any] | None = None
    teacher_cache: bool = False
    name: str | None = None

    def __post_init__(self) -> None:
        self.patch = tuple(int(p) for p in (self.patch if isinstance(self.patch, (list, tuple)) else [self.patch] * 3))  # type: ignore[assignment]
        if len(self.patch) == 1:
            self.patch = self.patch * 3  # type: ignore[assignment]
        self.data = [str(d) for d in self.data]
        if self.command not in COMMANDS:
            raise InputError(f"Unknown training command '{self.command}'; known: {', '.join(COMMANDS)}.")
        checks = [("epochs", self.epochs, 1), ("steps_per_epoch", self.steps_per_epoch, 1), ("batch", self.batch, 1)]
        for name, value, low in checks:
            if int(value) < low:
                raise InputError(f"--{name.replace('_', '-')} must be at least {low}, got {value}.")
        if len(self.patch) != 3 or min(self.patch) < 8:
            raise InputError(f"--patch must be one or three sizes of at least 8 voxels, got {list(self.patch)}.")
        if not self.lr > 0:
            raise InputError(f"--lr must be positive, got {self.lr}.")
        if self.time_limit_min is not None and not self.time_limit_min > 0:
            raise InputError(f"--time-limit must be positive (minutes), got {self.time_limit_min}.")
        if not self.spacing > 0:
            raise InputError(f"--spacing must be positive (mm), got {self.spacing}.")
        if self.schedule not in SCHEDULES:
            raise InputError(f"Unknown schedule '{self.schedule}'; use {' or '.join(SCHEDULES)}.")
        if self.routing not in ("soft", "hard"):
            raise InputError(f"--routing must be soft or hard, got '{self.routing}'.")
        if not 0.0 <= self.modality_dropout <= 1.0:
            raise InputError(f"--modality-dropout must be in [0, 1], got {self.modality_dropout}.")
        if self.population is not None:
            try:
                self.population = population(self.population).code
            except ValueError as exc:
                raise InputError(str(exc)) from exc
        if self.command == "train-teacher" and self.population is None:
            raise InputError("train-teacher needs --population (one of GLI, PED, SSA, MEN, MET).")
        from MTSSSegmenterLib.bundle import mirror_axes_of
        from MTSSSegmenterLib.errors import BundleError

        self.mirror = [str(a).upper() for a in self.mirror]
        try:
            mirror_axes_of(self.mirror, "--mirror")
        except BundleError as exc:
            raise InputError(str(exc)) from exc
        divisor = NetworkConfig.from_dict(self.network).divisor
        bad = [p for p in self.patch if p % divisor]
        if bad:
            raise InputError(f"--patch {list(self.patch)} must be a multiple of {divisor} (the network's spatial "
                             f"divisor) in every axis; try {[max(divisor, p // divisor * divisor) for p in self.patch]}.")

    @property
    def network_config(self) -> NetworkConfig:
        return NetworkConfig.from_dict(self.network)

    @property
    def roi_size(self) -> list[int]:
        """Sliding-window size for validation and the bundle: the patch, at least 128 voxels (small volumes
        then run in one pass, which is faster than many small windows)."""
        return [max(int(p), 128) for p in self.patch]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["patch"] = list(self.patch)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def preprocessing(self) -> dict[str, Any]:
        """The bundle preprocessing at this run's working spacing (as ``prepare_case`` takes it)."""
        from MTSSSegmenterLib.bundle import DEFAULT_PREPROCESSING

        return {**DEFAULT_PREPROCESSING, "spacing_mm": [float(self.spacing)] * 3, "modality_encoding": "mask-channels"}


def git_commit() -> str | None:
    """The commit of the source tree this code runs from, if it is a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
