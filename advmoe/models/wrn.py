"""Wide-ResNet-28-10 (Zagoruyko & Komodakis, 2016), pre-activation, no dropout: the paper's WRN-28-10 (Sec. 5,
Appendix B; ../shared/papers/advmoe-backbones-facts.md Sec. 2.2).

A 3x3 stem of 16 channels (7x7 stride 2 and a max-pool for ImageNet), three groups of four blocks of 160, 320 and
640 channels (depth 28 = 6 x 4 + 4, widen factor 10), then BatchNorm, ReLU, global average pool and a linear
classifier. Every width is `width(c)` of the paper's c: each layer rounded on its own, as the authors' int(r * c).

Every block is the standard pre-activation block (BN -> ReLU -> conv, twice), its 1x1 shortcut reading the
activated input where the shape changes. The MoE model is this same network with experts: `make_conv` makes both
3x3 convs and the 1x1 shortcut of every block MoE convs (the paper's rule, "every conv of the backbone's blocks", and
the authors' placement), the stem stays dense. The authors' MoE WRN differs from their dense one (its first block
of each group convolves the raw input, skipping that block's BN and ReLU); ours does not copy that.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .moe import RoutedNet, global_average_pool
from .resnet import MakeConv, MakeNorm, Width, batch_norm, stem_conv, stem_pool

PAPER_WIDTHS = (16, 160, 320, 640)  # stem, groups (widen factor 10)
BLOCKS_PER_GROUP = 4  # (28 - 4) / 6


class PreActBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, make_conv: MakeConv, make_norm: MakeNorm):
        super().__init__()
        self.bn1, self.conv1 = make_norm(c_in, True), make_conv(c_in, c_out, stride)  # bn1 reads the stream
        self.bn2, self.conv2 = make_norm(c_out, False), make_conv(c_out, c_out, 1)
        self.shortcut = make_conv(c_in, c_out, stride, 1) if stride != 1 or c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(a))))
        return out + (self.shortcut(a) if self.shortcut is not None else x)


class WideResNet(RoutedNet):
    def __init__(self, widths: list[int], num_classes: int, make_conv: MakeConv, make_norm: MakeNorm = batch_norm,
                 stem: str = "cifar", blocks: int = BLOCKS_PER_GROUP):
        super().__init__()
        # The ImageNet stem has its BatchNorm and ReLU before the pool (the authors' wrn_imagenet); the CIFAR stem is
        # the bare conv, the first block's BatchNorm follows it.
        self.stem = nn.Sequential(stem_conv(3, widths[0], stem), *(
            [make_norm(widths[0], True), nn.ReLU(inplace=True), *stem_pool(stem)] if stem == "imagenet" else []))
        groups, c_in = [], widths[0]
        for i, c_out in enumerate(widths[1:]):
            group = []
            for j in range(blocks):
                group.append(PreActBlock(c_in, c_out, (1 if i == 0 else 2) if j == 0 else 1, make_conv, make_norm))
                c_in = c_out
            groups.append(nn.Sequential(*group))
        self.groups = nn.Sequential(*groups)
        self.bn = make_norm(c_in, True)
        self.fc = nn.Linear(c_in, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(global_average_pool(F.relu(self.bn(self.groups(self.stem(x))))))

    def mask_producers(self) -> dict[int, list[nn.Module]]:
        """id(mask) -> the convs writing the channels it masks (a Sparse model): a group's stream mask, the stem (or
        the previous group's blocks), each block's second conv and shortcut; a block's inner mask, its first conv."""
        out: dict[int, list[nn.Module]] = {}
        blocks = [b for g in self.groups for b in g]
        out.setdefault(id(blocks[0].bn1.mask), []).append(self.stem[0])
        for block, reader in zip(blocks, [b.bn1 for b in blocks[1:]] + [self.bn]):
            out.setdefault(id(block.bn2.mask), []).append(block.conv1)
            out.setdefault(id(reader.mask), []).extend([block.conv2] + ([block.shortcut] if block.shortcut else []))
        return out

    def copy_kept(self, small: "WideResNet") -> None:
        """The stream's kept channels are those of the BatchNorm reading it (each block's bn1, the final bn); a
        block's convs read the activated input (bn1's channels) or the inner bn2's."""
        from .sparse import copy_kept

        blocks = [b for g in self.groups for b in g]
        little_blocks = [b for g in small.groups for b in g]
        readers = [b.bn1 for b in blocks[1:]] + [self.bn]  # what reads each block's output
        stream = blocks[0].bn1.mask.kept()
        copy_kept(self.stem[0], None, small.stem[0], None, torch.arange(3), stream)
        if len(self.stem) > 1:
            copy_kept(None, self.stem[1], None, small.stem[1], stream)
        for big, little, reader in zip(blocks, little_blocks, readers):
            copy_kept(None, big.bn1, None, little.bn1, stream)
            inner = copy_kept(big.conv1, big.bn2, little.conv1, little.bn2, stream)
            out = copy_kept(big.conv2, None, little.conv2, None, inner, reader.mask.kept())
            if big.shortcut is not None:
                copy_kept(big.shortcut, None, little.shortcut, None, stream, out)
            stream = out
        copy_kept(None, self.bn, None, small.bn, stream)
        small.fc.weight.copy_(self.fc.weight[:, stream])
        small.fc.bias.copy_(self.fc.bias)


def wrn28_10(width: Width, num_classes: int, make_conv: MakeConv, make_norm: MakeNorm = batch_norm,
             stem: str = "cifar") -> WideResNet:
    return WideResNet([width(c) for c in PAPER_WIDTHS], num_classes, make_conv, make_norm, stem)
