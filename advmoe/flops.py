"""Per-example inference cost of the executed pathway, in GFLOPs as the paper counts them.

The paper's Table 1 gives 0.54 "GFLOPS" for CIFAR ResNet-18, which is its number of
multiply-accumulates (MACs); we report MACs / 1e9 under the same name. Convolutions and linear
layers are counted (BatchNorm, ReLU, pooling and additions are not, as is customary). An MoE conv
counts one expert (r*C_out x r*C_in) plus its router: the pathway a single example executes. A Sparse
model is counted on the network it executes without its removed channels (`advmoe.models.compact`).
"""
from __future__ import annotations

import torch
from torch import nn

from .models.moe import MoEConv2d
from .models.sparse import compact, masks


def conv_macs(c_in: int, c_out: int, k: int, h_out: int, w_out: int, groups: int = 1) -> int:
    return c_out * (c_in // groups) * k * k * h_out * w_out


def gflops(model: nn.Module, input_size=(3, 32, 32)) -> float:
    """Analytic MACs per example / 1e9; one forward of a single dummy example fixes the spatial sizes."""
    if masks(model):
        model = compact(model)
    macs = []

    def count(module, inputs, output):
        if isinstance(module, MoEConv2d):  # one expert per example
            macs.append(conv_macs(module.in_channels, module.out_channels, module.kernel_size, *output.shape[2:]))
        elif isinstance(module, nn.Conv2d):
            macs.append(conv_macs(module.in_channels, module.out_channels, module.kernel_size[0],
                                  *output.shape[2:], module.groups))
        elif isinstance(module, nn.Linear):
            macs.append(module.in_features * module.out_features)

    handles = [m.register_forward_hook(count) for m in model.modules()
               if isinstance(m, (MoEConv2d, nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_size, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return sum(macs) / 1e9


def vit_gmacs(depth: int = 12, dim: int = 192, mlp_ratio: int = 4, image: int = 224, patch: int = 16,
              classes: int = 1000) -> float:
    """Analytic MACs / 1e9 of a plain ViT (defaults: DeiT-Tiny at 224 px): patch embedding, per block the QKV and
    output projections, the attention scores and their weighted sum, the MLP; the class token included, LayerNorm,
    softmax and GELU not counted (this file's convention). For Table 3, whose MoE-ViT no source defines."""
    tokens = (image // patch) ** 2 + 1
    embed = (image // patch) ** 2 * (3 * patch * patch) * dim
    block = 4 * tokens * dim * dim + 2 * tokens * tokens * dim + 2 * tokens * dim * mlp_ratio * dim
    return (embed + depth * block + dim * classes) / 1e9
