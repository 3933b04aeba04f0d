"""A teacher ensemble as one model: the average of the teachers' region probabilities.

The other baseline the distilled student is measured against (``--ensemble GLI=RUN PED=RUN ...`` in
``mtss evaluate`` and ``mtss benchmark``): every teacher runs on the case and their sigmoid outputs are
averaged, so it costs the sum of the teachers' inference. :func:`load_ensemble` returns a
:class:`MTSSSegmenterLib.bundle.Bundle` whose network returns the logit of the averaged probabilities, so
the segmentation pipeline (``segment(images, model=bundle)``) uses it like any bundle.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from MTSSSegmenterLib.bundle import Bundle, load_bundle
from MTSSSegmenterLib.constants import population
from MTSSSegmenterLib.errors import BundleError, InputError
from MTSSSegmenterLib.networks import NetOutput, SegNetwork
from torch import nn

EPS = 1e-6


def parse_assignments(items: Sequence[str] | dict[str, str] | None, option: str = "--teachers") -> dict[str, str]:
    """``["GLI=RUN", "PED=RUN"]`` -> ``{"GLI": "RUN", ...}`` keyed by canonical population code."""
    if not items:
        return {}
    if isinstance(items, dict):
        pairs = list(items.items())
    else:
        pairs = []
        for item in items:
            if "=" not in item:
                raise InputError(f"{option} takes POPULATION=PATH pairs such as GLI=runs/teacher-gli; got '{item}'.")
            key, _, value = item.partition("=")
            pairs.append((key, value))
    out: dict[str, str] = {}
    for key, value in pairs:
        try:
            code = population(key).code
        except ValueError as exc:
            raise InputError(f"{option} {key}={value}: {exc}") from exc
        if code in out:
            raise InputError(f"{option} names population {code} twice; give one bundle per population.")
        if not value:
            raise InputError(f"{option} {key}= lacks the path of the bundle.")
        out[code] = value
    return out


@dataclass
class EnsembleConfig:
    """Stands in for a ``NetworkConfig``: what the pipeline reads (``divisor``) and a JSON description."""

    members: dict[str, dict[str, Any]]
    divisor: int
    kind: str = "ensemble"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "members": copy.deepcopy(self.members), "divisor": self.divisor}


class EnsembleNetwork(SegNetwork):
    """``forward(x)`` = logit of the mean of the members' sigmoid outputs (keyed by population code)."""

    def __init__(self, members: dict[str, SegNetwork]) -> None:
        super().__init__()
        if not members:
            raise InputError("An ensemble needs at least one member network.")
        self.members = nn.ModuleDict(members)
        divisor = 1
        for net in members.values():
            divisor = math.lcm(divisor, int(net.config.divisor))
        self.config = EnsembleConfig({code: net.config.to_dict() for code, net in members.items()}, divisor)  # type: ignore[assignment]
        self.feature_channels = {}

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for net in self.members.values():
            p = torch.sigmoid(net(x).float())
            total = p if total is None else total + p
        return total / len(self.members)

    def forward_features(self, x: torch.Tensor) -> NetOutput:
        p = self.probabilities(x).clamp(EPS, 1 - EPS)
        return NetOutput(torch.log(p) - torch.log1p(-p), [], {})


def load_ensemble(spec: Sequence[str] | dict[str, str], name: str | None = None) -> Bundle:
    """Load the member bundles (``{population: path}`` or ``["GLI=RUN", ...]``) into one ensemble bundle.

    Raises:
        InputError: a bad pair, an unloadable member, or members with different preprocessing.
    """
    members = parse_assignments(spec, "--ensemble")
    if not members:
        raise InputError("--ensemble needs POPULATION=PATH pairs, e.g. --ensemble GLI=runs/gli PED=runs/ped.")
    bundles: dict[str, Bundle] = {}
    for code, path in members.items():
        try:
            bundles[code] = load_bundle(path)
        except BundleError as exc:
            raise InputError(f"Ensemble member {code} ('{path}') cannot be loaded: {exc}") from exc
    first_code, first = next(iter(bundles.items()))
    for code, b in bundles.items():
        for key in ("preprocessing", "modality_encoding"):
            if b.meta.get(key) != first.meta.get(key):
                raise InputError(f"Ensemble members {first_code} and {code} differ in {key} "
                                 f"({first.meta.get(key)} vs {b.meta.get(key)}); members must share it (train them "
                                 "with the same --spacing).")
    network = EnsembleNetwork({code: b.network for code, b in bundles.items()}).eval()
    meta = copy.deepcopy(first.meta)
    codes = list(bundles)
    meta.update({
        "name": name or "ensemble-" + "-".join(codes),
        "description": f"average of {len(codes)} teachers ({', '.join(codes)})",
        "role": "ensemble",
        "populations": sorted({p for b in bundles.values() for p in b.meta.get("populations", [])}),
        "network": network.config.to_dict(),
        "members": {code: {"path": str(Path(members[code]).resolve()), "name": b.name,
                           "weights_sha256": b.meta.get("weights_sha256")} for code, b in bundles.items()},
        "metrics": {},
    })
    meta["inference"]["roi_size"] = [max(int(r), network.config.divisor) // network.config.divisor * network.config.divisor
                                     for r in first.meta["inference"]["roi_size"]]
    meta["inference"]["threshold"] = 0.5  # the members' thresholds were chosen for each alone, not for the average
    meta["inference"].pop("mirror", None)  # one pass per member: the average is the ensemble's own smoothing
    return Bundle(Path(members[first_code]), meta, network)
