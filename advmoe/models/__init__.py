"""Model registry: `create_model(backbone, kind, scale, n_experts, num_classes, router)`.

Every backbone file provides one constructor taking (width, num_classes, make_conv, make_norm, stem)
(`advmoe.models.resnet` describes the protocol); the registry turns (kind, scale, n_experts, router) into the
width function, the conv factory and the norm factory, so a backbone is one file plus one line in BACKBONES.
"""
from __future__ import annotations

import fnmatch

import torch
from torch import nn

from .moe import (EXECUTIONS, MoEConv2d, Router, RoutedNet, Routes, SharedRouter, backbone_parameters,
                  dense_reference, fixed_routing, forced_expert, moe_layers, record_routing, router_parameters,
                  set_execution, soft_routing)
from .netmoe import DualModel, NetworkMoE, check_alpha
from .densenet import PAPER_WIDTHS as DENSENET_WIDTHS, densenet
from .resnet import STEMS, resnet18
from .vgg import vgg16
from .wrn import wrn28_10
from .topk import BALANCING, GATES, TopKMoE, balancing_losses, check_layer_args, insert
from .sparse import (compact, init_scores_from_weights, keep_map, mask_factory, mask_parameters,
                     mask_stage_parameters, masks, weight_parameters)

# name -> (constructor, the paper's base width: its first conv's channels). "densenet" is DenseNet-BC-40, k = 12.
BACKBONES = {"resnet18": (resnet18, 64), "wrn28-10": (wrn28_10, 16), "vgg16": (vgg16, 64), "densenet": (densenet, 24)}
NARROWEST = {"densenet": min(DENSENET_WIDTHS)}  # a paper layer narrower than the base width: DenseNet's growth rate
TOPK_BACKBONES = ("resnet18",)  # Robust Experts' placements name ResNet-18's stages
KINDS = ("dense", "s-dense", "moe", "sparse")  # AdvMoE's models
TOPK_KINDS = ("block-moe", "conv-moe")  # Robust Experts' models (`advmoe.models.topk`)
NETWORK_KINDS = ("network-moe", "dual-moe")  # the dual-model paper's (`advmoe.models.netmoe`)
ROUTERS = ("per-layer", "shared")


def scaled(channels: int, scale: float) -> int:
    return max(1, int(round(channels * scale)))


def width_function(backbone: str, base_width: int | None, scale: float):
    """The paper's channels of a layer -> this model's: times base_width / the paper's base width, times r, rounded.
    ResNet-18 keeps the historic clamp to 1 channel (it rounds only its first width, `resnet.resnet18`); for the
    others a width that rounds to 0 is an error."""
    paper = BACKBONES[backbone][1]
    base = base_width or paper

    def width(c: int) -> int:
        if backbone != "resnet18" and round(c * base / paper * scale) < 1:
            raise ValueError(f"{backbone} at base width {base} and scale {scale} has a layer of 0 channels (paper "
                             f"width {c}); use a larger base_width or scale")
        return scaled(c * base / paper, scale)

    return width


