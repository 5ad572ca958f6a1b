"""The MoE convolution and its routers (paper Sec. 3 "Model setup", Fig. A1).

An MoE conv holds N experts. Expert e owns output slice e of one conv weight with
N * r*C_out outputs and r*C_in inputs (the authors' layout), so one expert is an
r*C_out x r*C_in kernel and the layer returns the chosen expert's r*C_out channels.
Routing is top-1 with a straight-through gradient to the router logits, as in the
authors' code: the chosen expert's output is multiplied by 1 + p - stop_grad(p),
where p is the router's softmax probability of that expert (value exactly 1, gradient
dp; `_StraightThrough` passes the output on without computing the product).

Two executions compute the same function (tested): "sparse", the CPU's, where each sample runs only its chosen
expert (the batch is grouped by expert, `_GroupedConv`), and "static", a GPU's, where every expert runs on every
sample and a mask keeps the chosen one: fixed shapes and no host reads, so a step can be captured whole (CUDA graphs,
`torch.compile(fullgraph=True)`). `set_execution(model, ...)` chooses; `advmoe.accel` chooses by device. Routing
records stay on the model's device. Three other modes exist for checking, never for training:
`dense_reference(model)` computes every expert and masks (tests and benchmark);
`soft_routing(model)` mixes every expert by its router probability and
`fixed_routing(model, routes)` replays given routing choices: both are smooth
surrogates that the robustness audit attacks (advmoe.audit, check f); `forced_expert(model, e)` sends
every sample to expert e (advmoe.worstcase).
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn


def global_average_pool(x: torch.Tensor) -> torch.Tensor:
    """(n, c, h, w) -> (n, c). A sum, then a division of the small result: the backward of a sum is a broadcast view,
    while that of `mean` writes a divided copy of the whole feature map (measured: 4% of an MoE training step)."""
    return x.sum((2, 3)) / (x.shape[2] * x.shape[3])


class Router(nn.Module):
    """Per-layer gate (paper Fig. A1): global average pool of the layer input -> linear."""

    def __init__(self, in_channels: int, n_experts: int):
        super().__init__()
        self.fc = nn.Linear(in_channels, n_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(global_average_pool(x))


class SharedRouter(nn.Module):
    """The authors' released variant: one small CNN on the image; every MoE layer follows its choice."""

    def __init__(self, n_experts: int, width: int = 16):
        super().__init__()
        layers, c_in = [], 3
        for c_out, stride in [(width, 1), (2 * width, 2), (4 * width, 2)]:
            layers += [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, n_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(global_average_pool(self.features(x)))


class MoELayer(nn.Module):
    """What every MoE layer shares, whatever its experts (this file's MoE conv, or the top-k layer of
    `advmoe.models.topk`): its number of experts, the routing mode the context managers below set ("sparse", or
    "dense-reference", "soft", "fixed": see the module docstring), the fixed choice, and the routing record."""

    def __init__(self, n_experts: int):
        super().__init__()
        self.n_experts = n_experts
        self.mode = "sparse"
        self.execution = "sparse"  # or "static" (`set_execution`)
        self.fixed_choice: torch.Tensor | int | None = None
        self.record: list[torch.Tensor] | None = None


class MoEConv2d(MoELayer):
    """A conv layer of N experts with top-1 routing (no bias; a BatchNorm follows it)."""

    def __init__(self, in_channels: int, out_channels: int, n_experts: int, kernel_size: int = 3,
                 stride: int = 1, padding: int = 1, router: bool = True):
        super().__init__(n_experts)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.weight = nn.Parameter(torch.empty(n_experts * out_channels, in_channels, kernel_size, kernel_size))
        for w in self.weight.split(out_channels):  # each expert initialised like its own nn.Conv2d
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        self.router = Router(in_channels, n_experts) if router else None
        self.shared_logits: torch.Tensor | None = None  # set by RoutedNet when the router is shared

    def expert_weight(self, e: int) -> torch.Tensor:
        return self.weight[e * self.out_channels:(e + 1) * self.out_channels]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.router(x) if self.router is not None else self.shared_logits
        if logits is None:
            raise RuntimeError("MoEConv2d without its own router must run inside a RoutedNet")
        choice = logits.argmax(1)
        if self.mode == "fixed":  # given choices per sample, or one expert for every sample
            choice = (self.fixed_choice.to(choice.device) if torch.is_tensor(self.fixed_choice)
                      else torch.full_like(choice, int(self.fixed_choice)))
        if self.record is not None:
            self.record.append(choice.detach())
        if self.mode == "soft":  # every expert, weighted by its router probability (no straight-through gate)
            return self._mixed(x, logits.softmax(1))
        # Static execution computes every expert and masks: regrouping needs the expert counts on the host at every
        # layer, and on a GPU that wait costs more than the extra FLOPs (measured on an H100: 2.5x faster training).
        # FLOPs are counted for the pathway either way.
        masked = self.mode == "dense-reference" or self.execution == "static"
        out = self._mixed(x, one_hot(choice, self.n_experts, x.dtype)) if masked else self._sparse(x, choice)
        if logits.requires_grad:  # straight-through gate: forward value 1, gradient to the router logits
            out = _StraightThrough.apply(out, logits.softmax(1).gather(1, choice[:, None]).squeeze(1))
        return out

    def _conv(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, weight, None, self.stride, self.padding)

    def _sparse(self, x: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
        counts = torch.bincount(choice, minlength=self.n_experts).tolist()
        groups = [(e, (choice == e).nonzero().squeeze(1)) for e, k in enumerate(counts) if k]
        return _GroupedConv.apply(x, self.weight, groups, self.out_channels, self.stride, self.padding)

    def _mixed(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        y = self._conv(x, self.weight)  # every expert on every sample (the authors' released layer)
        y = y.view(y.shape[0], self.n_experts, self.out_channels, *y.shape[2:])
        return (y * weights.view(-1, self.n_experts, 1, 1, 1)).sum(1)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, n_experts={self.n_experts}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, shared_router={self.router is None}")


def one_hot(choice: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    """(len(choice), n) of exact 0 and 1: F.one_hot's values, without its range checks (host reads on a CPU)."""
    return (choice[:, None] == torch.arange(n, device=choice.device)).to(dtype)


class _StraightThrough(torch.autograd.Function):
    """out * g with g = 1 + p - stop_grad(p) (value exactly 1, dg/dp = 1) without computing the product:
    forward returns out, backward passes the gradient through and gives p the per-sample <grad, out>."""

    @staticmethod
    def forward(ctx, out: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(out)
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out, = ctx.saved_tensors
        grad_p = None
        if ctx.needs_input_grad[1]:
            n = out.shape[0]
            grad_p = torch.linalg.vecdot(grad.reshape(n, -1), out.reshape(n, -1))
        return grad, grad_p


class _GroupedConv(torch.autograd.Function):
    """Each sample convolved with its own expert's kernel (slice e of the weight for expert e).

    The samples of each expert are gathered, convolved, and written back to their rows of the output. Backward
    gathers the output gradient the same way and uses the kernel nn.Conv2d's backward uses
    (aten.convolution_backward), skipping the gradients not needed (the weight's during an attack, whose
    parameters are frozen). Rows are copied through (n, -1) views: on this CPU, index_copy_ of 4-d rows costs
    twice that of the same rows as 2-d (measured); sorting the batch by expert instead costs more (measured).
    """

    @staticmethod
    def forward(ctx, x, weight, groups, out_channels, stride, padding):
        c = out_channels
        ctx.groups, ctx.out_channels, ctx.conv, ctx.x_shape = groups, out_channels, (stride, padding), x.shape
        if len(groups) == 1:  # the whole batch chose one expert: no regrouping
            e = groups[0][0]
            ctx.save_for_backward(weight, x)
            return F.conv2d(x, weight[e * c:(e + 1) * c], None, stride, padding)
        out, inputs = None, []
        for e, idx in groups:
            xe = x.index_select(0, idx)
            ye = F.conv2d(xe, weight[e * c:(e + 1) * c], None, stride, padding)
            if out is None:
                out = ye.new_empty(x.shape[0], *ye.shape[1:])
            _put_rows(out, idx, ye)
            inputs.append(xe)
        ctx.save_for_backward(weight, *inputs)
        return out

    @staticmethod
    def backward(ctx, grad):
        weight, *inputs = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[:2]
        c, (stride, padding), split = ctx.out_channels, ctx.conv, len(ctx.groups) > 1
        grad_x = grad.new_empty(ctx.x_shape) if need_x and split else None
        grad_w = torch.zeros_like(weight) if need_w else None
        for (e, idx), xe in zip(ctx.groups, inputs):
            gx, gw, _ = torch.ops.aten.convolution_backward(
                grad.index_select(0, idx) if split else grad, xe, weight[e * c:(e + 1) * c], None, (stride, stride),
                (padding, padding), (1, 1), False, (0, 0), 1, (need_x, need_w, False))
            if need_x:
                grad_x = _put_rows(grad_x, idx, gx) if split else gx
            if need_w:
                grad_w[e * c:(e + 1) * c] = gw
        return grad_x, grad_w, None, None, None, None


def _put_rows(out: torch.Tensor, idx: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """out[idx] = rows along dim 0, through (n, -1) views (out is a fresh contiguous tensor)."""
    out.view(out.shape[0], -1).index_copy_(0, idx, rows.reshape(rows.shape[0], -1))
    return out


class RoutedNet(nn.Module):
    """Base of every backbone: runs the shared router (if any) before the network itself."""

    def __init__(self):
        super().__init__()
        self.shared_router: SharedRouter | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shared_router is not None:
            logits = self.shared_router(x)
            for m in moe_layers(self).values():
                m.shared_logits = logits
        try:
            return self.forward_features(x)
        finally:
            if self.shared_router is not None:
                for m in moe_layers(self).values():
                    m.shared_logits = None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def moe_layers(model: nn.Module) -> dict[str, MoELayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, MoELayer)}


def is_router_parameter(name: str) -> bool:
    """A parameter of a per-layer router ("...conv1.router.fc.weight") or of the shared one ("shared_router....")."""
    parts = name.split(".")
    return "router" in parts or parts[0] == "shared_router"


def router_parameters(model: nn.Module) -> list[nn.Parameter]:
    """phi of the paper (Sec. 4): the parameters of every router."""
    return [p for n, p in model.named_parameters() if is_router_parameter(n)]


def backbone_parameters(model: nn.Module) -> list[nn.Parameter]:
    """psi of the paper (Sec. 4): everything that is not a router."""
    return [p for n, p in model.named_parameters() if not is_router_parameter(n)]


class Routes(dict):
    """Layer name -> expert index per sample, filled by `record_routing` (tensors after the with-block)."""

    def histogram(self) -> dict[str, list[int]]:
        return {name: torch.bincount(c, minlength=n).tolist() for name, (c, n) in self._sizes().items()}

    def _sizes(self):
        return {name: (choice, self.n_experts[name]) for name, choice in self.items()}


@contextlib.contextmanager
def record_routing(model: nn.Module):
    """`with record_routing(model) as routes: model(x)`; afterwards routes[layer] is a LongTensor (n_samples,)."""
    layers = moe_layers(model)
    routes = Routes()
    routes.n_experts = {name: m.n_experts for name, m in layers.items()}
    for m in layers.values():
        m.record = []
    try:
        yield routes
    finally:
        for name, m in layers.items():
            routes[name] = torch.cat(m.record) if m.record else torch.empty(0, dtype=torch.long)
            m.record = None


@contextlib.contextmanager
def _routing_mode(model: nn.Module, mode: str, routes: dict[str, torch.Tensor] | int | None = None,
                  only: str | None = None):
    layers = {n: m for n, m in moe_layers(model).items() if only is None or n == only}
    for name, m in layers.items():
        m.mode = mode
        m.fixed_choice = routes if routes is None or isinstance(routes, int) else routes[name]
    try:
        yield model
    finally:
        for m in layers.values():
            m.mode, m.fixed_choice = "sparse", None


EXECUTIONS = ("sparse", "static")


def set_execution(model: nn.Module, execution: str) -> nn.Module:
    """How every MoE layer of `model` runs its experts: "sparse" (each sample its own expert, the batch regrouped:
    the CPU's) or "static" (every expert, masked: fixed shapes, no host reads; a GPU's). Same function either way."""
    if execution not in EXECUTIONS:
        raise ValueError(f"unknown execution {execution!r}; allowed: {', '.join(EXECUTIONS)}")
    for m in moe_layers(model).values():
        m.execution = execution
    return model


def dense_reference(model: nn.Module):
    """Compute every expert and mask (the authors' layer): for tests and the benchmark only."""
    return _routing_mode(model, "dense-reference")


def soft_routing(model: nn.Module):
    """Each MoE layer outputs the router-probability-weighted sum of all its experts (an attack surrogate)."""
    return _routing_mode(model, "soft")


def fixed_routing(model: nn.Module, routes: dict[str, torch.Tensor]):
    """Each MoE layer uses the given per-sample choices (from `record_routing`) instead of its router's."""
    return _routing_mode(model, "fixed", routes)


def forced_expert(model: nn.Module, expert: int, layer: str | None = None):
    """Every sample goes to `expert` in every MoE layer, or in `layer` only (the others route as usual): one fixed
    pathway (the per-expert evaluation of the Robust Experts paper); the router still runs, so its parameters keep
    their place in the graph."""
    layers = moe_layers(model)
    if layer is not None and layer not in layers:
        raise ValueError(f"unknown MoE layer {layer!r}; this model's: {', '.join(layers) or 'none'}")
    n = {m.n_experts for name, m in layers.items() if layer is None or name == layer}
    if not isinstance(expert, int) or not n or not 0 <= expert < min(n):
        raise ValueError(f"expert must be an integer in [0, {min(n) if n else 0}), got {expert!r}")
    return _routing_mode(model, "fixed", expert, only=layer)
