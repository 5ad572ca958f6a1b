"""Sparse-CNN of the paper's AT (Sparse) baseline: HYDRA (Sehwag et al., NeurIPS 2020, the paper's [50]) in its
structured form.

Every channel a 3x3 or shortcut conv writes gets an importance score; a mask keeps the top r of each mask's
channels (top-k, with the straight-through gradient to the scores, as HYDRA's GetSubnet). The mask multiplies the
BatchNorm's output, so a removed channel is exactly zero (masking the conv output instead would leave BatchNorm's
bias in it).

Residual connections: every layer that writes into a stage's residual stream (the stem, each block's second conv
and shortcut) shares one mask, the stage's stream mask, so that the sum of a block's output and its shortcut keeps
the same channels; each block's first conv has a mask of its own. Every conv then reads r of its input channels
and writes r of its outputs, and the network executed without the removed channels (`compact`) is an S-Dense
network: the GFLOPs are counted on it.

Scores start from the parent's weights (HYDRA's scaled initialisation, per channel): sqrt(6 / fan_in) times the
channel's weight norm over the largest channel norm of that layer, averaged over the layers sharing a mask.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class _TopK(torch.autograd.Function):
    """1 for the k largest scores, 0 elsewhere; the gradient passes to the scores unchanged (straight-through)."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, k: int) -> torch.Tensor:
        mask = torch.zeros_like(scores)
        mask[scores.topk(k).indices] = 1
        return mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class ChannelMask(nn.Module):
    """Scores for `channels` channels; calling it gives the 0/1 mask that keeps `keep` of them."""

    def __init__(self, channels: int, keep: int):
        super().__init__()
        self.keep = keep
        self.scores = nn.Parameter(torch.zeros(channels))

    def forward(self) -> torch.Tensor:
        return _TopK.apply(self.scores, self.keep)

    def kept(self) -> torch.Tensor:
        """Indices of the kept channels, in increasing order."""
        return self.scores.detach().topk(self.keep).indices.sort().values


class MaskedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm followed by a channel mask (possibly shared with other layers); state-dict keys of a BatchNorm2d
    plus the mask's scores, so a dense parent's weights load into it."""

    def __init__(self, channels: int, mask: ChannelMask):
        super().__init__(channels)
        self.mask = mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.mask().view(1, -1, 1, 1)


def mask_factory(scale: float, base_width: int):
    """A make_norm for the backbones: stream=True for layers writing a stage's residual stream (one mask per stage,
    keyed by its channel count, which differs between stages), False for a block's inner layer (a mask of its own).

    A layer of C = m x base_width channels keeps m x round(r x base_width): the rounding S-Dense uses, so the compact
    network has exactly S-Dense's widths."""
    from . import scaled

    streams: dict[int, ChannelMask] = {}

    def make_norm(channels: int, stream: bool) -> nn.Module:
        keep = scaled(base_width, scale) * channels // base_width
        mask = streams.setdefault(channels, ChannelMask(channels, keep)) if stream else ChannelMask(channels, keep)
        return MaskedBatchNorm2d(channels, mask)

    return make_norm


def masks(model: nn.Module) -> list[ChannelMask]:
    return [m for m in model.modules() if isinstance(m, ChannelMask)]


def mask_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [m.scores for m in masks(model)]


def mask_stage_parameters(model: nn.Module) -> list[nn.Parameter]:
    """What HYDRA's mask stage trains: the scores and the BatchNorm affine parameters (HYDRA's default, freeze_bn
    False: only conv and linear weights are frozen). BatchNorm then runs in train mode, so its statistics follow the
    masked network: with r of a layer's input channels left, the Dense parent's statistics no longer fit it."""
    norms = [p for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters(recurse=False)]
    return mask_parameters(model) + norms


def weight_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Everything but the mask scores: what fine-tuning trains."""
    scores = {id(p) for p in mask_parameters(model)}
    return [p for p in model.parameters() if id(p) not in scores]


def _producers(model: nn.Module) -> dict[int, list[nn.Conv2d]]:
    """id(mask) -> the convs whose output it masks (each conv is followed by its MaskedBatchNorm2d)."""
    out: dict[int, list[nn.Conv2d]] = {}
    previous = None
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            previous = m
        elif isinstance(m, MaskedBatchNorm2d):
            out.setdefault(id(m.mask), []).append(previous)
    return out


@torch.no_grad()
def init_scores_from_weights(model: nn.Module) -> None:
    """HYDRA's scaled initialisation, per output channel (see the module docstring)."""
    producers = _producers(model)
    for mask in masks(model):
        parts = []
        for conv in producers[id(mask)]:
            norms = conv.weight.flatten(1).norm(dim=1)
            fan_in = conv.weight[0].numel()
            parts.append(math.sqrt(6 / fan_in) * norms / norms.max().clamp_min(1e-12))
        mask.scores.copy_(torch.stack(parts).mean(0))


def _copy(conv: nn.Conv2d, bn: MaskedBatchNorm2d, small_conv: nn.Conv2d, small_bn: nn.BatchNorm2d,
          kept_in: torch.Tensor) -> torch.Tensor:
    """Copy the kept part of conv + bn into their compact counterparts; returns the kept output channels."""
    keep = bn.mask.kept()
    small_conv.weight.copy_(conv.weight[keep][:, kept_in])
    for attr in ("weight", "bias", "running_mean", "running_var"):
        getattr(small_bn, attr).copy_(getattr(bn, attr)[keep])
    small_bn.num_batches_tracked.copy_(bn.num_batches_tracked)
    return keep


@torch.no_grad()
def compact(model: nn.Module) -> nn.Module:
    """The network without its removed channels: an S-Dense model holding the kept weights, which computes the
    same outputs (tested). Follows the ResNet's wiring: a block's first conv and its shortcut read the block's
    input (the previous stream), its second conv reads the first one's kept channels."""
    from . import create_model

    backbone, scale, num_classes, base_width = model.sparse_spec  # set by create_model
    small = create_model(backbone, "s-dense", scale, num_classes=num_classes, base_width=base_width)
    stream = _copy(model.stem[0], model.stem[1], small.stem[0], small.stem[1], torch.arange(model.stem[0].in_channels))
    for big_stage, small_stage in zip(model.layers, small.layers):
        for big, little in zip(big_stage, small_stage):
            inner = _copy(big.conv1, big.bn1, little.conv1, little.bn1, stream)
            out = _copy(big.conv2, big.bn2, little.conv2, little.bn2, inner)
            if len(big.shortcut):
                _copy(big.shortcut[0], big.shortcut[1], little.shortcut[0], little.shortcut[1], stream)
            stream = out
    small.fc.weight.copy_(model.fc.weight[:, stream])
    small.fc.bias.copy_(model.fc.bias)
    return small.to(next(model.parameters()).device).train(model.training)
