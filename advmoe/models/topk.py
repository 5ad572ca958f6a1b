"""The sparse top-k MoE layer of Robust Experts (Pavlitska et al., 2025), as the authors' code builds it
(../shared/papers/robust-experts-2025-facts.md, Sec. 2-3): N expert modules behind one gate on the layer's input.

- BlockMoE: the experts are N freshly initialised copies of a residual block, each with its own shortcut; ConvMoE:
  N freshly initialised copies of one conv (the BatchNorm after it stays shared). `insert` builds both.
- Gates: "gap-fc" (global average pool -> linear -> softmax; the authors' GALRN) and "conv-gap" (3x3 conv to N
  channels without padding or bias -> pool -> softmax; CGARN).
- Top-k: with k = 1 the chosen expert is weighted exactly 1.0 and the gradient reaches its gate score straight
  through; with k >= 2 the k selected scores are renormalised, w = s / (sum s + 1e-5).
- Training-time ranking: plain top-k for the "entropy" balancing loss; for every other loss the scores are divided
  by their standard deviation (over the whole batch) and Gaussian noise of std 0.1 is added before the top-k (the
  authors' capacity is unlimited in every training config, so their re-assignment never moves a sample).
  Evaluation: plain top-k, no noise.
- Execution is sparse: each expert runs only on the samples that selected it (as the authors' layer does, so a
  BatchNorm inside an expert sees only its own samples in training). `dense_reference` (advmoe.models.moe) runs
  every expert on every sample and masks: equal in eval mode, outputs and gradients (tested).
- The gate scores of the last training-mode forward are kept (`scores`) for the balancing loss
  (`advmoe.losses.balancing_loss`, summed over layers by `balancing_losses`).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .moe import MoELayer, Router, _StraightThrough, global_average_pool

GATES = ("gap-fc", "conv-gap")
BALANCING = ("entropy", "switch", "column-entropy", "none")  # the code's entropy, switch, the paper's printed one
NOISE_STD = 0.1  # the authors' `epsilon`


class ConvGapGate(nn.Module):
    """Conv-GAP: 3x3 conv to N channels, no padding, no bias -> global average pool -> softmax (the layer's)."""

    def __init__(self, in_channels: int, n_experts: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, n_experts, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return global_average_pool(self.conv(x))


class ImageGate(nn.Module):
    """The dual-model paper's router (`advmoe.models.netmoe`): the flattened image, one linear layer to N scores."""

    def __init__(self, in_features: int, n_experts: int):
        super().__init__()
        self.fc = nn.Linear(in_features, n_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


# gate name -> module(input channels, or features for "image-fc"; n_experts). GATES: a layer inside a network's
# stage takes these; "image-fc" gates whole networks on the image.
GATE_MODULES = {"gap-fc": Router, "conv-gap": ConvGapGate, "image-fc": ImageGate}


class TopKMoE(MoELayer):
    """N experts (any modules with the same input and output shapes) behind a gate, top-k routing."""

    def __init__(self, experts: list[nn.Module], in_channels: int, gate: str = "gap-fc", k: int = 1,
                 balancing: str = "entropy"):
        super().__init__(len(experts))
        check_layer_args(len(experts), gate, k, balancing, gates=tuple(GATE_MODULES))
        self.experts = nn.ModuleList(experts)
        # GAP-FC is AdvMoE's per-layer router (global average pool -> linear); the softmax is this layer's
        self.router = GATE_MODULES[gate](in_channels, len(experts))
        self.gate, self.k, self.balancing = gate, k, balancing
        self.scores: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.router(x).softmax(1)
        self.scores = scores if self.training else None
        if self.mode == "fixed":  # given choices per sample, or one expert for every sample: weight 1
            top = (self.fixed_choice.to(x.device) if torch.is_tensor(self.fixed_choice)
                   else torch.full((len(x),), int(self.fixed_choice), dtype=torch.long, device=x.device))[:, None]
        else:
            ranking = scores.detach()
            if self.training and self.balancing != "entropy":  # the authors' noisy training gate
                ranking = ranking / ranking.std() + NOISE_STD * torch.randn_like(ranking)
            top = ranking.topk(self.k, dim=1).indices
        if self.record is not None:
            self.record.append(top[:, 0].detach())
        if self.mode == "soft":  # every expert, weighted by its gate score (an attack surrogate)
            return self._combine(x, torch.arange(self.n_experts, device=x.device).expand(len(x), -1), scores,
                                 every=True)
        weights = None
        if top.shape[1] > 1:
            chosen = scores.gather(1, top)
            weights = chosen / (chosen.sum(1, keepdim=True) + 1e-5)
        out = self._combine(x, top, weights, every=self.mode == "dense-reference" or self.execution == "static")
        if weights is None and scores.requires_grad:  # k = 1: value exactly 1, gradient to the chosen score
            out = _StraightThrough.apply(out, scores.gather(1, top).squeeze(1))
        return out

    def _combine(self, x: torch.Tensor, top: torch.Tensor, weights: torch.Tensor | None, every: bool) -> torch.Tensor:
        """sum over slots j of weights[:, j] * expert_{top[:, j]}(x) (weight 1 where None). every: each expert on
        every sample, then masked (the dense reference, static execution); else each expert on its own samples only."""
        out = None
        for e, expert in enumerate(self.experts):
            hit = top == e
            w = (hit.to(x.dtype) if weights is None else weights * hit).sum(1)
            rows = torch.arange(len(x), device=x.device) if every else hit.any(1).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            y = expert(x if every else x.index_select(0, rows))
            y = y * w.index_select(0, rows).view(-1, *[1] * (y.dim() - 1))
            out = (y.new_zeros(len(x), *y.shape[1:]) if out is None else out).index_add(0, rows, y)
        return out

    def extra_repr(self) -> str:
        return f"n_experts={self.n_experts}, gate={self.gate}, k={self.k}, balancing={self.balancing}"


def check_layer_args(n_experts: int, gate: str, k: int, balancing: str, gates: tuple[str, ...] = GATES) -> None:
    """Raise ValueError naming what is allowed."""
    if not isinstance(n_experts, int) or n_experts < 2:
        raise ValueError(f"a top-k MoE layer needs n_experts >= 2 (an integer), got {n_experts!r}")
    if gate not in gates:
        raise ValueError(f"unknown gate {gate!r}; allowed: {', '.join(gates)}")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= n_experts:
        raise ValueError(f"top_k must be an integer in [1, n_experts = {n_experts}], got {k!r}")
    if balancing not in BALANCING:
        raise ValueError(f"unknown balancing loss {balancing!r}; allowed: {', '.join(BALANCING)}")


def fresh_copy(module: nn.Module) -> nn.Module:
    """A copy of a module with every parameter and buffer initialised anew (the authors' copy_weights=False)."""
    clone = copy.deepcopy(module)
    for m in clone.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return clone


def insert(model: nn.Module, names: list[str], n_experts: int, gate: str, k: int, balancing: str) -> nn.Module:
    """Replace each named submodule (a residual block or a conv) by a TopKMoE of N fresh copies of it, gated on its
    input. The input channels are the block's first conv's (or the conv's own)."""
    for name in names:
        parent, _, attr = name.rpartition(".")
        host = model.get_submodule(parent) if parent else model
        original = getattr(host, attr)
        first = original if isinstance(original, nn.Conv2d) else next(
            m for m in original.modules() if isinstance(m, nn.Conv2d))
        setattr(host, attr, TopKMoE([fresh_copy(original) for _ in range(n_experts)], first.in_channels, gate, k,
                                    balancing))
    return model


def balancing_losses(model: nn.Module) -> torch.Tensor | None:
    """The sum over the model's top-k layers of their balancing loss on the last training-mode forward (the
    authors' `_collect_aux_loss`); None when the model has no such layer or none ran in training mode."""
    from ..losses import balancing_loss

    losses = [balancing_loss(m.scores, m.balancing) for m in model.modules()
              if isinstance(m, TopKMoE) and m.scores is not None]
    return torch.stack(losses).sum() if losses else None
