"""PyTorch reference of facenet-pytorch's InceptionResnetV1, for the Flax parity tests.

Re-declared from ``facenet_pytorch/models/inception_resnet_v1.py`` (v2.6.0) because the package
imports torchvision, which has no CPU build here. Module names, parameter names and forward
order are the original's, so ``state_dict()`` keys are those of the released checkpoints
(``20180402-114759-vggface2.pt``, ``20180408-102900-casia-webface.pt``) and of AMT-GAN's
``facenet.pth``. Differences, all weightless or test-only:

* ``repeats`` makes the Block35/17/8 counts configurable (5, 10, 5 in the original) so a tiny
  variant runs fast;
* ``logits`` exists whenever ``num_classes`` is given, as in the released checkpoints and
  AMT-GAN's copy of the class (facenet-pytorch 2.x only builds it for ``pretrained`` or
  ``classify=True``);
* no weight download, no ``device`` argument.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BasicConv2d",
    "Block8",
    "Block17",
    "Block35",
    "InceptionResnetV1",
    "Mixed_6a",
    "Mixed_7a",
]


class BasicConv2d(nn.Module):
    """Conv (no bias) + BatchNorm (eps 1e-3, the TensorFlow value) + ReLU."""

    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        kernel_size: int | tuple[int, int],
        stride: int,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_planes, out_planes, kernel_size, stride=stride, padding=padding, bias=False
        )
        self.bn = nn.BatchNorm2d(out_planes, eps=0.001, momentum=0.1, affine=True)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class Block35(nn.Module):
    """Inception-ResNet-A: three branches on 256 channels, 1x1 up-projection, scaled residual."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        self.branch0 = BasicConv2d(256, 32, kernel_size=1, stride=1)
        self.branch1 = nn.Sequential(
            BasicConv2d(256, 32, kernel_size=1, stride=1),
            BasicConv2d(32, 32, kernel_size=3, stride=1, padding=1),
        )
        self.branch2 = nn.Sequential(
            BasicConv2d(256, 32, kernel_size=1, stride=1),
            BasicConv2d(32, 32, kernel_size=3, stride=1, padding=1),
            BasicConv2d(32, 32, kernel_size=3, stride=1, padding=1),
        )
        self.conv2d = nn.Conv2d(96, 256, kernel_size=1, stride=1)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1)
        return self.relu(self.conv2d(out) * self.scale + x)


class Block17(nn.Module):
    """Inception-ResNet-B: 896 channels, 1x7 then 7x1 factorised convolutions."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        self.branch0 = BasicConv2d(896, 128, kernel_size=1, stride=1)
        self.branch1 = nn.Sequential(
            BasicConv2d(896, 128, kernel_size=1, stride=1),
            BasicConv2d(128, 128, kernel_size=(1, 7), stride=1, padding=(0, 3)),
            BasicConv2d(128, 128, kernel_size=(7, 1), stride=1, padding=(3, 0)),
        )
        self.conv2d = nn.Conv2d(256, 896, kernel_size=1, stride=1)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat((self.branch0(x), self.branch1(x)), 1)
        return self.relu(self.conv2d(out) * self.scale + x)


class Block8(nn.Module):
    """Inception-ResNet-C: 1792 channels, 1x3 then 3x1; ``noReLU`` skips the final ReLU."""

    def __init__(self, scale: float = 1.0, noReLU: bool = False) -> None:
        super().__init__()
        self.scale = scale
        self.noReLU = noReLU
        self.branch0 = BasicConv2d(1792, 192, kernel_size=1, stride=1)
        self.branch1 = nn.Sequential(
            BasicConv2d(1792, 192, kernel_size=1, stride=1),
            BasicConv2d(192, 192, kernel_size=(1, 3), stride=1, padding=(0, 1)),
            BasicConv2d(192, 192, kernel_size=(3, 1), stride=1, padding=(1, 0)),
        )
        self.conv2d = nn.Conv2d(384, 1792, kernel_size=1, stride=1)
        if not noReLU:
            self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat((self.branch0(x), self.branch1(x)), 1)
        out = self.conv2d(out) * self.scale + x
        return out if self.noReLU else self.relu(out)


class Mixed_6a(nn.Module):
    """Reduction-A: 256 -> 384 + 256 + 256 (max-pooled) = 896 channels, stride 2."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = BasicConv2d(256, 384, kernel_size=3, stride=2)
        self.branch1 = nn.Sequential(
            BasicConv2d(256, 192, kernel_size=1, stride=1),
            BasicConv2d(192, 192, kernel_size=3, stride=1, padding=1),
            BasicConv2d(192, 256, kernel_size=3, stride=2),
        )
        self.branch2 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1)


