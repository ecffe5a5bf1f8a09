"""PyTorch reference for the IR / IR-SE "Backbone" (TreB1eN InsightFace_Pytorch ``model.py``).

Re-declared (no torchvision, no checkpoint download) with the original class and attribute
names, so its ``state_dict`` keys are exactly those of released checkpoints
(``input_layer.*``, ``body.<i>.{shortcut_layer,res_layer}.*``, ``output_layer.{0,3,4}.*``).
The only departures from the original are configuration knobs for fast tests: per-stage unit
counts and widths, the embedding size, and any input side (the original asserts 112 or 224).
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Sequence

import torch
from torch.nn import (
    AdaptiveAvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Linear,
    MaxPool2d,
    Module,
    PReLU,
    ReLU,
    Sequential,
    Sigmoid,
)

__all__ = [
    "Backbone",
    "Bottleneck",
    "Flatten",
    "SEModule",
    "bottleneck_IR",
    "bottleneck_IR_SE",
    "get_blocks",
    "l2_norm",
]

# num_layers -> units per stage (the original's get_blocks).
STAGE_UNITS = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}


class Flatten(Module):
    """``x.view(N, -1)``: NCHW flatten order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), -1)


def l2_norm(x: torch.Tensor, axis: int = 1) -> torch.Tensor:
    """Row-wise L2 normalisation, as in the original."""
    return torch.div(x, torch.norm(x, 2, axis, True))


class SEModule(Module):
    """Squeeze-excitation with 1x1 convs ``fc1``/``fc2`` (no bias)."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.avg_pool = AdaptiveAvgPool2d(1)
        self.fc1 = Conv2d(channels, channels // reduction, kernel_size=1, padding=0, bias=False)
        self.relu = ReLU(inplace=True)
        self.fc2 = Conv2d(channels // reduction, channels, kernel_size=1, padding=0, bias=False)
        self.sigmoid = Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        module_input = x
        x = self.avg_pool(x)
        x = self.fc1(x)
        x = self.relu(x)
        x = self.fc2(x)
        x = self.sigmoid(x)
        return module_input * x


class bottleneck_IR(Module):  # original (non-PEP 8) class name
    """BN-conv-PReLU-conv(stride)-BN plus a MaxPool(1, stride) or conv1x1/BN shortcut."""

    def __init__(self, in_channel: int, depth: int, stride: int) -> None:
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer = MaxPool2d(1, stride)
        else:
            self.shortcut_layer = Sequential(
                Conv2d(in_channel, depth, (1, 1), stride, bias=False), BatchNorm2d(depth)
            )
        self.res_layer = Sequential(
            BatchNorm2d(in_channel),
            Conv2d(in_channel, depth, (3, 3), (1, 1), 1, bias=False),
            PReLU(depth),
            Conv2d(depth, depth, (3, 3), stride, 1, bias=False),
            BatchNorm2d(depth),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut_layer(x)
        res = self.res_layer(x)
        return res + shortcut


class bottleneck_IR_SE(Module):  # original (non-PEP 8) class name
    """:class:`bottleneck_IR` with an ``SEModule(depth, 16)`` closing the residual branch."""

    def __init__(self, in_channel: int, depth: int, stride: int) -> None:
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer = MaxPool2d(1, stride)
        else:
            self.shortcut_layer = Sequential(
                Conv2d(in_channel, depth, (1, 1), stride, bias=False), BatchNorm2d(depth)
            )
        self.res_layer = Sequential(
            BatchNorm2d(in_channel),
            Conv2d(in_channel, depth, (3, 3), (1, 1), 1, bias=False),
            PReLU(depth),
            Conv2d(depth, depth, (3, 3), stride, 1, bias=False),
            BatchNorm2d(depth),
            SEModule(depth, 16),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut_layer(x)
        res = self.res_layer(x)
        return res + shortcut


class Bottleneck(namedtuple("Block", ["in_channel", "depth", "stride"])):
    """A named tuple describing one unit."""


def get_block(in_channel: int, depth: int, num_units: int, stride: int = 2) -> list[Bottleneck]:
    return [Bottleneck(in_channel, depth, stride)] + [
        Bottleneck(depth, depth, 1) for _ in range(num_units - 1)
    ]


def get_blocks(
    units: Sequence[int], widths: Sequence[int] = (64, 128, 256, 512)
) -> list[list[Bottleneck]]:
    """The original's ``get_blocks(num_layers)`` with the units and widths as arguments."""
    in_channels = (widths[0], *widths[:3])
    return [get_block(i, d, n) for i, d, n in zip(in_channels, widths, units, strict=True)]


class Backbone(Module):
    """TreB1eN's ``Backbone(num_layers, drop_ratio, mode)``; returns ``l2_norm`` of the output.

    Args:
      num_layers: 50, 100 or 152 (ignored when ``units`` is given).
      drop_ratio: dropout before the linear layer (inactive in eval mode).
      mode: ``"ir"`` or ``"ir_se"``.
      units: units per stage, overriding ``num_layers``.
      widths: channels per stage (original: 64, 128, 256, 512).
      num_features: embedding size (original: 512).
      input_size: square input side (original: 112 -> 7x7 before the linear layer).
      normalise: return ``l2_norm(x)`` as TreB1eN does; ``False`` gives the raw BN1d output, as
        face.evoLVe's and AMT-GAN's copies return.
    """

    def __init__(
        self,
        num_layers: int = 50,
        drop_ratio: float = 0.4,
        mode: str = "ir",
        *,
        units: Sequence[int] | None = None,
        widths: Sequence[int] = (64, 128, 256, 512),
        num_features: int = 512,
        input_size: int = 112,
        normalise: bool = True,
    ) -> None:
        super().__init__()
        if mode not in ("ir", "ir_se"):
            raise ValueError("mode should be ir or ir_se")
        blocks = get_blocks(units if units is not None else STAGE_UNITS[num_layers], widths)
        unit_module = bottleneck_IR if mode == "ir" else bottleneck_IR_SE
        self.input_layer = Sequential(
            Conv2d(3, widths[0], (3, 3), 1, 1, bias=False), BatchNorm2d(widths[0]), PReLU(widths[0])
        )
        side = input_size
        for _ in range(4):  # four stride-2 units
            side = (side - 1) // 2 + 1
        self.output_layer = Sequential(
            BatchNorm2d(widths[3]),
            Dropout(drop_ratio),
            Flatten(),
            Linear(widths[3] * side * side, num_features),
            BatchNorm1d(num_features),
        )
        self.body = Sequential(
            *(unit_module(b.in_channel, b.depth, b.stride) for block in blocks for b in block)
        )
        self.normalise = normalise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_layer(x)
        x = self.body(x)
        x = self.output_layer(x)
        return l2_norm(x) if self.normalise else x
