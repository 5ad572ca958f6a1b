"""VGG-16 with BatchNorm, the authors' CIFAR variant (../shared/papers/advmoe-backbones-facts.md Sec. 2.3; the paper
names VGG-16 only, Sec. 5).

13 3x3 convs (64, 64, M, 128, 128, M, 256 x 3, M, 512 x 3, M, 512 x 3; M a 2x2 max-pool: four, so 32 px leave a
2x2 map), each followed by BatchNorm and ReLU (the authors' `vgg16_bn`, which their README trains; the paper does
not say). Head: an adaptive average pool to 2x2, then Linear(4 C, 256), ReLU, Linear(256, 256), ReLU,
Linear(256, classes), whose hidden width 256 is not scaled (the authors'). MoE: every conv but the first (the
authors' placement), each expert r x C channels.
"""
from __future__ import annotations

import torch
from torch import nn

from .moe import RoutedNet
from .resnet import STEMS, MakeConv, MakeNorm, Width, batch_norm

CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
HIDDEN = 256


class VGG(RoutedNet):
    def __init__(self, widths: list[int], num_classes: int, make_conv: MakeConv, make_norm: MakeNorm = batch_norm):
        super().__init__()
        layers, c_in = [], 3
        for i, c in enumerate(widths):
            if c == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            conv = nn.Conv2d(c_in, c, 3, 1, 1, bias=False) if i == 0 else make_conv(c_in, c, 1)
            layers += [conv, make_norm(c, False), nn.ReLU(inplace=True)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Sequential(nn.Linear(4 * c_in, HIDDEN), nn.ReLU(inplace=True), nn.Linear(HIDDEN, HIDDEN),
                                        nn.ReLU(inplace=True), nn.Linear(HIDDEN, num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))

    def copy_kept(self, small: "VGG") -> None:
        """A chain: each conv reads the previous BatchNorm's kept channels; the first linear layer reads each kept
        channel's four pooled positions."""
        from .sparse import copy_kept

        kept = torch.arange(3)
        big = [m for m in self.features if not isinstance(m, (nn.ReLU, nn.MaxPool2d))]
        little = [m for m in small.features if not isinstance(m, (nn.ReLU, nn.MaxPool2d))]
        for i in range(0, len(big), 2):
            kept = copy_kept(big[i], big[i + 1], little[i], little[i + 1], kept)
        small.classifier[0].weight.copy_(self.classifier[0].weight[:, (4 * kept[:, None] + torch.arange(4)).flatten()])
        small.classifier[0].bias.copy_(self.classifier[0].bias)
        for i in (2, 4):
            small.classifier[i].load_state_dict(self.classifier[i].state_dict())


def vgg16(width: Width, num_classes: int, make_conv: MakeConv, make_norm: MakeNorm = batch_norm,
          stem: str = "cifar") -> VGG:
    if stem != "cifar":
        raise ValueError(f"VGG-16 has the paper's CIFAR layout only (stems {', '.join(STEMS[:1])}); got stem {stem!r}")
    return VGG([c if c == "M" else width(c) for c in CONFIG], num_classes, make_conv, make_norm)
