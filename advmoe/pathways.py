"""Pathways (paper Sec. 5.2 "router utility", Fig. 6): which channels an input's route uses, and how they compare.

An MoE layer of N experts, each r*C channels wide, is placed in the index space of the full-width layer (C
channels): expert e covers channels [s_e, s_e + r*C) with s_e = round(e * (C - r*C) / (N - 1)), evenly spread from
the first channel to the last. When N * r = 1 the experts tile the layer exactly (s_e = e * r*C); when N * r > 1
neighbouring experts overlap, when N * r < 1 gaps remain. An input's MoE pathway is the union, over the MoE
layers, of its chosen experts' channels; AT (Sparse)'s mask pathway is, over the same layers, the channels its
masks keep (the same for every input).

The experts and the mask come from independently trained networks, so channel i of one is not channel i of the
other: the IoU against the mask measures overlap of positions, not of learned features. Two measures need no
alignment: the IoU of an input's clean and adversarial pathways in the same model (does an attack move the
route?), and pathway diversity (how many distinct routes the inputs take, and the entropy of their frequencies).
"""
from __future__ import annotations

import math
from collections import Counter

import torch

from .models.moe import MoEConv2d


def expert_start(e: int, n_experts: int, expert_width: int, full_width: int) -> int:
    """First full-width channel of expert e (see the module docstring)."""
    if not 0 <= e < n_experts or expert_width > full_width:
        raise ValueError(f"expert {e} of {n_experts}, {expert_width} of {full_width} channels: no such placement")
    return 0 if n_experts == 1 else round(e * (full_width - expert_width) / (n_experts - 1))


def moe_pathways(routes: dict[str, torch.Tensor], layers: dict[str, MoEConv2d], full_widths: dict[str, int]) -> torch.Tensor:
    """(inputs, channels) bool: each input's pathway over the MoE layers' full-width channels (layers in `routes` order)."""
    parts = []
    for name, choice in routes.items():
        layer, full = layers[name], full_widths[name]
        columns = torch.arange(full)
        starts = torch.tensor([expert_start(e, layer.n_experts, layer.out_channels, full) for e in range(layer.n_experts)])
        begin = starts[choice][:, None]
        parts.append((columns >= begin) & (columns < begin + layer.out_channels))
    return torch.cat(parts, 1)


def mask_pathway(sparse_model: torch.nn.Module, names: list[str]) -> torch.Tensor:
    """(channels,) bool: the channels AT (Sparse)'s masks keep after the convs `names` (e.g. layers.0.0.conv1)."""
    modules = dict(sparse_model.named_modules())
    parts = []
    for name in names:
        norm = modules[name[:-len("conv1")] + "bn1" if name.endswith("conv1") else name[:-len("conv2")] + "bn2"]
        parts.append(norm.mask().detach().bool())
    return torch.cat(parts)


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise intersection over union of bool tensors (b may be one row, broadcast)."""
    return (a & b).sum(-1) / (a | b).sum(-1).clamp_min(1)


def diversity(routes: dict[str, torch.Tensor]) -> dict:
    """Distinct pathways (the tuple of experts chosen in every MoE layer) and the entropy of their frequencies (bits)."""
    paths = Counter(zip(*(c.tolist() for c in routes.values())))
    n = sum(paths.values())
    return {"distinct": len(paths), "inputs": n,
            "entropy_bits": -sum(k / n * math.log2(k / n) for k in paths.values()) if n else 0.0}
