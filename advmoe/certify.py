"""Certified L-inf radii by margin over Lipschitz constant, for the dual-model paper's networks (Sec. 5 of Zhang, Xu,
Hu, Wang, ICML 2025; what is known of its Theorems 5.4 and 5.5: ../shared/papers/dual-model-2025-facts.md Sec. 1).

The bound: if every logit difference f_y - f_j has L-inf Lipschitz constant at most L_j, an image whose margins
m_j = f_y(x) - f_j(x) are all positive keeps its prediction within radius min_j m_j / L_j. Constants are sound upper
bounds computed from the weights, in eval mode (BatchNorm as the affine map of its running statistics):

- a conv followed by its BatchNorm: max over output channels of the sum of |w| over its receptive field, each
  channel's weights scaled by |gamma| / sqrt(var + eps) (an output pixel is a weighted sum of at most that many
  inputs; zero padding only removes terms);
- ReLU: 1; a residual block: L(branch) + L(shortcut) (1 for the identity); global average pooling: 1;
- the classifier: |w_y - w_j|_1 for the difference of two logits (|<a, z>| <= |a|_1 |z|_inf).

A hard top-1 MoE is not continuous where its router changes its choice, so its radius also needs the route to hold:
the image-level router is linear, and its choice c stays while every score difference s_c - s_k, of L-inf Lipschitz
constant |W_c - W_k|_1, stays positive. The MoE's radius is the smaller of the route's radius and the chosen
expert's; the dual model's, (1 - alpha) F_S + alpha F_R, the smallest of both routes' radii and the blend's margin
over (1 - alpha) L_S + alpha L_R of the two chosen experts. These certify the models as executed here (hard routing);
the paper's theorems assume a Lipschitz soft router and bounded expert outputs, which the released hard-argmax,
raw-logit model does not have.
"""
from __future__ import annotations

import torch
from torch import nn

from .models import DualModel, NetworkMoE
from .models.resnet import BasicBlock, ResNet18


def _conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> float:
    w = conv.weight.detach().abs().flatten(1).sum(1)
    if bn is not None:
        w = w * (bn.weight.detach().abs() / torch.sqrt(bn.running_var + bn.eps))
    return float(w.max())


def _block(block: BasicBlock) -> float:
    branch = _conv_bn(block.conv1, block.bn1) * _conv_bn(block.conv2, block.bn2)
    shortcut = 1.0 if len(block.shortcut) == 0 else _conv_bn(block.shortcut[0], block.shortcut[1])
    return branch + shortcut


def feature_lipschitz(net: ResNet18) -> float:
    """An upper bound of the L-inf -> L-inf Lipschitz constant of a plain ResNet-18's pooled features (eval mode)."""
    if not isinstance(net, ResNet18) or any(not isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Linear,
                                                               nn.Sequential, BasicBlock, ResNet18))
                                            for m in net.modules()):
        raise ValueError("feature_lipschitz bounds a plain ResNet-18 (convs, BatchNorms, ReLUs), not "
                         f"{type(net).__name__} with other layers")
    bound = _conv_bn(net.stem[0], net.stem[1])
    for stage in net.layers:
        for block in stage:
            bound *= _block(block)
    return bound


def margin_constants(net: ResNet18, y: torch.Tensor) -> torch.Tensor:
    """L_j(y) for every image's label y and class j: |w_y - w_j|_1 times the feature bound; (n, classes), inf at y."""
    w = net.fc.weight.detach()
    diff = (w[y][:, None, :] - w[None, :, :]).abs().sum(2) * feature_lipschitz(net)
    return diff.scatter(1, y[:, None], float("inf"))


def _margin_radius(logits: torch.Tensor, y: torch.Tensor, constants: torch.Tensor) -> torch.Tensor:
    """min_j (f_y - f_j) / L_j per image; 0 where the prediction is wrong."""
    margins = logits.gather(1, y[:, None]) - logits
    radius = (margins / constants).scatter(1, y[:, None], float("inf")).min(1).values
    return radius.clamp(min=0)


def network_radius(net: ResNet18, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The certified L-inf radius of a plain network at each image (0 where it is wrong)."""
    net.eval()
    with torch.no_grad():
        return _margin_radius(net(x), y, margin_constants(net, y))


def route_radius(moe: NetworkMoE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the router's choice, the L-inf radius within which that choice holds) per image."""
    w = moe.router.fc.weight.detach()
    with torch.no_grad():
        scores = moe.router(x)
    choice = scores.argmax(1)
    gaps = scores.gather(1, choice[:, None]) - scores
    norms = (w[choice][:, None, :] - w[None, :, :]).abs().sum(2)
    radius = (gaps / norms).scatter(1, choice[:, None], float("inf")).min(1).values
    return choice, radius


def moe_radius(moe: NetworkMoE, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per image: the route's radius, the chosen expert's margin radius, and the MoE's (the smaller)."""
    moe.eval()
    choice, route = route_radius(moe, x)
    expert = torch.zeros(len(x))
    for e, net in enumerate(moe.experts):
        rows = (choice == e).nonzero().squeeze(1)
        if rows.numel():
            expert[rows] = network_radius(net, x[rows], y[rows])
    return {"route": route, "expert": expert, "radius": torch.minimum(route, expert)}


def dual_radius(dual: DualModel, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per image: both routes' radii (a model with weight 0 in the blend does not count), the blend's margin radius
    (its two chosen experts' constants weighted by 1 - alpha and alpha), and the dual model's (the smallest)."""
    dual.eval()
    (cs, rs), (cr, rr) = route_radius(dual.standard, x), route_radius(dual.robust, x)
    with torch.no_grad():
        logits = dual(x)
    constants = torch.empty_like(logits)
    for s in range(len(dual.standard.experts)):
        for r in range(len(dual.robust.experts)):
            rows = ((cs == s) & (cr == r)).nonzero().squeeze(1)
            if rows.numel():
                constants[rows] = ((1 - dual.alpha) * margin_constants(dual.standard.experts[s], y[rows])
                                   + dual.alpha * margin_constants(dual.robust.experts[r], y[rows]))
    blend = _margin_radius(logits, y, constants)
    inf = torch.full_like(blend, float("inf"))
    rs, rr = (rs if dual.alpha < 1 else inf), (rr if dual.alpha > 0 else inf)
    return {"route_standard": rs, "route_robust": rr, "blend": blend,
            "radius": torch.minimum(torch.minimum(rs, rr), blend)}
