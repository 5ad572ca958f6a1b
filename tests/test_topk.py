"""The Robust Experts MoE (advmoe.models.topk): BlockMoE and ConvMoE placements, both gates, top-k weights, the noisy
training gate, the balancing losses, sparse execution equal to the dense reference, FLOPs of the executed pathway."""
import math

import pytest
import torch
import torch.nn.functional as F

from advmoe.flops import gflops
from advmoe.losses import balancing_loss
from advmoe.models import (TopKMoE, balancing_losses, create_model, dense_reference, forced_expert, moe_layers,
                           record_routing)


def _images(n: int, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.rand(n, 3, 32, 32)


class Spread(torch.nn.Module):
    """A gate plus a fixed projection of its standardised pooled input: an untrained network's pooled features
    barely differ between images, so without it every sample would choose the same expert. Deterministic for a
    given batch, so the sparse and the dense run see the same routing; the gate's own parameters stay in the graph."""

    def __init__(self, gate: torch.nn.Module, channels: int, n_experts: int):
        super().__init__()
        self.gate = gate
        self.register_buffer("projection", torch.randn(channels, n_experts))

    def forward(self, x):
        f = x.mean((2, 3))
        return self.gate(x) + 3 * ((f - f.mean(0)) / (f.std(0) + 1e-6)) @ self.projection / f.shape[1] ** 0.5


def _model(kind="block-moe", **kw):
    torch.manual_seed(0)
    kw = {"n_experts": 4, "base_width": 8, **kw}
    model = create_model("resnet18", kind, **kw)
    for layer in moe_layers(model).values():
        channels = layer.router.fc.in_features if hasattr(layer.router, "fc") else layer.router.conv.in_channels
        layer.router = Spread(layer.router, channels, layer.n_experts)
    return model


def _grads(model, x):
    x = x.clone().requires_grad_(True)
    model.zero_grad()
    out = model(x)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), x.grad.clone(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind, gate, k, placement", [("block-moe", "gap-fc", 1, "layer4"), ("block-moe", "conv-gap", 2, "layer4"),
                                                     ("block-moe", "gap-fc", 3, "layer3.1"), ("conv-moe", "conv-gap", 1, "layer4"),
                                                     ("conv-moe", "gap-fc", 2, "layer3")])
def test_sparse_execution_equals_the_dense_reference_outputs_and_every_gradient(kind, gate, k, placement):
    model = _model(kind, gate=gate, top_k=k, placement=placement).eval()
    x = _images(12)
    with record_routing(model) as routes:
        sparse = _grads(model, x)
    assert any(len(set(c.tolist())) > 1 for c in routes.values()), "the test needs samples routed apart"
    with dense_reference(model):
        dense = _grads(model, x)
    assert torch.allclose(sparse[0], dense[0], atol=1e-5) and torch.allclose(sparse[1], dense[1], atol=1e-6)
    assert any("router" in n for n in sparse[2]) and set(sparse[2]) <= set(dense[2])
    for name, g in dense[2].items():  # an expert no sample chose gets no gradient in the sparse run: zero
        assert torch.allclose(sparse[2].get(name, torch.zeros_like(g)), g, atol=1e-5), name


def test_conv_moe_in_training_mode_is_sparse_and_equal_too():
    """A ConvMoE's experts are convs (its BatchNorm is shared), so even batch statistics agree in training mode."""
    model = _model("conv-moe", top_k=2, balancing="entropy").train()  # entropy: no gate noise
    x = _images(8)
    torch.manual_seed(1)
    sparse = _grads(model, x)
    torch.manual_seed(1)
    with dense_reference(model):
        dense = _grads(model, x)
    assert torch.allclose(sparse[0], dense[0], atol=1e-5)
    assert all(torch.allclose(sparse[2].get(n, torch.zeros_like(g)), g, atol=1e-4) for n, g in dense[2].items())


def test_k1_weighs_the_chosen_expert_exactly_one_and_k2_renormalises_the_chosen_scores():
    torch.manual_seed(0)
    x = torch.rand(6, 16, 8, 8)
    experts = [torch.nn.Conv2d(16, 16, 3, padding=1, bias=False) for _ in range(4)]
    one, two = TopKMoE(experts, 16, k=1).eval(), TopKMoE(experts, 16, k=2).eval()
    two.router.load_state_dict(one.router.state_dict())
    scores = one.router(x).softmax(1)
    with torch.no_grad():
        out1, out2 = one(x), two(x)
    first = scores.argmax(1)
    for e in first.unique().tolist():  # bit for bit: each sample gets its expert's output, weighted exactly 1
        rows = (first == e).nonzero().squeeze(1)
        assert torch.equal(out1[rows], experts[e](x[rows]))
    for i in range(len(x)):
        top = scores[i].topk(2).indices.tolist()
        w = scores[i, top] / (scores[i, top].sum() + 1e-5)
        mixed = w[0] * experts[top[0]](x[i:i + 1])[0] + w[1] * experts[top[1]](x[i:i + 1])[0]
        assert torch.allclose(out2[i], mixed, atol=1e-6)
    # the straight-through gradient reaches the gate through the chosen score only
    out = one(x)
    out.sum().backward()
    assert one.router.fc.weight.grad.abs().sum() > 0


def test_routing_counts_and_forced_experts():
    model = _model("block-moe", placement="layer4.1").eval()
    x = _images(10)
    with record_routing(model) as routes:
        model(x)
    assert list(routes) == ["layers.3.1"] and sum(routes.histogram()["layers.3.1"]) == 10
    layer = moe_layers(model)["layers.3.1"]
    with torch.no_grad():
        feature = model.layers[3][0](model.layers[2](model.layers[1](model.layers[0](model.stem(x)))))
        with forced_expert(model, 2):
            assert torch.allclose(layer(feature), layer.experts[2](feature), atol=1e-6)
            with record_routing(model) as forced:
                model(x)
    assert forced["layers.3.1"].tolist() == [2] * 10


