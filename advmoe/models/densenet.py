"""DenseNet-BC-40 with growth rate k = 12: the paper's "DenseNet" (Sec. 5 cites Huang et al. without a variant; its
GFLOPs, 0.07 dense and 0.02 at r = 0.5, are this network's, and the authors' code hard-codes depth 40:
../shared/papers/advmoe-backbones-facts.md Sec. 1.6, 2.4).

A 3x3 stem of 2k channels (7x7 stride 2, BatchNorm, ReLU and a max-pool for ImageNet), three dense blocks of six
bottleneck layers (BN -> ReLU -> 1x1 conv to 4k -> BN -> ReLU -> 3x3 conv to k, concatenated to the block's
features), transitions (BN -> ReLU -> 1x1 conv to half the channels, rounded down -> 2x2 average pool) between them,
then BN, ReLU, global average pool and a linear classifier. S-Dense scales the stem and k by r (the bottleneck stays
4k), as the authors' `densenet_ori`.

MoE (our design): both convs of every bottleneck layer are MoE convs, each expert r x 4k and r x k channels; the
stem and the transitions stay dense. The authors put experts on the same convs, but their MoE DenseNet does not build
and scales nothing by r (each expert would be full width), so it is not the paper's 0.03 GFLOPs model either.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .moe import RoutedNet, global_average_pool
from .resnet import MakeConv, MakeNorm, Width, batch_norm, stem_conv, stem_pool

PAPER_WIDTHS = (24, 12)  # stem (2k), growth rate k
LAYERS_PER_BLOCK = (6, 6, 6)  # (40 - 4) / 6 bottleneck layers per block
BOTTLENECK = 4  # the bottleneck conv writes 4k channels (DenseNet-BC)


class Bottleneck(nn.Module):
    """One layer of a dense block: reads the concatenation of `parts` ((key, channels): the block's input and the
    layers before it), writes k new channels."""

    def __init__(self, parts: tuple, growth: int, make_conv: MakeConv, make_norm: MakeNorm):
        super().__init__()
        c_in = sum(c for _, c in parts)
        self.norm1, self.conv1 = make_norm(c_in, parts), make_conv(c_in, BOTTLENECK * growth, 1, 1)
        self.norm2, self.conv2 = make_norm(BOTTLENECK * growth, False), make_conv(BOTTLENECK * growth, growth, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.norm2(self.conv1(F.relu(self.norm1(x))))))


class DenseBlock(nn.Module):
    def __init__(self, parts: tuple, growth: int, n_layers: int, block: int, make_conv: MakeConv,
                 make_norm: MakeNorm):
        super().__init__()
        layers = []
        for i in range(n_layers):
            layers.append(Bottleneck(parts, growth, make_conv, make_norm))
            parts = (*parts, (("growth", block, i), growth))
        self.layers = nn.ModuleList(layers)
        self.parts = parts  # what the block's output concatenates

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, 1) if len(features) > 1 else x))
        return torch.cat(features, 1)


class Transition(nn.Module):
    def __init__(self, parts: tuple, block: int, make_norm: MakeNorm):
        super().__init__()
        c_in = sum(c for _, c in parts)
        self.out_channels = c_in // 2  # compression 0.5
        self.norm = make_norm(c_in, parts)
        self.conv = nn.Conv2d(c_in, self.out_channels, 1, bias=False)
        self.parts = ((("transition", block), self.out_channels),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.norm(x))), 2)


class DenseNet(RoutedNet):
    def __init__(self, widths: list[int], num_classes: int, make_conv: MakeConv, make_norm: MakeNorm = batch_norm,
                 stem: str = "cifar", layers: tuple[int, ...] = LAYERS_PER_BLOCK):
        super().__init__()
        c_stem, growth = widths
        parts = ((("stem",), c_stem),)
        self.stem = nn.Sequential(stem_conv(3, c_stem, stem), *(
            [make_norm(c_stem, parts), nn.ReLU(inplace=True), *stem_pool(stem)] if stem == "imagenet" else []))
        stages = []
        for b, n in enumerate(layers):
            block = DenseBlock(parts, growth, n, b, make_conv, make_norm)
            stages.append(block)
            parts = block.parts
            if b < len(layers) - 1:
                stages.append(Transition(parts, b, make_norm))
                parts = stages[-1].parts
        self.stages = nn.Sequential(*stages)
        c_out = sum(c for _, c in parts)
        self.norm = make_norm(c_out, parts)
        self.fc = nn.Linear(c_out, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(global_average_pool(F.relu(self.norm(self.stages(self.stem(x))))))

    def mask_producers(self) -> dict[int, list[nn.Module]]:
        """id(mask) -> the conv writing the channels it masks (a Sparse model): each part of a concatenation (the
        stem's, a growth conv's, a transition's output) and each bottleneck's inner mask."""
        readers = [s for s in self.stages if isinstance(s, Transition)] + [self]
        blocks = [s for s in self.stages if isinstance(s, DenseBlock)]
        transitions = [s for s in self.stages if isinstance(s, Transition)]
        out = {id(readers[0].norm.mask.parts[0]): [self.stem[0]]}
        for i, (block, reader) in enumerate(zip(blocks, readers)):
            growth = reader.norm.mask.parts[-len(block.layers):]
            for layer, part in zip(block.layers, growth):
                out[id(layer.norm2.mask)], out[id(part)] = [layer.conv1], [layer.conv2]
            if i < len(transitions):
                out[id(readers[i + 1].norm.mask.parts[0])] = [transitions[i].conv]
        return out

    def copy_kept(self, small: "DenseNet") -> None:
        """The kept channels of a concatenation are its parts' (`ConcatMask.kept`, in its channel order); each part
        (the stem's, a growth conv's, a transition conv's output) is cut to its own mask's kept channels."""
        from .sparse import copy_kept

        readers = [s for s in self.stages if isinstance(s, Transition)] + [self]  # what reads each block's output
        parts = readers[0].norm.mask.parts  # block 1's input is the stem's output
        copy_kept(self.stem[0], None, small.stem[0], None, torch.arange(3), parts[0].kept())
        if len(self.stem) > 1:
            copy_kept(None, self.stem[1], None, small.stem[1], None)
        blocks = [(b, s) for b, s in zip(self.stages, small.stages) if isinstance(b, DenseBlock)]
        transitions = [(t, s) for t, s in zip(self.stages, small.stages) if isinstance(t, Transition)]
        for i, ((block, little), reader) in enumerate(zip(blocks, readers)):
            growth = reader.norm.mask.parts[-len(block.layers):]
            for layer, small_layer, out in zip(block.layers, little.layers, growth):
                copy_kept(None, layer.norm1, None, small_layer.norm1, None)
                inner = copy_kept(layer.conv1, layer.norm2, small_layer.conv1, small_layer.norm2,
                                  layer.norm1.mask.kept())
                copy_kept(layer.conv2, None, small_layer.conv2, None, inner, out.kept())
            if i < len(transitions):
                t, small_t = transitions[i]
                copy_kept(None, t.norm, None, small_t.norm, None)
                copy_kept(t.conv, None, small_t.conv, None, t.norm.mask.kept(), blocks[i + 1][0].layers[0].norm1.mask
                          .parts[0].kept())
        copy_kept(None, self.norm, None, small.norm, None)
        small.fc.weight.copy_(self.fc.weight[:, self.norm.mask.kept()])
        small.fc.bias.copy_(self.fc.bias)


def densenet(width: Width, num_classes: int, make_conv: MakeConv, make_norm: MakeNorm = batch_norm,
             stem: str = "cifar") -> DenseNet:
    return DenseNet([width(c) for c in PAPER_WIDTHS], num_classes, make_conv, make_norm, stem)
