"""A faithful PyTorch MobileFaceNet: TreB1eN InsightFace_Pytorch ``model.py``.

This is the network AMT-GAN and DiffAM load as ``irse.MobileFaceNet(512)``. Class names,
attribute names, constructor signatures, layer order and the final ``l2_norm`` are the
original's, so the state-dict keys are exactly those of the released checkpoints. The only
change: :class:`MobileFaceNet` takes its widths, expanded widths and block counts as keyword
arguments (defaulting to the original numbers) so tests can build a narrow variant.

Unlike ``.nets.MobileFaceNet`` (a generalised cousin for the ONNX tests, with a grouped
``conv_6_sep`` and different expansions) this one is the original layout.
"""

from __future__ import annotations

import torch
from torch.nn import BatchNorm1d, BatchNorm2d, Conv2d, Linear, Module, PReLU, Sequential

__all__ = [
    "Conv_block",
    "Depth_Wise",
    "Flatten",
    "Linear_block",
    "MobileFaceNet",
    "Residual",
    "l2_norm",
]


class Flatten(Module):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return input.view(input.size(0), -1)


def l2_norm(input: torch.Tensor, axis: int = 1) -> torch.Tensor:
    norm = torch.norm(input, 2, axis, True)
    return torch.div(input, norm)


class Conv_block(Module):  # original (non-PEP 8) class name
    def __init__(
        self,
        in_c: int,
        out_c: int,
        kernel: tuple[int, int] = (1, 1),
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int] = (0, 0),
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.conv = Conv2d(
            in_c,
            out_channels=out_c,
            kernel_size=kernel,
            groups=groups,
            stride=stride,
            padding=padding,
            bias=False,
        )
        self.bn = BatchNorm2d(out_c)
        self.prelu = PReLU(out_c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        x = self.bn(x)
        x = self.prelu(x)
        return x


class Linear_block(Module):  # original (non-PEP 8) class name
    def __init__(
        self,
        in_c: int,
        out_c: int,
        kernel: tuple[int, int] = (1, 1),
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int] = (0, 0),
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.conv = Conv2d(
            in_c,
            out_channels=out_c,
            kernel_size=kernel,
            groups=groups,
            stride=stride,
            padding=padding,
            bias=False,
        )
        self.bn = BatchNorm2d(out_c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        x = self.bn(x)
        return x


class Depth_Wise(Module):  # original (non-PEP 8) class name
    def __init__(
        self,
        in_c: int,
        out_c: int,
        residual: bool = False,
        kernel: tuple[int, int] = (3, 3),
        stride: tuple[int, int] = (2, 2),
        padding: tuple[int, int] = (1, 1),
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.conv = Conv_block(in_c, out_c=groups, kernel=(1, 1), padding=(0, 0), stride=(1, 1))
        self.conv_dw = Conv_block(
            groups, groups, groups=groups, kernel=kernel, padding=padding, stride=stride
        )
        self.project = Linear_block(groups, out_c, kernel=(1, 1), padding=(0, 0), stride=(1, 1))
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.residual:
            short_cut = x
        x = self.conv(x)
        x = self.conv_dw(x)
        x = self.project(x)
        if self.residual:  # noqa: SIM108 (kept as the original writes it)
            output = short_cut + x
        else:
            output = x
        return output


class Residual(Module):
    def __init__(
        self,
        c: int,
        num_block: int,
        groups: int,
        kernel: tuple[int, int] = (3, 3),
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int] = (1, 1),
    ) -> None:
        super().__init__()
        modules = []
        for _ in range(num_block):
            modules.append(
                Depth_Wise(
                    c,
                    c,
                    residual=True,
                    kernel=kernel,
                    padding=padding,
                    stride=stride,
                    groups=groups,
                )
            )
        self.model = Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class MobileFaceNet(Module):
    """``MobileFaceNet(512)`` is the original; the keyword arguments only exist for tests.

    Args:
      embedding_size: output length.
      stem_width: channels of ``conv1``/``conv2_dw`` (64).
      widths: output channels of ``conv_23``/``conv_3``, ``conv_34``/``conv_4``,
        ``conv_45``/``conv_5`` (64, 128, 128).
      down_groups: ``groups`` (expanded width) of ``conv_23``, ``conv_34``, ``conv_45``.
      res_groups: ``groups`` of ``conv_3``, ``conv_4``, ``conv_5``.
      blocks: ``num_block`` of ``conv_3``, ``conv_4``, ``conv_5``.
      sep_width: channels of ``conv_6_sep`` and ``conv_6_dw`` (512).
      gdc_kernel: kernel of ``conv_6_dw``; (7, 7) for 112x112 inputs.
    """

    def __init__(
        self,
        embedding_size: int = 512,
        *,
        stem_width: int = 64,
        widths: tuple[int, int, int] = (64, 128, 128),
        down_groups: tuple[int, int, int] = (128, 256, 512),
        res_groups: tuple[int, int, int] = (128, 256, 256),
        blocks: tuple[int, int, int] = (4, 6, 2),
        sep_width: int = 512,
        gdc_kernel: tuple[int, int] = (7, 7),
    ) -> None:
        super().__init__()
        s, (w1, w2, w3), (d1, d2, d3), (r1, r2, r3) = stem_width, widths, down_groups, res_groups
        self.conv1 = Conv_block(3, s, kernel=(3, 3), stride=(2, 2), padding=(1, 1))
        self.conv2_dw = Conv_block(s, s, kernel=(3, 3), stride=(1, 1), padding=(1, 1), groups=s)
        self.conv_23 = Depth_Wise(s, w1, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=d1)
        self.conv_3 = Residual(
            w1, num_block=blocks[0], groups=r1, kernel=(3, 3), stride=(1, 1), padding=(1, 1)
        )
        self.conv_34 = Depth_Wise(w1, w2, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=d2)
        self.conv_4 = Residual(
            w2, num_block=blocks[1], groups=r2, kernel=(3, 3), stride=(1, 1), padding=(1, 1)
        )
        self.conv_45 = Depth_Wise(w2, w3, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=d3)
        self.conv_5 = Residual(
            w3, num_block=blocks[2], groups=r3, kernel=(3, 3), stride=(1, 1), padding=(1, 1)
        )
        self.conv_6_sep = Conv_block(w3, sep_width, kernel=(1, 1), stride=(1, 1), padding=(0, 0))
        self.conv_6_dw = Linear_block(
            sep_width, sep_width, groups=sep_width, kernel=gdc_kernel, stride=(1, 1), padding=(0, 0)
        )
        self.conv_6_flatten = Flatten()
        self.linear = Linear(sep_width, embedding_size, bias=False)
        self.bn = BatchNorm1d(embedding_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.conv2_dw(out)
        out = self.conv_23(out)
        out = self.conv_3(out)
        out = self.conv_34(out)
        out = self.conv_4(out)
        out = self.conv_45(out)
        out = self.conv_5(out)
        out = self.conv_6_sep(out)
        out = self.conv_6_dw(out)
        out = self.conv_6_flatten(out)
        out = self.linear(out)
        out = self.bn(out)
        return l2_norm(out)