def test_the_noisy_training_gate_belongs_to_the_non_entropy_losses_only():
    x = _images(32)
    for balancing, noisy in (("switch", True), ("column-entropy", True), ("entropy", False)):
        model = _model("block-moe", placement="layer4.1", balancing=balancing)
        model.eval()
        with torch.no_grad(), record_routing(model) as plain:
            model(x)
        before = {k: v.clone() for k, v in model.state_dict().items()}  # training-mode forwards move BatchNorm
        model.train()
        draws = []
        for seed in range(3):
            torch.manual_seed(seed)
            with torch.no_grad(), record_routing(model) as routes:
                model(x)
            draws.append(routes["layers.3.1"])
        changed = any(not torch.equal(d, draws[0]) for d in draws)
        assert changed == noisy, balancing
        model.load_state_dict(before)
        model.eval()
        with torch.no_grad(), record_routing(model) as again:
            model(x)
        assert torch.equal(again["layers.3.1"], plain["layers.3.1"])  # evaluation: no noise


def test_balancing_losses_as_the_authors_define_them():
    n = 4
    balanced = torch.eye(n).repeat(3, 1)  # every expert chosen equally, with certainty
    collapsed = F.one_hot(torch.zeros(12, dtype=torch.long), n).float()
    assert balancing_loss(balanced, "switch").item() == pytest.approx(0.0)
    assert balancing_loss(collapsed, "switch").item() == pytest.approx(n - 1)
    assert balancing_loss(balanced, "column-entropy").item() == pytest.approx(-math.log(n), abs=1e-5)
    assert balancing_loss(balanced, "entropy").item() == pytest.approx(-math.log(n), abs=1e-4)  # confident + balanced
    uniform = torch.full((12, n), 1 / n)
    assert balancing_loss(uniform, "entropy").item() == pytest.approx(0.0, abs=1e-5)  # unsure rows cost log N
    assert balancing_loss(collapsed, "column-entropy").item() == pytest.approx(0.0, abs=1e-4)
    assert balancing_loss(collapsed, "none").item() == 0
    with pytest.raises(ValueError, match="allowed: switch, entropy"):
        balancing_loss(balanced, "kl")


def test_balancing_losses_sum_over_layers_and_train_the_gates():
    model = _model("conv-moe", balancing="switch").train()
    model(torch.rand(8, 3, 32, 32))
    total = balancing_losses(model)
    layers = [m for m in moe_layers(model).values()]
    assert len(layers) == 5
    assert total.item() == pytest.approx(sum(balancing_loss(m.scores, "switch") for m in layers).item())
    total.backward()
    assert all(m.router.gate.fc.weight.grad is not None for m in layers)
    model.eval()
    model(torch.rand(2, 3, 32, 32))
    assert balancing_losses(model) is None


def test_placements_and_the_conv_moe_count():
    names = lambda **kw: list(moe_layers(_model(**kw)))
    assert names(kind="block-moe", placement="layer4") == ["layers.3.0", "layers.3.1"]
    assert names(kind="block-moe", placement="layer3.0") == ["layers.2.0"]
    # the authors' code turns every conv of layer4 into an MoE, the 1x1 shortcut conv included: 5, not 4
    assert names(kind="conv-moe", placement="layer4") == ["layers.3.0.conv1", "layers.3.0.conv2",
                                                          "layers.3.0.shortcut.0", "layers.3.1.conv1", "layers.3.1.conv2"]
    model = _model("block-moe", placement="layer4.1")
    a, b = model.layers[3][1].experts[:2]
    assert not torch.equal(a.conv1.weight, b.conv1.weight)  # fresh copies, each initialised anew


@pytest.mark.parametrize("kw, needle", [
    (dict(placement="layer5"), "unknown placement 'layer5' for block-moe; allowed: layer1, layer2, layer3, layer4"),
    (dict(kind="conv-moe", placement="layer4.1"), "unknown placement 'layer4.1' for conv-moe"),
    (dict(gate="mlp"), "unknown gate 'mlp'; allowed: gap-fc, conv-gap"),
    (dict(balancing="kl"), "unknown balancing loss 'kl'"),
    (dict(top_k=5), "top_k must be an integer in [1, n_experts = 4]"),
    (dict(n_experts=1), "needs n_experts >= 2"),
    (dict(kind="mixture"), "unknown kind 'mixture'"),
])
def test_bad_arguments_fail_in_one_line_naming_what_is_allowed(kw, needle):
    with pytest.raises(ValueError) as e:
        _model(**kw)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_flops_count_the_gate_and_k_experts_of_the_executed_pathway():
    dense = gflops(create_model("resnet18", "s-dense", 1.0, base_width=16))
    one = gflops(create_model("resnet18", "block-moe", n_experts=4, base_width=16, placement="layer4"))
    two = gflops(create_model("resnet18", "block-moe", n_experts=4, base_width=16, placement="layer4", top_k=2))
    gates = (64 * 4 + 128 * 4) / 1e9  # GAP-FC on the inputs of layer4's two blocks (64 and 128 channels)
    assert one == pytest.approx(dense + gates, rel=1e-9)
    layer4 = two - one  # a second expert per block: layer4 once more
    assert 0.2 < layer4 / dense < 0.3  # layer4's share of ResNet-18's MACs at 32x32
    assert gflops(create_model("resnet18", "block-moe", n_experts=8, base_width=16)) == pytest.approx(
        dense + 2 * gates, rel=1e-9)  # more experts: the same pathway, a wider gate
