"""The dual-model paper's networks (Zhang, Xu, Hu, Wang, ICML 2025; ../shared/papers/dual-model-2025-facts.md Sec. 1):
an MoE of E whole networks behind one image-level router, and the dual model that blends two of them.

- `NetworkMoE`: E independent backbones (each a whole classifier, e.g. CIFAR ResNet-18) behind a linear router on
  the flattened image (`topk.ImageGate`, gate "image-fc"), top-1. It is a `TopKMoE` whose experts are the networks,
  so it shares that layer's sparse execution (each sample runs its own expert only), its dense reference, forced
  and fixed routing, the soft-routing surrogate and the routing record with every other MoE of the book. The output
  is the chosen expert's raw logits (the released model's), with the straight-through gate: value exactly 1, the
  gradient reaches the chosen router score, so the router trains. `router_trains=False` is the released design,
  whose router only ever returns argmax indices and so never receives a gradient: its parameters stay at their
  initialisation (frozen here).
- `DualModel`: logits (1 - alpha) F_S(x) + alpha F_R(x) of a standard and a robust model (the paper's dual model;
  alpha = 0.7 in the authors' JTDMoE scripts).
"""
from __future__ import annotations

import torch
from torch import nn

from .moe import RoutedNet
from .topk import TopKMoE


class NetworkMoE(RoutedNet):
    """E whole networks, one chosen per image by `ImageGate` on the flattened image (top-1, straight-through)."""

    def __init__(self, experts: list[nn.Module], image_shape: tuple[int, int, int] = (3, 32, 32),
                 router_trains: bool = True):
        super().__init__()
        if len(experts) < 2:
            raise ValueError(f"a network MoE needs at least 2 experts, got {len(experts)}")
        c, h, w = image_shape
        self.moe = TopKMoE(experts, c * h * w, gate="image-fc", k=1, balancing="none")
        self.router_trains = router_trains
        if not router_trains:  # the released design: the router's weights stay at their initialisation
            self.moe.router.requires_grad_(False)

    @property
    def experts(self) -> nn.ModuleList:
        return self.moe.experts

    @property
    def router(self) -> nn.Module:
        return self.moe.router

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.moe(x)


class DualModel(RoutedNet):
    """(1 - alpha) * standard(x) + alpha * robust(x), on the raw logits."""

    def __init__(self, standard: nn.Module, robust: nn.Module, alpha: float = 0.7):
        super().__init__()
        check_alpha(alpha)
        self.standard, self.robust = standard, robust
        self.alpha = float(alpha)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.alpha == 0:
            return self.standard(x)
        if self.alpha == 1:
            return self.robust(x)
        return (1 - self.alpha) * self.standard(x) + self.alpha * self.robust(x)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


def check_alpha(alpha) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