class Mixed_7a(nn.Module):
    """Reduction-B: 896 -> 384 + 256 + 256 + 896 (max-pooled) = 1792 channels, stride 2."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = nn.Sequential(
            BasicConv2d(896, 256, kernel_size=1, stride=1),
            BasicConv2d(256, 384, kernel_size=3, stride=2),
        )
        self.branch1 = nn.Sequential(
            BasicConv2d(896, 256, kernel_size=1, stride=1),
            BasicConv2d(256, 256, kernel_size=3, stride=2),
        )
        self.branch2 = nn.Sequential(
            BasicConv2d(896, 256, kernel_size=1, stride=1),
            BasicConv2d(256, 256, kernel_size=3, stride=1, padding=1),
            BasicConv2d(256, 256, kernel_size=3, stride=2),
        )
        self.branch3 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x))
        return torch.cat(branches, 1)


class InceptionResnetV1(nn.Module):
    """FaceNet backbone; ``forward`` returns L2-normalised ``last_bn`` rows (``classify=False``).

    Args:
      repeats: Block35, Block17, Block8 counts (original: 5, 10, 5).
      num_classes: size of the ``logits`` classifier, or None for none.
      classify: return ``logits(last_bn)`` instead of the normalised embedding.
      dropout_prob: dropout before ``last_linear`` (identity in eval mode).
    """

    def __init__(
        self,
        repeats: Sequence[int] = (5, 10, 5),
        num_classes: int | None = None,
        classify: bool = False,
        dropout_prob: float = 0.6,
    ) -> None:
        super().__init__()
        if classify and num_classes is None:
            raise ValueError("classify=True needs num_classes")
        self.classify = classify
        self.num_classes = num_classes
        self.conv2d_1a = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.conv2d_2a = BasicConv2d(32, 32, kernel_size=3, stride=1)
        self.conv2d_2b = BasicConv2d(32, 64, kernel_size=3, stride=1, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = BasicConv2d(64, 80, kernel_size=1, stride=1)
        self.conv2d_4a = BasicConv2d(80, 192, kernel_size=3, stride=1)
        self.conv2d_4b = BasicConv2d(192, 256, kernel_size=3, stride=2)
        n1, n2, n3 = repeats
        self.repeat_1 = nn.Sequential(*(Block35(scale=0.17) for _ in range(n1)))
        self.mixed_6a = Mixed_6a()
        self.repeat_2 = nn.Sequential(*(Block17(scale=0.10) for _ in range(n2)))
        self.mixed_7a = Mixed_7a()
        self.repeat_3 = nn.Sequential(*(Block8(scale=0.20) for _ in range(n3)))
        self.block8 = Block8(noReLU=True)
        self.avgpool_1a = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout_prob)
        self.last_linear = nn.Linear(1792, 512, bias=False)
        self.last_bn = nn.BatchNorm1d(512, eps=0.001, momentum=0.1, affine=True)
        if num_classes is not None:
            self.logits = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2d_1a(x)
        x = self.conv2d_2a(x)
        x = self.conv2d_2b(x)
        x = self.maxpool_3a(x)
        x = self.conv2d_3b(x)
        x = self.conv2d_4a(x)
        x = self.conv2d_4b(x)
        x = self.repeat_1(x)
        x = self.mixed_6a(x)
        x = self.repeat_2(x)
        x = self.mixed_7a(x)
        x = self.repeat_3(x)
        x = self.block8(x)
        x = self.avgpool_1a(x)
        x = self.dropout(x)
        x = self.last_linear(x.view(x.shape[0], -1))
        x = self.last_bn(x)
        if self.classify:
            return self.logits(x)
        return F.normalize(x, p=2, dim=1)