def check_model_args(backbone: str, kind: str, scale: float, n_experts: int, router: str,
                     num_classes: int = 10, base_width: int | None = None, kinds: tuple[str, ...] = KINDS,
                     stem: str = "cifar") -> None:
    """Raise ValueError naming the allowed values; called before any compute."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; allowed: {', '.join(BACKBONES)}")
    if kind not in kinds:
        raise ValueError(f"unknown kind {kind!r}; allowed: {', '.join(kinds)}")
    if kind in TOPK_KINDS and backbone not in TOPK_BACKBONES:
        raise ValueError(f"kind {kind!r} places experts by ResNet-18's stages; backbone {backbone!r} has no placement "
                         f"(allowed: {', '.join(TOPK_BACKBONES)})")
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; allowed: {', '.join(STEMS)}")
    if backbone == "vgg16" and stem != "cifar":
        raise ValueError("vgg16 has the paper's CIFAR layout only (stem 'cifar'); the paper has no ImageNet VGG-16")
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
    if isinstance(scale, (int, float)) and 0 < scale <= 1:
        width_function(backbone, base_width, scale)(NARROWEST.get(backbone, BACKBONES[backbone][1]))


def create_model(backbone: str, kind: str, scale: float = 1.0, n_experts: int = 2, num_classes: int = 10,
                 router: str = "per-layer", base_width: int | None = None, placement: str = "layer4",
                 gate: str = "gap-fc", top_k: int = 1, balancing: str = "entropy", image_size: int = 32,
                 router_trains: bool = True, alpha: float = 0.7, stem: str = "cifar") -> RoutedNet:
    """Dense (r = 1), S-Dense (every width times r), MoE (S-Dense widths, 3x3 block convs of N experts) or
    Sparse (Dense widths, a channel mask keeping r of each layer's channels: `advmoe.models.sparse`); and the
    Robust Experts models: BlockMoE (the residual blocks at `placement`, "layer4" or one block, "layer4.1", each
    replaced by N fresh copies behind a gate) and ConvMoE (every conv of the stage `placement`), with a "gap-fc" or
    "conv-gap" gate, top-k routing and the noisy training gate of their `balancing` loss (`advmoe.models.topk`).

    And the dual-model paper's: "network-moe", n_experts whole backbones behind a linear router on the flattened
    image (`image_size` square, 3 channels), top-1 (`router_trains=False`: the released, never-trained router);
    "dual-moe", (1 - alpha) F_S + alpha F_R of two such MoEs (`advmoe.models.netmoe`).

    Backbones (`BACKBONES`): CIFAR ResNet-18, WRN-28-10, VGG-16 with BatchNorm and DenseNet-BC-40 (k = 12), each
    with a 3x3 stem ("cifar", for 32 and 64 px inputs) or, but VGG-16, the 7x7 stride-2 stem and max-pool of the
    paper's ImageNet models ("imagenet"). base_width is the width of the first conv, defaulting to the paper's (64
    for ResNet-18 and VGG-16, 16 for WRN-28-10, 24 for DenseNet-BC-40); smaller values scale every layer alike and
    give the cheaper models of the `cpu` preset.
    """
    check_model_args(backbone, kind, scale, n_experts, router, num_classes, base_width,
                     KINDS + TOPK_KINDS + NETWORK_KINDS, stem)
    build = BACKBONES[backbone][0]
    width = width_function(backbone, base_width, 1.0 if kind == "sparse" else scale)

    def plain(c_in: int, c_out: int, stride: int, kernel_size: int = 3) -> nn.Module:
        return nn.Conv2d(c_in, c_out, kernel_size, stride, kernel_size // 2, bias=False)

    if kind in NETWORK_KINDS:
        if not isinstance(n_experts, int) or n_experts < 2:
            raise ValueError(f"a network MoE needs n_experts >= 2 (an integer), got {n_experts!r}")
        if not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
        check_alpha(alpha)

        def network_moe():
            experts = [build(width, num_classes, plain, stem=stem) for _ in range(n_experts)]
            return NetworkMoE(experts, (3, image_size, image_size), router_trains)

        return network_moe() if kind == "network-moe" else DualModel(network_moe(), network_moe(), alpha)
    if kind in TOPK_KINDS:
        check_layer_args(n_experts, gate, top_k, balancing)
        model = build(width, num_classes, plain, stem=stem)
        return insert(model, model.moe_targets(kind, placement), n_experts, gate, top_k, balancing)

    def make_conv(c_in: int, c_out: int, stride: int, kernel_size: int = 3) -> nn.Module:
        if kind == "moe":
            return MoEConv2d(c_in, c_out, n_experts, kernel_size, stride, kernel_size // 2,
                             router=router == "per-layer")
        return plain(c_in, c_out, stride, kernel_size)

    if kind == "sparse":
        # The S-Dense twin (what `compact` returns) gives each mask its kept channels; built on the meta device with
        # the random state restored, so creating a Sparse model draws the same random numbers as before.
        twin = dict(backbone=backbone, kind="s-dense", scale=scale, num_classes=num_classes, base_width=base_width,
                    stem=stem)
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            keep = keep_map(build(width, num_classes, plain, stem=stem), create_model(**twin))
        model = build(width, num_classes, make_conv, make_norm=mask_factory(keep), stem=stem)
        model.sparse_spec = twin  # what `compact` rebuilds
        return model
    model = build(width, num_classes, make_conv, stem=stem)
    if kind == "moe" and router == "shared":
        model.shared_router = SharedRouter(n_experts)
    return model


def list_models(pattern: str = "*") -> list[str]:
    """Registered '<backbone>-<kind>' names matching a glob pattern."""
    names = [f"{b}-{k}" for b in BACKBONES for k in KINDS + TOPK_KINDS + NETWORK_KINDS
             if k not in TOPK_KINDS or b in TOPK_BACKBONES]
    return [n for n in names if fnmatch.fnmatch(n, pattern)]


__all__ = ["create_model", "list_models", "check_model_args", "BACKBONES", "STEMS", "KINDS", "TOPK_KINDS", "NETWORK_KINDS",
           "ROUTERS", "NetworkMoE", "DualModel",
           "GATES", "BALANCING", "TopKMoE", "balancing_losses", "MoEConv2d",
           "Router", "SharedRouter", "RoutedNet", "Routes", "record_routing", "dense_reference", "soft_routing",
           "fixed_routing", "forced_expert", "moe_layers", "EXECUTIONS", "set_execution",
           "router_parameters", "backbone_parameters", "compact", "init_scores_from_weights", "mask_parameters",
           "mask_stage_parameters", "masks", "weight_parameters"]
