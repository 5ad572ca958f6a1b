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
network: the GFLOPs are counted on it. Pre-activation networks (WRN, DenseNet) mask the BatchNorm that reads a
stream or a concatenation, so every conv still reads only kept channels; a concatenation's mask is the
concatenation of its parts' masks (one mask per conv that writes a part).

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


class ConcatMask(nn.Module):
    """The mask of a concatenation: its parts' masks (shared with every other reader of a part), end to end."""

    def __init__(self, parts: list[ChannelMask]):
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self) -> torch.Tensor:
        return torch.cat([m() for m in self.parts])

    def kept(self) -> torch.Tensor:
        offsets = [0] + [len(m.scores) for m in self.parts]
        return torch.cat([m.kept() + sum(offsets[:i + 1]) for i, m in enumerate(self.parts)])


class MaskedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm followed by a channel mask (possibly shared with other layers); state-dict keys of a BatchNorm2d
    plus the mask's scores, so a dense parent's weights load into it."""

    def __init__(self, channels: int, mask: ChannelMask | ConcatMask):
        super().__init__(channels)
        self.mask = mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.mask().view(1, -1, 1, 1)


def mask_factory(keep: dict[int, int]):
    """A make_norm for the backbones: stream=True for layers writing or reading a stage's residual stream (one mask
    per stage, keyed by its channel count, which differs between stages), False for one conv's output (a mask of
    its own), or a tuple of (key, channels) parts for a concatenation (one mask per key, shared by its readers).

    A mask of C channels keeps keep[C]: the width the S-Dense network has at that layer (`keep_map`), so the
    compact network has exactly S-Dense's widths."""
    shared: dict = {}

    def new(channels: int) -> ChannelMask:
        if channels not in keep:
            raise ValueError(f"no S-Dense width for a layer of {channels} channels")
        return ChannelMask(channels, keep[channels])

    def make_norm(channels: int, stream) -> nn.Module:
        if isinstance(stream, tuple):
            mask = ConcatMask([shared.setdefault(key, new(c)) for key, c in stream])
        else:
            mask = shared.setdefault(channels, new(channels)) if stream else new(channels)
        return MaskedBatchNorm2d(channels, mask)

    return make_norm


def keep_map(full: nn.Module, small: nn.Module) -> dict[int, int]:
    """Channels of each conv output in the full network -> in the S-Dense one (the same network at width r), walking
    both convs in order; one full width must map to one S-Dense width (else a ValueError)."""
    out: dict[int, int] = {}
    convs = [[m for m in net.modules() if isinstance(m, nn.Conv2d)] for net in (full, small)]
    for big, little in zip(*convs):
        if out.setdefault(big.out_channels, little.out_channels) != little.out_channels:
            raise ValueError(f"layers of {big.out_channels} channels have S-Dense widths {out[big.out_channels]} and "
                             f"{little.out_channels}; choose another base width")
    return out


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
    """id(mask) -> the convs whose output it masks: the backbone's `mask_producers` (pre-activation networks), or,
    for post-activation ones (ResNet-18, VGG-16), each conv followed by its MaskedBatchNorm2d."""
    if hasattr(model, "mask_producers"):
        return model.mask_producers()
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


def copy_kept(conv: nn.Conv2d | None, bn: MaskedBatchNorm2d | None, small_conv: nn.Conv2d | None,
              small_bn: nn.BatchNorm2d | None, kept_in: torch.Tensor, kept_out: torch.Tensor | None = None
              ) -> torch.Tensor:
    """Copy the kept part of conv (its `kept_out` outputs, by default its BatchNorm's mask's, and `kept_in` inputs)
    and of bn (its own mask's channels) into their compact counterparts; returns the conv's kept outputs. Either
    may be None (a pre-activation network's BatchNorm reads what several convs wrote)."""
    if kept_out is None:
        kept_out = bn.mask.kept()
    if conv is not None:
        small_conv.weight.copy_(conv.weight[kept_out][:, kept_in])
    if bn is not None:
        keep = bn.mask.kept()
        for attr in ("weight", "bias", "running_mean", "running_var"):
            getattr(small_bn, attr).copy_(getattr(bn, attr)[keep])
        small_bn.num_batches_tracked.copy_(bn.num_batches_tracked)
    return kept_out


@torch.no_grad()
def compact(model: nn.Module) -> nn.Module:
    """The network without its removed channels: an S-Dense model holding the kept weights, which computes the
    same outputs (tested). Each backbone's `copy_kept` follows its own wiring."""
    from . import create_model

    small = create_model(**model.sparse_spec)  # the S-Dense twin (set by create_model)
    model.copy_kept(small)
    return small.to(next(model.parameters()).device).train(model.training)
