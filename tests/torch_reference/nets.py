"""Randomly initialised PyTorch reference networks for the ONNX->JAX converter tests.

The architectures are re-declared here (there is no CPU torchvision build) with the module and
parameter names of the public originals, so exported graphs look like the real checkpoints:

* :class:`IResNet` follows insightface ``arcface_torch/backbones/iresnet.py``.
* :class:`MobileFaceNet` follows the common InsightFace_Pytorch ``model.py`` layout.
* :class:`SmallResizeNet` is not a public model; it exercises Resize, ConvTranspose, Concat,
  Slice and Softmax, which the face nets do not use.

Widths and depths are configurable and default to tiny values so tests stay fast.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "IBasicBlock",
    "IResNet",
    "MobileFaceNet",
    "SmallResizeNet",
    "build_net",
    "export_onnx",
    "randomise_",
]


# ---------------------------------------------------------------------------------------------
# IResNet (arcface_torch backbones/iresnet.py)
# ---------------------------------------------------------------------------------------------


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias, as in arcface_torch."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias (the downsample projection)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation-style residual block: BN-conv-BN-PReLU-conv-BN plus identity."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.bn1(x)
        out = self.conv1(out)
        out = self.bn2(out)
        out = self.prelu(out)
        out = self.conv2(out)
        out = self.bn3(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    """insightface IResNet; ``layers=(3, 4, 14, 3)`` and widths 64..512 give IResNet-50.

    ``input_size`` fixes the spatial size entering ``fc`` (the original hard-codes 7x7 for
    112x112 inputs).
    """

    def __init__(
        self,
        layers: Sequence[int] = (1, 1, 1, 1),
        widths: Sequence[int] = (16, 32, 48, 64),
        num_features: int = 128,
        input_size: int = 56,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or len(widths) != 4:
            raise ValueError("IResNet needs four stages")
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes, eps=1e-05)
        self.prelu = nn.PReLU(self.inplanes)
        self.layer1 = self._make_layer(widths[0], layers[0], stride=2)
        self.layer2 = self._make_layer(widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(widths[3], layers[3], stride=2)
        self.bn2 = nn.BatchNorm2d(widths[3] * IBasicBlock.expansion, eps=1e-05)
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        side = input_size
        for _ in range(4):  # four stride-2 3x3 convs with padding 1
            side = (side + 2 - 3) // 2 + 1
        self.fc_scale = side * side
        self.fc = nn.Linear(widths[3] * IBasicBlock.expansion * self.fc_scale, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-05)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * IBasicBlock.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * IBasicBlock.expansion, stride),
                nn.BatchNorm2d(planes * IBasicBlock.expansion, eps=1e-05),
            )
        layers = [IBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * IBasicBlock.expansion
        layers.extend(IBasicBlock(self.inplanes, planes) for _ in range(1, blocks))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.prelu(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.bn2(x)
        x = torch.flatten(x, 1)
        x = self.dropout(x)
        x = self.fc(x)
        return self.features(x)


# ---------------------------------------------------------------------------------------------
# MobileFaceNet (InsightFace_Pytorch model.py)
# ---------------------------------------------------------------------------------------------


class Flatten(nn.Module):
    """``x.view(N, -1)`` as in the original (exports as Reshape rather than Flatten)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), -1)


