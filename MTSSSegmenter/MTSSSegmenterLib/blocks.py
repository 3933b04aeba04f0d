"""The residual U-Net's building blocks in plain torch, parameter for parameter MONAI's DynUNet blocks.

Importing MONAI costs 2–3 s on a laptop CPU and 18 s on the GPU image measured here (it probes its optional
dependencies), which dominated a cold ``mtss segment``. These blocks have the same submodule names,
registration order and arithmetic as ``monai.networks.blocks.dynunet_block`` (instance norm without affine
parameters, leaky ReLU 0.01, MONAI's padding rule), so bundles and checkpoints load in either, and
``ResUNet`` uses them whenever its configuration allows (instance norm, no dropout); the tests compare them
with MONAI's output for output.
"""

from __future__ import annotations

import torch
from torch import nn


class _Convolution(nn.Module):
    """Holds one convolution as ``.conv``, like ``monai.networks.blocks.Convolution`` with ``conv_only``."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, bias: bool = False,
                 transposed: bool = False) -> None:
        super().__init__()
        if transposed:  # MONAI: padding 0 and output padding 0 when kernel == stride
            self.conv: nn.Module = nn.ConvTranspose3d(cin, cout, kernel, stride=stride, bias=bias)
        else:
            self.conv = nn.Conv3d(cin, cout, kernel, stride=stride, padding=(kernel - stride + 1) // 2, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ResBlock(nn.Module):
    """conv-norm-lrelu-conv-norm plus a (1x1x1 conv + norm when the shape changes) residual, then lrelu."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _Convolution(cin, cout, 3, stride)
        self.conv2 = _Convolution(cout, cout, 3)
        self.lrelu = nn.LeakyReLU(0.01, inplace=True)
        self.norm1 = nn.InstanceNorm3d(cout)
        self.norm2 = nn.InstanceNorm3d(cout)
        self.downsample = cin != cout or stride != 1
        if self.downsample:
            self.conv3 = _Convolution(cin, cout, 1, stride)
            self.norm3 = nn.InstanceNorm3d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm2(self.conv2(self.lrelu(self.norm1(self.conv1(x)))))
        residual = self.norm3(self.conv3(x)) if self.downsample else x
        return self.lrelu(out + residual)


class BasicBlock(nn.Module):
    """Two conv-norm-lrelu layers."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = _Convolution(cin, cout, 3)
        self.conv2 = _Convolution(cout, cout, 3)
        self.lrelu = nn.LeakyReLU(0.01, inplace=True)
        self.norm1 = nn.InstanceNorm3d(cout)
        self.norm2 = nn.InstanceNorm3d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lrelu(self.norm1(self.conv1(x)))
        return self.lrelu(self.norm2(self.conv2(x)))


class UpBlock(nn.Module):
    """2x transposed convolution, concatenation with the skip, then a :class:`BasicBlock`."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.transp_conv = _Convolution(cin, cout, 2, 2, transposed=True)
        self.conv_block = BasicBlock(2 * cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv_block(torch.cat((self.transp_conv(x), skip), dim=1))


class OutBlock(nn.Module):
    """1x1x1 convolution with bias."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = _Convolution(cin, cout, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)
