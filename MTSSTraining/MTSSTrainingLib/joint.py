"""``mtss train-joint``: one network trained on every population together, without distillation.

The baseline that MTSS-KDNet's student is compared with: the same loss as a teacher (Dice + BCE with deep
supervision), all populations sampled evenly, and, like the student, random modality subsets
(``--modality-dropout``) so that both face missing sequences alike. The best epoch is chosen by the macro
average of the per-population Dice.
"""

from __future__ import annotations

from .cache import CaseCache
from .data import DataIndex, Split
from .distributed import DistContext
from .progress import ProgressCallback
from .runconfig import TrainConfig
from .teacher import build_supervised
from .trainer import TaskSpec, Trainer, TrainResult


def joint_task(config: TrainConfig, dist: DistContext, cache: CaseCache, index: DataIndex, split: Split) -> TaskSpec:
    module, meta = build_supervised(config, "joint")
    return TaskSpec(module=module, network=module.network, role="joint", train_populations=None,
                    selection_population=None, meta=meta)


def train_joint(config: TrainConfig, progress: ProgressCallback | None = None, resume: bool = False,
                data: tuple[DataIndex, CaseCache] | None = None) -> TrainResult:
    """Train the joint baseline on all populations; the bundle lands in ``config.out``."""
    return Trainer(config, joint_task, progress, resume, data).run()
