"""Model registry: `create_model(backbone, kind, scale, n_experts, num_classes, router)`.

Every backbone file provides one constructor taking (widths, num_classes, make_conv); the registry
turns (kind, scale, n_experts, router) into the widths and the conv factory, so a new backbone
(WRN-28-10, VGG-16, DenseNet) is one file plus one line in BACKBONES.
"""
from __future__ import annotations

import fnmatch

from torch import nn

from .moe import (MoEConv2d, Router, RoutedNet, Routes, SharedRouter, backbone_parameters, dense_reference,
                  fixed_routing, forced_expert, moe_layers, record_routing, router_parameters,
                  soft_routing)
from .netmoe import DualModel, NetworkMoE, check_alpha
from .resnet import resnet18
from .topk import BALANCING, GATES, TopKMoE, balancing_losses, check_layer_args, insert
from .sparse import (compact, init_scores_from_weights, mask_factory, mask_parameters, mask_stage_parameters, masks,
                     weight_parameters)

BACKBONES = {"resnet18": (resnet18, 64)}  # name -> (constructor, paper base width)
KINDS = ("dense", "s-dense", "moe", "sparse")  # AdvMoE's models
TOPK_KINDS = ("block-moe", "conv-moe")  # Robust Experts' models (`advmoe.models.topk`)
NETWORK_KINDS = ("network-moe", "dual-moe")  # the dual-model paper's (`advmoe.models.netmoe`)
ROUTERS = ("per-layer", "shared")


def scaled(channels: int, scale: float) -> int:
    return max(1, int(round(channels * scale)))


def check_model_args(backbone: str, kind: str, scale: float, n_experts: int, router: str,
                     num_classes: int = 10, base_width: int | None = None, kinds: tuple[str, ...] = KINDS) -> None:
    """Raise ValueError naming the allowed values; called before any compute."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; allowed: {', '.join(BACKBONES)}")
    if kind not in kinds:
        raise ValueError(f"unknown kind {kind!r}; allowed: {', '.join(kinds)}")
    if not isinstance(scale, (int, float)) or not 0 < scale <= 1:
        raise ValueError(f"scale must be in (0, 1], got {scale!r}")
    if kind == "sparse" and scale == 1:
        raise ValueError("kind 'sparse' keeps a fraction r in (0, 1) of each layer's channels; r = 1 is kind 'dense'")
    if kind == "dense" and scale != 1:
        raise ValueError(f"kind 'dense' is the full-width model (scale 1); use kind 's-dense' for scale {scale}")
    if not isinstance(n_experts, int) or n_experts < 1:
        raise ValueError(f"n_experts must be an integer >= 1, got {n_experts!r}")
    if router not in ROUTERS:
        raise ValueError(f"unknown router {router!r}; allowed: {', '.join(ROUTERS)}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if base_width is not None and (not isinstance(base_width, int) or base_width < 1):
        raise ValueError(f"base_width must be a positive integer, got {base_width!r}")


def create_model(backbone: str, kind: str, scale: float = 1.0, n_experts: int = 2, num_classes: int = 10,
                 router: str = "per-layer", base_width: int | None = None, placement: str = "layer4",
                 gate: str = "gap-fc", top_k: int = 1, balancing: str = "entropy", image_size: int = 32,
                 router_trains: bool = True, alpha: float = 0.7) -> RoutedNet:
    """Dense (r = 1), S-Dense (every width times r), MoE (S-Dense widths, 3x3 block convs of N experts) or
    Sparse (Dense widths, a channel mask keeping r of each layer's channels: `advmoe.models.sparse`); and the
    Robust Experts models: BlockMoE (the residual blocks at `placement`, "layer4" or one block, "layer4.1", each
    replaced by N fresh copies behind a gate) and ConvMoE (every conv of the stage `placement`), with a "gap-fc" or
    "conv-gap" gate, top-k routing and the noisy training gate of their `balancing` loss (`advmoe.models.topk`).

    And the dual-model paper's: "network-moe", n_experts whole backbones behind a linear router on the flattened
    image (`image_size` square, 3 channels), top-1 (`router_trains=False`: the released, never-trained router);
    "dual-moe", (1 - alpha) F_S + alpha F_R of two such MoEs (`advmoe.models.netmoe`).

    base_width defaults to the paper's (64 for ResNet-18); smaller values give the cheaper models of
    the `cpu` preset.
    """
    check_model_args(backbone, kind, scale, n_experts, router, num_classes, base_width,
                     KINDS + TOPK_KINDS + NETWORK_KINDS)
    build, paper_width = BACKBONES[backbone]
    width = scaled(base_width or paper_width, 1.0 if kind == "sparse" else scale)
    plain = lambda c_in, c_out, stride: nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
    if kind in NETWORK_KINDS:
        if not isinstance(n_experts, int) or n_experts < 2:
            raise ValueError(f"a network MoE needs n_experts >= 2 (an integer), got {n_experts!r}")
        if not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
        check_alpha(alpha)

        def network_moe():
            experts = [build([width], num_classes, plain) for _ in range(n_experts)]
            return NetworkMoE(experts, (3, image_size, image_size), router_trains)

        return network_moe() if kind == "network-moe" else DualModel(network_moe(), network_moe(), alpha)
    if kind in TOPK_KINDS:
        check_layer_args(n_experts, gate, top_k, balancing)
        model = build([width], num_classes, plain)
        return insert(model, model.moe_targets(kind, placement), n_experts, gate, top_k, balancing)

    def make_conv(c_in: int, c_out: int, stride: int) -> nn.Module:
        if kind == "moe":
            return MoEConv2d(c_in, c_out, n_experts, 3, stride, 1, router=router == "per-layer")
        return nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)

    if kind == "sparse":
        model = build([width], num_classes, make_conv, make_norm=mask_factory(scale, width))
        model.sparse_spec = (backbone, scale, num_classes, base_width)  # what `compact` rebuilds
        return model
    model = build([width], num_classes, make_conv)
    if kind == "moe" and router == "shared":
        model.shared_router = SharedRouter(n_experts)
    return model


def list_models(pattern: str = "*") -> list[str]:
    """Registered '<backbone>-<kind>' names matching a glob pattern."""
    names = [f"{b}-{k}" for b in BACKBONES for k in KINDS + TOPK_KINDS + NETWORK_KINDS]
    return [n for n in names if fnmatch.fnmatch(n, pattern)]


__all__ = ["create_model", "list_models", "check_model_args", "BACKBONES", "KINDS", "TOPK_KINDS", "NETWORK_KINDS",
           "ROUTERS", "NetworkMoE", "DualModel",
           "GATES", "BALANCING", "TopKMoE", "balancing_losses", "MoEConv2d",
           "Router", "SharedRouter", "RoutedNet", "Routes", "record_routing", "dense_reference", "soft_routing",
           "fixed_routing", "forced_expert", "moe_layers",
           "router_parameters", "backbone_parameters", "compact", "init_scores_from_weights", "mask_parameters",
           "mask_stage_parameters", "masks", "weight_parameters"]
