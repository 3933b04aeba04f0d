"""Segmentation networks built from a JSON config on MONAI building blocks.

Every network predicts three overlapping region channels (WT, TC, ET; sigmoid outputs, region-based
training as in MONAI's BraTS models and nnU-Net) and exposes its intermediate features, which the
distillation losses need (encoder stages, bottleneck, decoder stages).

``network(x)`` returns the main logits ``(B, 3, *S)``; ``network.forward_features(x)`` returns a
:class:`NetOutput` with the logits, the deep-supervision logits (coarser decoder stages, coarse last) and a
dict of features keyed ``enc0..encN-1``, ``bottleneck``, ``dec0..`` (``dec0`` is the finest decoder
stage). ``network.feature_channels`` gives the channel count of each feature.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

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


@dataclass
class NetOutput:
    """Everything a forward pass gives: main logits, deep-supervision logits and named features."""

    logits: torch.Tensor
    aux_logits: list[torch.Tensor]
    features: dict[str, torch.Tensor]


class SegNetwork(nn.Module):
    """Base class. Subclasses implement :meth:`forward_features`; ``forward`` returns the logits only."""

    config: NetworkConfig
    feature_channels: dict[str, int]

    def forward_features(self, x: torch.Tensor) -> NetOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).logits


class ResUNet(SegNetwork):
    """Residual U-Net (nnU-Net style) on MONAI's DynUNet blocks, with deep supervision and features.

    Input ``(B, in_channels, *S)`` with every ``S`` a multiple of ``config.divisor``.
    """

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        from monai.networks.blocks.dynunet_block import UnetOutBlock, UnetResBlock, UnetUpBlock

        self.config = config
        ch = config.channels
        norm = config.norm
        drop = config.dropout or None
        self.encoders = nn.ModuleList(
            UnetResBlock(3, config.in_channels if i == 0 else ch[i - 1], c, kernel_size=3,
                         stride=1 if i == 0 else 2, norm_name=norm, dropout=drop)
            for i, c in enumerate(ch)
        )
        self.decoders = nn.ModuleList(
            UnetUpBlock(3, ch[i + 1], ch[i], kernel_size=3, stride=1, upsample_kernel_size=2,
                        norm_name=norm, dropout=drop)
            for i in range(len(ch) - 1)
        )
        self.head = UnetOutBlock(3, ch[0], config.out_channels)
        self.aux_heads = nn.ModuleList(
            UnetOutBlock(3, ch[i + 1], config.out_channels) for i in range(config.deep_supervision)
        )
        n = len(ch)
        self.feature_channels = {f"enc{i}": ch[i] for i in range(n - 1)}
        self.feature_channels["bottleneck"] = ch[-1]
        self.feature_channels.update({f"dec{i}": ch[i] for i in range(n - 1)})

    def forward_features(self, x: torch.Tensor) -> NetOutput:
        skips = []
        for enc in self.encoders:
            x = enc(x)
            skips.append(x)
        features = {f"enc{i}": s for i, s in enumerate(skips[:-1])}
        features["bottleneck"] = x
        for i in reversed(range(len(self.decoders))):
            x = self.decoders[i](x, skips[i])
            features[f"dec{i}"] = x
        aux = [head(features[f"dec{i + 1}"]) for i, head in enumerate(self.aux_heads)]
        return NetOutput(self.head(x), aux, features)


class SegResNetWrapper(SegNetwork):
    """MONAI SegResNet (Myronenko, BrainLes 2018) with named features; no deep supervision."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        from monai.networks.nets import SegResNet

        self.config = config
        blocks_down = tuple(config.extra.get("blocks_down", (1, 2, 2, 4)))
        blocks_up = tuple(config.extra.get("blocks_up", (1,) * (len(blocks_down) - 1)))
        init = config.channels[0]
        self.net = SegResNet(spatial_dims=3, init_filters=init, in_channels=config.in_channels,
                             out_channels=config.out_channels, dropout_prob=config.dropout or None,
                             blocks_down=blocks_down, blocks_up=blocks_up)
        n = len(blocks_down)
        self.feature_channels = {f"enc{i}": init * 2**i for i in range(n - 1)}
        self.feature_channels["bottleneck"] = init * 2 ** (n - 1)
        self.feature_channels.update({f"dec{i}": init * 2**i for i in range(n - 1)})

    def forward_features(self, x: torch.Tensor) -> NetOutput:
        net = self.net
        x, down = net.encode(x)  # down: finest first, bottleneck last
        features = {f"enc{i}": d for i, d in enumerate(down[:-1])}
        features["bottleneck"] = x
        skips = list(reversed(down))
        for i, (up, upl) in enumerate(zip(net.up_samples, net.up_layers)):
            x = upl(up(x) + skips[i + 1])
            features[f"dec{len(net.up_layers) - 1 - i}"] = x
        logits = net.conv_final(x)
        return NetOutput(logits, [], features)


class SwinUNETRWrapper(SegNetwork):
    """MONAI SwinUNETR (Hatamizadeh et al., BrainLes 2021) with named features; no deep supervision."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        from monai.networks.nets import SwinUNETR

        self.config = config
        fs = config.channels[0]
        self.net = SwinUNETR(in_channels=config.in_channels, out_channels=config.out_channels,
                             feature_size=fs, spatial_dims=3, drop_rate=config.dropout,
                             use_checkpoint=bool(config.extra.get("checkpoint", False)))
        self.feature_channels = {"enc0": fs, "enc1": fs, "enc2": 2 * fs, "enc3": 4 * fs,
                                 "bottleneck": 16 * fs, "dec0": fs, "dec1": fs, "dec2": 2 * fs}

    def forward_features(self, x: torch.Tensor) -> NetOutput:
        n = self.net
        hidden = n.swinViT(x, n.normalize)
        enc0 = n.encoder1(x)
        enc1 = n.encoder2(hidden[0])
        enc2 = n.encoder3(hidden[1])
        enc3 = n.encoder4(hidden[2])
        bottleneck = n.encoder10(hidden[4])
        dec3 = n.decoder5(bottleneck, hidden[3])
        dec2 = n.decoder4(dec3, enc3)
        dec1 = n.decoder3(dec2, enc2)
        dec0 = n.decoder2(dec1, enc1)
        out = n.decoder1(dec0, enc0)
        features = {"enc0": enc0, "enc1": enc1, "enc2": enc2, "enc3": enc3, "bottleneck": bottleneck,
                    "dec0": out, "dec1": dec0, "dec2": dec1}
        return NetOutput(n.out(out), [], features)


_BUILDERS = {"resunet": ResUNet, "segresnet": SegResNetWrapper, "swinunetr": SwinUNETRWrapper}


def build_network(config: NetworkConfig | dict[str, Any]) -> SegNetwork:
    """Build a network from its config (a :class:`NetworkConfig` or its JSON dict)."""
    if isinstance(config, dict):
        config = NetworkConfig.from_dict(config)
    return _BUILDERS[config.kind](config)


def count_parameters(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())