class Linear_block(nn.Module):  # original (non-PEP 8) class name
    """Conv-BN without activation."""

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
        self.conv = nn.Conv2d(
            in_c, out_c, kernel, groups=groups, stride=stride, padding=padding, bias=False
        )
        self.bn = nn.BatchNorm2d(out_c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class Conv_block(Linear_block):  # original (non-PEP 8) class name
    """Conv-BN-PReLU: a Linear_block plus PReLU (same key names: conv, bn, prelu)."""

    def __init__(self, in_c: int, out_c: int, **kwargs: Any) -> None:
        super().__init__(in_c, out_c, **kwargs)
        self.prelu = nn.PReLU(out_c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(super().forward(x))


class Depth_Wise(nn.Module):  # original (non-PEP 8) class name
    """Inverted bottleneck: 1x1 expand, depthwise 3x3, linear 1x1 project (+ residual)."""

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
        # In the original, ``groups`` is the expanded width, used as a depthwise group count.
        self.conv = Conv_block(in_c, out_c=groups, kernel=(1, 1), padding=(0, 0), stride=(1, 1))
        self.conv_dw = Conv_block(
            groups, groups, groups=groups, kernel=kernel, padding=padding, stride=stride
        )
        self.project = Linear_block(groups, out_c, kernel=(1, 1), padding=(0, 0), stride=(1, 1))
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        short_cut = x
        x = self.project(self.conv_dw(self.conv(x)))
        return short_cut + x if self.residual else x


class Residual(nn.Module):
    """A stack of residual :class:`Depth_Wise` blocks."""

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
        self.model = nn.Sequential(
            *(
                Depth_Wise(
                    c,
                    c,
                    residual=True,
                    kernel=kernel,
                    padding=padding,
                    stride=stride,
                    groups=groups,
                )
                for _ in range(num_block)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class MobileFaceNet(nn.Module):
    """MobileFaceNet for 112x112 crops; defaults are a narrow variant (original: 64/128/512).

    ``sep_groups`` makes ``conv_6_sep`` a grouped (not depthwise) convolution so grouped
    convolutions with ``1 < groups < channels`` are covered as well (the original uses 1).
    """

    def __init__(
        self,
        embedding_size: int = 128,
        widths: tuple[int, int, int] = (16, 32, 64),
        expansion: int = 2,
        blocks: tuple[int, int, int] = (1, 1, 1),
        sep_groups: int = 2,
    ) -> None:
        super().__init__()
        c1, c2, c3 = widths
        self.conv1 = Conv_block(3, c1, kernel=(3, 3), stride=(2, 2), padding=(1, 1))
        self.conv2_dw = Conv_block(c1, c1, kernel=(3, 3), stride=(1, 1), padding=(1, 1), groups=c1)
        self.conv_23 = Depth_Wise(c1, c1, kernel=(3, 3), stride=(2, 2), groups=c1 * expansion)
        self.conv_3 = Residual(c1, num_block=blocks[0], groups=c1 * expansion)
        self.conv_34 = Depth_Wise(c1, c2, kernel=(3, 3), stride=(2, 2), groups=c2 * expansion)
        self.conv_4 = Residual(c2, num_block=blocks[1], groups=c2 * expansion)
        self.conv_45 = Depth_Wise(c2, c2, kernel=(3, 3), stride=(2, 2), groups=c2 * expansion)
        self.conv_5 = Residual(c2, num_block=blocks[2], groups=c2 * expansion)
        self.conv_6_sep = Conv_block(c2, c3, kernel=(1, 1), groups=sep_groups)
        # GDC: a linear 7x7 depthwise conv that pools the 7x7 map to 1x1.
        self.conv_6_dw = Linear_block(c3, c3, groups=c3, kernel=(7, 7))
        self.conv_6_flatten = Flatten()
        self.linear = nn.Linear(c3, embedding_size, bias=False)
        self.bn = nn.BatchNorm1d(embedding_size)

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
        return self.bn(out)


# ---------------------------------------------------------------------------------------------
# SmallResizeNet (resampling / layout ops)
# ---------------------------------------------------------------------------------------------


class SmallResizeNet(nn.Module):
    """Exercises Resize (nearest, bilinear, align_corners), ConvTranspose, Concat, Slice, Softmax.

    For an ``(N, 3, H, W)`` input (H, W divisible by 4) the output is
    ``(N, 2 * width, H - 2, W / 2 + 2)``; the defaults use ``(N, 3, 32, 32)``.
    """

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, kernel_size=3, padding=1)
        self.down = nn.Conv2d(width, width, kernel_size=3, stride=2, padding=1)
        # k=3, s=2, p=1, output_padding=1 exactly doubles the spatial size.
        self.up = nn.ConvTranspose2d(
            width, width, kernel_size=3, stride=2, padding=1, output_padding=1
        )
        # Grouped transpose conv (weight shape (C_in, C_out / groups, kH, kW)), no bias.
        self.up_grouped = nn.ConvTranspose2d(
            width, width, kernel_size=4, stride=2, padding=1, groups=2, bias=False
        )
        self.mix = nn.Conv2d(4 * width, 2 * width, kernel_size=3, padding=1)
        self.head = nn.Conv2d(2 * width, 2 * width, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = torch.relu(self.stem(x))  # (N, C, H, W)
        d = torch.relu(self.down(x))  # (N, C, H/2, W/2)
        # Bilinear, half-pixel (align_corners=False), downscale by 2 then upscale by 2.
        b = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)
        b = F.interpolate(b + d, scale_factor=2.0, mode="bilinear", align_corners=False)
        n = F.interpolate(d, scale_factor=2.0, mode="nearest")  # (N, C, H, W)
        # align_corners=True with a non-integer ratio (H/2 -> 3H/4) to test coordinate maths.
        a = F.interpolate(d, size=(3 * h // 4, 3 * w // 4), mode="bilinear", align_corners=True)
        a = F.interpolate(a, size=(h, w), mode="bilinear", align_corners=True)
        t = self.up(d) + self.up_grouped(d)  # (N, C, H, W)
        y = torch.cat([b, n, a, t], dim=1)  # (N, 4C, H, W)
        y = self.mix(y)
        # Slicing with a negative end and a step, then narrow() on the width axis.
        y = y[:, :, 1:-1, ::2]  # (N, 2C, H - 2, W / 2)
        z = torch.narrow(y, 3, 1, y.shape[3] - 2)  # (N, 2C, H - 2, W / 2 - 2)
        y = torch.cat([y[..., : y.shape[3] // 2], z[..., : y.shape[3] // 2 + 2]], dim=3)
        return torch.softmax(self.head(y), dim=1)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def randomise_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorm and PReLU non-identity values (in place) and switch to eval mode.

    Freshly constructed BatchNorm layers (mean 0, var 1, weight 1, bias 0) and PReLU (0.25)
    would hide bugs in how a converter folds or applies them.
    """
    gen = torch.Generator().manual_seed(seed)

    def uniform(t: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(t.shape, generator=gen, dtype=t.dtype)

    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
            # Keep variances away from 0 so the folded scale stays well conditioned.
            m.running_var.copy_(uniform(m.running_var, 0.5, 1.5))
            if m.weight is not None:
                m.weight.copy_(uniform(m.weight, 0.5, 1.5))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
        elif isinstance(m, nn.PReLU):
            m.weight.copy_(uniform(m.weight, 0.05, 0.4))
    return module.eval()


# name -> (constructor, example input shape without the batch axis)
_NETS: dict[str, tuple[type[nn.Module], tuple[int, int, int]]] = {
    "iresnet": (IResNet, (3, 56, 56)),
    "mobilefacenet": (MobileFaceNet, (3, 112, 112)),
    "small_resize": (SmallResizeNet, (3, 32, 32)),
}

NET_NAMES: tuple[str, ...] = tuple(_NETS)


def build_net(name: str, seed: int = 0) -> tuple[nn.Module, tuple[int, int, int]]:
    """Build a seeded, randomised, eval-mode reference net and its per-sample input shape."""
    cls, shape = _NETS[name]
    torch.manual_seed(seed)  # fixes the default conv / linear initialisation
    return randomise_(cls(), seed=seed + 1), shape


def export_onnx(
    module: nn.Module,
    example_input: torch.Tensor,
    opset: int,
    path: str | os.PathLike[str],
    dynamic_batch: bool = False,
) -> str:
    """Export ``module`` with the legacy TorchScript exporter; returns ``path`` as a string.

    The legacy exporter (``dynamo=False``) emits the plain op set that deployed models use and
    needs no onnxscript.  Input and output are named ``x`` and ``y``; ``dynamic_batch`` makes
    axis 0 of both symbolic.
    """
    dynamic_axes = {"x": {0: "batch"}, "y": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        # The legacy exporter is deprecated but still supported in torch 2.13.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module.eval(),
            (example_input,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    return str(path)
