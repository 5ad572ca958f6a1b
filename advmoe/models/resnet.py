"""CIFAR ResNet-18 (3x3 stem, no max-pool; the implementation the paper cites, Appendix B [71]).

One definition serves Dense, S-Dense, MoE and Sparse: `make_conv` decides what a 3x3 conv of a residual
block is (a plain conv, or an MoE conv of N experts), `make_norm` what follows a conv (a BatchNorm, or a
BatchNorm with a channel mask; `stream` says whether the layer writes the stage's residual stream), and
`width` gives a layer's channels from the paper's (already scaled by the base-width multiplier and r).

The protocol every backbone file follows (`advmoe.models.BACKBONES`): a constructor
(width, num_classes, make_conv, make_norm, stem) returning a `RoutedNet` whose `copy_kept(small)` fills the S-Dense
network `small` with the kept channels of this Sparse one (`advmoe.models.sparse.compact`).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .moe import RoutedNet

MakeConv = Callable[..., nn.Module]  # (in_channels, out_channels, stride, kernel_size=3) -> conv ("same" padding)
# (channels, what it normalises: True for a stage's residual stream, False for one conv's output, or a tuple of
# (key, channels) parts for a concatenation (DenseNet)) -> normalisation layer
MakeNorm = Callable[[int, "bool | tuple"], nn.Module]
Width = Callable[[int], int]  # the paper's channel count of a layer -> this model's
STEMS = ("cifar", "imagenet")  # 3x3 stride 1 (CIFAR, Tiny-ImageNet), or 7x7 stride 2 and a max-pool (ImageNet)


def batch_norm(channels: int, stream) -> nn.Module:
    return nn.BatchNorm2d(channels)


def stem_conv(c_in: int, c_out: int, stem: str) -> nn.Module:
    """The first conv: 3x3 stride 1 for 32 and 64 px inputs, 7x7 stride 2 (and a max-pool after its activation,
    `stem_pool`) for ImageNet's 224 px (paper Appendix B: "3x3 in the first layer for TinyImageNet, CIFAR-10 and
    CIFAR-100, and 7x7 for ImageNet")."""
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; allowed: {', '.join(STEMS)}")
    return nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False) if stem == "cifar" else nn.Conv2d(c_in, c_out, 7, 2, 3, bias=False)


def stem_pool(stem: str) -> list[nn.Module]:
    return [nn.MaxPool2d(3, 2, 1)] if stem == "imagenet" else []


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, make_conv: MakeConv, make_norm: MakeNorm = batch_norm):
        super().__init__()
        self.conv1, self.bn1 = make_conv(c_in, c_out, stride), make_norm(c_out, False)
        self.conv2, self.bn2 = make_conv(c_out, c_out, 1), make_norm(c_out, True)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), make_norm(c_out, True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18(RoutedNet):
    def __init__(self, widths: list[int], num_classes: int, make_conv: MakeConv, blocks=(2, 2, 2, 2),
                 make_norm: MakeNorm = batch_norm, stem: str = "cifar"):
        super().__init__()
        self.stem = nn.Sequential(stem_conv(3, widths[0], stem), make_norm(widths[0], True), nn.ReLU(inplace=True),
                                  *stem_pool(stem))
        stages, c_in = [], widths[0]
        for i, (c_out, n) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            stage = []
            for j in range(n):
                stage.append(BasicBlock(c_in, c_out, stride if j == 0 else 1, make_conv, make_norm))
                c_in = c_out
            stages.append(nn.Sequential(*stage))
        self.layers = nn.Sequential(*stages)
        self.fc = nn.Linear(c_in, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layers(self.stem(x)).mean((2, 3)))

    def moe_targets(self, kind: str, placement: str) -> list[str]:
        """The submodules a Robust Experts MoE replaces, placed by torchvision's stage names (layer1..layer4, the
        paper's conv2_x..conv5_x): "block-moe" replaces every BasicBlock of a stage ("layer4") or one ("layer4.1");
        "conv-moe" every conv of a stage, the 1x1 shortcut conv of its first block included, as the authors' code
        does (5 MoE convs in layer4, where their notebook says 4)."""
        stages = {f"layer{i + 1}": stage for i, stage in enumerate(self.layers)}
        stage, _, block = placement.partition(".") if isinstance(placement, str) else ("", "", "")
        allowed = [*stages] + ([f"{s}.{j}" for s, blocks in stages.items() for j in range(len(blocks))]
                               if kind == "block-moe" else [])
        if placement not in allowed:
            raise ValueError(f"unknown placement {placement!r} for {kind}; allowed: {', '.join(allowed)}")
        found = stages[stage][int(block)] if block else stages[stage]
        wanted = BasicBlock if kind == "block-moe" else nn.Conv2d
        prefix = next(n for n, m in self.named_modules() if m is found)
        return [n for n, m in self.named_modules() if isinstance(m, wanted) and (n == prefix or n.startswith(prefix + "."))]


    def copy_kept(self, small: "ResNet18") -> None:
        """A block's first conv and its shortcut read the block's input (the previous stream), its second conv reads
        the first one's kept channels."""
        from .sparse import copy_kept

        stream = copy_kept(self.stem[0], self.stem[1], small.stem[0], small.stem[1], torch.arange(3))
        for big_stage, small_stage in zip(self.layers, small.layers):
            for big, little in zip(big_stage, small_stage):
                inner = copy_kept(big.conv1, big.bn1, little.conv1, little.bn1, stream)
                out = copy_kept(big.conv2, big.bn2, little.conv2, little.bn2, inner)
                if len(big.shortcut):
                    copy_kept(big.shortcut[0], big.shortcut[1], little.shortcut[0], little.shortcut[1], stream)
                stream = out
        small.fc.weight.copy_(self.fc.weight[:, stream])
        small.fc.bias.copy_(self.fc.bias)


def resnet18(width: Width, num_classes: int, make_conv: MakeConv, make_norm: MakeNorm = batch_norm,
             stem: str = "cifar") -> ResNet18:
    """Stages of w, 2w, 4w, 8w channels, w = width(64): the later stages double the rounded first width (the
    rounding every stored ResNet-18 result used), where the other backbones round each layer's width."""
    base = width(64)
    return ResNet18([base, 2 * base, 4 * base, 8 * base], num_classes, make_conv, make_norm=make_norm, stem=stem)
