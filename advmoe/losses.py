"""Training losses as pure functions of logits or of (model, inputs)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def kl_from_logits(logits_p: torch.Tensor, logits_q: torch.Tensor, reduction: str = "batchmean") -> torch.Tensor:
    """KL(p || q) for p = softmax(logits_p), q = softmax(logits_q), computed from log-softmax on both sides.

    The authors' router KL took softmax first and underflowed to NaN (../shared/papers/README.md);
    working in log space keeps it finite for any finite logits.
    """
    return F.kl_div(F.log_softmax(logits_q, 1), F.log_softmax(logits_p, 1), reduction=reduction, log_target=True)


def trades_loss(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
                beta: float = 6.0) -> tuple[torch.Tensor, torch.Tensor]:
    """TRADES, Eq. (AT) of Sec. 3 with 1/lambda = beta: CE(f(x), y) + beta * KL(f(x) || f(x_adv)).

    The KL is taken as in TRADES' reference code (clean distribution as the target). Clean and
    adversarial batches go through the model separately, as there, so BatchNorm sees each alone.
    Returns (loss, clean logits).
    """
    logits = model(x)
    logits_adv = model(x_adv)
    return F.cross_entropy(logits, y) + beta * kl_from_logits(logits, logits_adv), logits
