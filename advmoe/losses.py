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


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """Sum of -p log p over every entry, with log(0) read as log(1e-5) (the authors' guard; 0 log 0 = 0 either way)."""
    return -(p * (p + (p == 0) * 1e-5).log()).sum()


def balancing_loss(scores: torch.Tensor, kind: str) -> torch.Tensor:
    """A Robust Experts balancing loss of one MoE layer's gate scores (T samples x N experts, rows softmax outputs),
    as the authors' code defines it (../shared/papers/robust-experts-2025-facts.md, Sec. 3):

    - "switch": N * sum_i f_i P_i - 1, f_i the share of samples whose top expert is i (no gradient), P_i the mean
      score of expert i; 0 at perfect balance.
    - "entropy": the mean per-sample entropy minus the entropy of the mean routing (confident and balanced).
    - "column-entropy": minus the entropy of the mean routing (the formula the paper prints for its entropy loss).
    - "none": 0.
    """
    t, n = scores.shape
    mean = scores.mean(0)
    if kind == "switch":
        f = F.one_hot(scores.argmax(1), n).to(scores.dtype).mean(0).detach()
        return n * (f * mean).sum() - 1
    if kind == "entropy":
        return _entropy(scores) / t - _entropy(mean)
    if kind == "column-entropy":
        return -_entropy(mean)
    if kind == "none":
        return scores.sum() * 0
    raise ValueError(f"unknown balancing loss {kind!r}; allowed: switch, entropy, column-entropy, none")
