"""Network configurations: what is needed to rebuild a network, stored in every bundle's ``model.json``.

Kept free of torch so that listing and describing bundles (e.g. in Slicer's model selector) stays light.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .constants import MODALITY_CODES, REGION_CODES

NETWORK_KINDS = ("resunet", "segresnet", "swinunetr")


@dataclass
class NetworkConfig:
    """What is needed to rebuild a network; stored in every bundle's ``model.json``.

    Attributes:
        kind: one of ``resunet`` (residual U-Net on MONAI DynUNet blocks), ``segresnet`` (MONAI SegResNet,
            Myronenko 2018) or ``swinunetr`` (MONAI SwinUNETR, Hatamizadeh et al. 2022).
        in_channels: image channels plus modality-mask channels (8 for four modalities with masks).
        out_channels: region channels (3: WT, TC, ET).
        channels: feature channels per resolution level (``resunet``); ``channels[0]`` is the init filter
            count of ``segresnet`` and the feature size of ``swinunetr``.
        deep_supervision: number of extra output heads on coarser decoder stages (``resunet`` only).
        norm: normalisation layer name understood by MONAI (``instance``, ``batch``, ``group``).
        dropout: dropout probability in the blocks.
    """

    kind: str = "resunet"
    in_channels: int = 2 * len(MODALITY_CODES)
    out_channels: int = len(REGION_CODES)
    channels: tuple[int, ...] = (16, 32, 64, 128)
    deep_supervision: int = 2
    norm: str = "instance"
    dropout: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        if self.kind not in NETWORK_KINDS:
            raise ValueError(f"Unknown network kind '{self.kind}'; known: {', '.join(NETWORK_KINDS)}.")
        if self.in_channels < 1 or self.out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be positive, got {self.in_channels}, {self.out_channels}.")
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"channels must be a non-empty list of positive ints, got {list(self.channels)}.")
        if self.kind == "resunet" and not 0 <= self.deep_supervision < len(self.channels) - 1:
            raise ValueError(
                f"deep_supervision={self.deep_supervision} needs 0 <= value < {len(self.channels) - 1} "
                f"for {len(self.channels)} resolution levels."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}.")

    @property
    def divisor(self) -> int:
        """Spatial sizes must be a multiple of this."""
        if self.kind == "swinunetr":
            return 32
        if self.kind == "segresnet":
            return 2 ** (len(self.extra.get("blocks_down", (1, 2, 2, 4))) - 1)
        return 2 ** (len(self.channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NetworkConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"Unknown network config keys {sorted(unknown)}; known: {sorted(known)}.")
        return cls(**d)

    @classmethod
    def from_json(cls, path_or_text: str) -> NetworkConfig:
        text = path_or_text
        if not path_or_text.lstrip().startswith("{"):
            with open(path_or_text, encoding="utf-8") as f:
                text = f.read()
        return cls.from_dict(json.loads(text))
