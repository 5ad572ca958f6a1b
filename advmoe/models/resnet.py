"""CIFAR ResNet-18 (3x3 stem, no max-pool; the implementation the paper cites, Appendix B [71]).

One definition serves Dense, S-Dense, MoE and Sparse: `make_conv` decides what a 3x3 conv of a residual
block is (a plain conv, or an MoE conv of N experts), `make_norm` what follows a conv (a BatchNorm, or a
BatchNorm with a channel mask; `stream` says whether the layer writes the stage's residual stream), and
every width is already scaled by r.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .moe import RoutedNet

MakeConv = Callable[[int, int, int], nn.Module]  # (in_channels, out_channels, stride) -> 3x3 conv
MakeNorm = Callable[[int, bool], nn.Module]  # (channels, writes the residual stream?) -> normalisation layer


def batch_norm(channels: int, stream: bool) -> nn.Module:
    return nn.BatchNorm2d(channels)


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
                 make_norm: MakeNorm = batch_norm):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), make_norm(widths[0], True),
                                  nn.ReLU(inplace=True))
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


def resnet18(widths: list[int], num_classes: int, make_conv: MakeConv, make_norm: MakeNorm = batch_norm) -> ResNet18:
    base = widths[0]
    return ResNet18([base, 2 * base, 4 * base, 8 * base], num_classes, make_conv, make_norm=make_norm)
