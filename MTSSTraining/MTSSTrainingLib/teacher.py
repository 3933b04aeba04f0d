"""``mtss train-teacher``: one expert network per tumour population, supervised by the ground truth.

The teacher trains on its own population's cases with Dice + BCE on the WT, TC, ET channels and deep
supervision (the ``gt`` term of :mod:`MTSSTrainingLib.losses`; nnU-Net, Isensee et al. 2021), and is
validated on the held-out cases of every population: its row of the cross-population Dice matrix, which
the student's population-aware weighting reads from the bundle (``meta["metrics"]["validation"]``). The
regions its training labels mark go into ``meta["training"]["labelled_regions"]``: the expert regions of
MS-KD region distillation.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from MTSSSegmenterLib.networks import SegNetwork, build_network
from torch import nn

from .cache import CaseCache
from .data import DataIndex, Split
from .distributed import DistContext
from .losses import KDBatch, build_objective
from .progress import ProgressCallback
from .runconfig import TrainConfig
from .trainer import TaskSpec, Trainer, TrainResult, init_from_bundle
from .transforms import network_inputs

log = logging.getLogger(__name__)


class SupervisedModule(nn.Module):
    """A network trained on the ground truth alone; ``forward(batch) -> (loss, {term: value})``.

    The network sees the modalities in ``batch["keep"]`` (all those present unless modality dropout is
    on) and is scored by ``objective`` (``gt`` only) with the batch's partial-label mask.
    """

    def __init__(self, network: SegNetwork, objective: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.objective = objective

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        x = network_inputs(batch["image"], batch["keep"])
        out = self.network.forward_features(x)
        b = x.shape[0]
        kd = KDBatch(student=out, teachers={}, populations=list(batch["population"]), target=batch["target"],
                     label_mask=batch["label_mask"], teacher_weights=torch.zeros(b, 0, device=x.device),
                     teacher_order=[], expert_regions={})
        return self.objective(kd)


def build_supervised(config: TrainConfig, role: str) -> tuple[SupervisedModule, dict[str, Any]]:
    network = build_network(config.network_config)
    meta: dict[str, Any] = {}
    if config.init:
        init_meta = init_from_bundle(network, config.init)
        meta["init_from"] = {"path": config.init, "name": init_meta.get("name")}
    objective = build_objective([], config.kd_weights or None, network.feature_channels, {},
                                **(config.kd_params or {}))
    meta["objective"] = str(objective)
    return SupervisedModule(network, objective), meta


def teacher_task(config: TrainConfig, dist: DistContext, cache: CaseCache, index: DataIndex, split: Split) -> TaskSpec:
    module, meta = build_supervised(config, "teacher")
    return TaskSpec(module=module, network=module.network, role="teacher", train_populations=[config.population],
                    selection_population=config.population, meta=meta)


def train_teacher(config: TrainConfig, progress: ProgressCallback | None = None, resume: bool = False,
                  data: tuple[DataIndex, CaseCache] | None = None) -> TrainResult:
    """Train a population teacher; the bundle lands in ``config.out``."""
    return Trainer(config, teacher_task, progress, resume, data).run()
