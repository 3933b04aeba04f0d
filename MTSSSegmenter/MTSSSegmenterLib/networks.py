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

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .netconfig import NETWORK_KINDS, NetworkConfig

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
    """Residual U-Net (nnU-Net style) with deep supervision and features, on MONAI's DynUNet blocks or their
    plain-torch twins in :mod:`.blocks` (the default where they apply: same parameters, no MONAI import).

    Input ``(B, in_channels, *S)`` with every ``S`` a multiple of ``config.divisor``.
    """

    def __init__(self, config: NetworkConfig, use_monai: bool | None = None) -> None:
        super().__init__()
        self.config = config
        ch = config.channels
        norm = config.norm
        drop = config.dropout or None
        cin = [config.in_channels] + list(ch[:-1])
        if use_monai is None:  # MONAI's blocks only where the plain-torch ones do not cover the configuration
            use_monai = not (norm == "instance" and drop is None)
        if use_monai:
            from monai.networks.blocks.dynunet_block import UnetOutBlock, UnetResBlock, UnetUpBlock

            encoders = [UnetResBlock(3, cin[i], c, kernel_size=3, stride=1 if i == 0 else 2, norm_name=norm,
                                     dropout=drop) for i, c in enumerate(ch)]
            decoders = [UnetUpBlock(3, ch[i + 1], ch[i], kernel_size=3, stride=1, upsample_kernel_size=2,
                                    norm_name=norm, dropout=drop) for i in range(len(ch) - 1)]
            heads = [UnetOutBlock(3, c, config.out_channels) for c in [ch[0]] + list(ch[1:config.deep_supervision + 1])]
        else:
            from .blocks import OutBlock, ResBlock, UpBlock

            encoders = [ResBlock(cin[i], c, stride=1 if i == 0 else 2) for i, c in enumerate(ch)]
            decoders = [UpBlock(ch[i + 1], ch[i]) for i in range(len(ch) - 1)]
            heads = [OutBlock(c, config.out_channels) for c in [ch[0]] + list(ch[1:config.deep_supervision + 1])]
        self.encoders = nn.ModuleList(encoders)
        self.decoders = nn.ModuleList(decoders)
        self.head = heads[0]
        self.aux_heads = nn.ModuleList(heads[1:])
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


__all__ = ["NETWORK_KINDS", "NetworkConfig", "NetOutput", "SegNetwork", "build_network", "count_parameters"]

_BUILDERS = {"resunet": ResUNet, "segresnet": SegResNetWrapper, "swinunetr": SwinUNETRWrapper}


def build_network(config: NetworkConfig | dict[str, Any]) -> SegNetwork:
    """Build a network from its config (a :class:`NetworkConfig` or its JSON dict)."""
    if isinstance(config, dict):
        config = NetworkConfig.from_dict(config)
    return _BUILDERS[config.kind](config)


def count_parameters(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())
