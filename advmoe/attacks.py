"""L-infinity attacks on inputs in [0, 1]."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from .losses import kl_from_logits

LOSSES = ("ce", "kl")


def check_attack(eps: float, step_size: float, steps: int, loss: str = "ce") -> None:
    if not isinstance(eps, (int, float)) or not 0 <= eps <= 1:
        raise ValueError(f"eps must be in [0, 1] (inputs live in [0, 1]), got {eps!r}")
    if not isinstance(step_size, (int, float)) or step_size < 0:
        raise ValueError(f"step_size must be >= 0, got {step_size!r}")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if loss not in LOSSES:
        raise ValueError(f"unknown attack loss {loss!r}; allowed: {', '.join(LOSSES)}")


@contextlib.contextmanager
def frozen_eval(model: nn.Module):
    """Eval mode with parameter gradients off (only the input's gradient is needed); both restored after."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        model.train(was_training)
        for p, flag in flags:
            p.requires_grad_(flag)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step_size: float, steps: int,
        loss: str = "ce", random_start: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient ascent (Madry et al.) in the L-inf ball of radius eps around x, inside [0, 1].

    loss="ce": cross-entropy with the labels (evaluation, the paper's RA). loss="kl": KL between the
    clean and the perturbed prediction (the TRADES inner maximisation used in training). The model runs
    in eval mode; the gradient through MoE routing (straight-through gate) reaches the input, so the
    router is attacked too. The model's train/eval state and requires_grad flags are restored.
    """
    check_attack(eps, step_size, steps, loss)
    with frozen_eval(model):
        target = None
        if loss == "kl":
            with torch.no_grad():
                target = model(x)
        delta = torch.zeros_like(x)
        if random_start and eps > 0:
            delta = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype).mul_(2 * eps).sub_(eps)
        x_adv = (x + delta).clamp_(0, 1)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            logits = model(x_adv)
            objective = (F.cross_entropy(logits, y, reduction="sum") if loss == "ce"
                         else kl_from_logits(target, logits, reduction="sum"))
            grad, = torch.autograd.grad(objective, x_adv)
            x_adv = x_adv.detach() + step_size * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0, 1)
    return x_adv.detach()
