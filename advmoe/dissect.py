"""Router and pathway dissection (paper Sec. 4, Fig. 4 and 5): what PGD does to an MoE-CNN's routing.

Per test image, PGD (CE, the evaluation attack) either changes the expert chosen in at least one MoE layer or
leaves the routing unchanged in every layer, and the prediction on the adversarial image is either still correct or
wrong. The four shares (they sum to 1), the share of images whose routing PGD changed in each layer, and the
per-image results (correctness, and the expert chosen in every MoE layer before and after the attack: Fig. 6's
pathways are computed from them) are returned. Fig. 4 of the paper (theta-bar, r = 0.5, PGD-50, 10,000 test images): routing
unchanged and prediction correct ("both attacks unsuccessful") 31.74%, routing unchanged in total 76.27%.
"""
from __future__ import annotations

import torch
from torch import nn

from . import data as datalib
from .evaluate import accuracy, robust_accuracy
from .io import bits, digits
from .models import moe_layers

CATEGORIES = ("routing unchanged, prediction correct", "routing unchanged, prediction wrong",
              "routing changed, prediction correct", "routing changed, prediction wrong")


def _choices(routes: list) -> dict[str, torch.Tensor]:
    return {name: torch.cat([r[name] for r in routes]) for name in routes[0]} if routes else {}


def dissect(model: nn.Module, data: datalib.ImageData, device, eps: float, step_size: float, steps: int,
            seed: int = 0, progress: bool = True) -> dict:
    """The four shares of Fig. 4 for one model and attack, the per-layer change rates and the per-image bits."""
    if not moe_layers(model):
        raise ValueError("dissect needs an MoE model (it compares the experts chosen before and after the attack)")
    clean_routes, adv_routes, adv_correct = [], [], []
    accuracy(model, data, device, progress=False, routes=clean_routes)
    robust_accuracy(model, data, device, eps, step_size, steps, seed=seed, progress=progress, routes=adv_routes,
                    per_example=adv_correct)
    clean, adv = _choices(clean_routes), _choices(adv_routes)
    changed_in = {name: clean[name] != adv[name] for name in clean}
    changed = torch.stack(list(changed_in.values())).any(0)
    correct = torch.cat(adv_correct)
    share = lambda mask: float(mask.float().mean())
    return {
        "n": len(data), "eps": eps, "step_size": step_size, "steps": steps,
        "shares": dict(zip(CATEGORIES, (share(~changed & correct), share(~changed & ~correct),
                                        share(changed & correct), share(changed & ~correct)))),
        "routing_unchanged": share(~changed), "robust_accuracy": share(correct),
        "layer_change_rate": {name: share(c) for name, c in changed_in.items()},
        "routing_changed_bits": bits([changed]), "correct_bits": bits([correct]),
        "routes_clean": {name: digits(c) for name, c in clean.items()},
        "routes_adversarial": {name: digits(c) for name, c in adv.items()},
    }
