"""The dual-model paper's networks (advmoe.models.netmoe): an MoE of whole networks behind an image router, and the
dual model."""
import pytest
import torch
import torch.nn.functional as F

from advmoe.models import (DualModel, NetworkMoE, create_model, dense_reference, fixed_routing, forced_expert,
                           moe_layers, record_routing)


def _model(**kw):
    torch.manual_seed(0)
    return create_model("resnet18", "network-moe", n_experts=4, base_width=4, **kw)


def _split_batch(model, n=32):
    """Inputs the untrained router spreads over at least two experts (its scores are scaled up so they differ)."""
    with torch.no_grad():
        model.router.fc.weight.mul_(50)
    x = torch.rand(n, 3, 32, 32)
    with record_routing(model) as routes:
        model.eval()(x)
    assert len(set(routes["moe"].tolist())) > 1, "routing must split the batch"
    return x


def test_each_image_runs_its_own_expert_only_and_gets_its_logits():
    model = _model()
    x = _split_batch(model)
    with torch.no_grad(), record_routing(model) as routes:
        out = model(x)
    calls = {e: 0 for e in range(4)}
    hooks = [expert.register_forward_hook(lambda m, i, o, e=e: calls.__setitem__(e, calls[e] + len(i[0])))
             for e, expert in enumerate(model.experts)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    assert sum(calls.values()) == len(x)  # sparse: every image through exactly one network
    expected = torch.stack([model.experts[int(e)](x[i:i + 1])[0] for i, e in enumerate(routes["moe"])])
    assert torch.allclose(out, expected, atol=1e-5)  # the chosen expert's raw logits, weight exactly 1


def test_sparse_equals_the_dense_reference_outputs_and_every_gradient():
    model = _model()
    x = _split_batch(model).requires_grad_()
    y = torch.randint(0, 10, (len(x),))
    results = []
    for reference in (False, True):
        model.zero_grad()
        x.grad = None
        with dense_reference(model) if reference else torch.enable_grad():
            F.cross_entropy(model(x), y).backward()
        results.append({"input": x.grad.clone(), **{n: p.grad.clone() for n, p in model.named_parameters()
                                                    if p.grad is not None}})
    sparse, dense = results
    assert "moe.router.fc.weight" in sparse  # the router gets a gradient
    assert sparse.keys() <= dense.keys()  # an expert no image chose has no gradient (the reference's is zero)
    for name in dense:
        assert torch.allclose(sparse.get(name, torch.zeros_like(dense[name])), dense[name], atol=1e-5), name


def test_the_router_trains_unless_the_released_design_is_asked_for():
    for trains in (True, False):
        model = _model(router_trains=trains)
        x = _split_batch(model)
        before = model.router.fc.weight.detach().clone()
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        model.train()
        for _ in range(3):
            optimizer.zero_grad()
            F.cross_entropy(model(x), torch.randint(0, 10, (len(x),))).backward()
            optimizer.step()
        assert torch.equal(model.router.fc.weight, before) != trains


def test_forced_and_fixed_routing_reach_every_expert():
    model = _model().eval()
    x = torch.rand(6, 3, 32, 32)
    assert list(moe_layers(model)) == ["moe"]
    for e in range(4):
        with torch.no_grad(), forced_expert(model, e):
            assert torch.allclose(model(x), model.experts[e](x), atol=1e-5)
    choice = torch.tensor([3, 0, 1, 2, 3, 0])
    with torch.no_grad(), fixed_routing(model, {"moe": choice}):
        out = model(x)
    assert torch.allclose(out[1], model.experts[0](x[1:2])[0], atol=1e-5)


def test_the_dual_model_blends_the_logits_of_its_two_moes():
    torch.manual_seed(0)
    dual = create_model("resnet18", "dual-moe", n_experts=2, base_width=4, alpha=0.3).eval()
    assert isinstance(dual, DualModel) and isinstance(dual.standard, NetworkMoE) and isinstance(dual.robust, NetworkMoE)
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        fs, fr, fd = dual.standard(x), dual.robust(x), dual(x)
        assert torch.allclose(fd, 0.7 * fs + 0.3 * fr, atol=1e-5)
        for alpha, expected in ((0.0, fs), (1.0, fr)):
            dual.alpha = alpha
            assert torch.equal(dual(x), expected)
    assert sorted(moe_layers(dual)) == ["robust.moe", "standard.moe"]


@pytest.mark.parametrize("kw, needle", [
    (dict(kind="network-moe", n_experts=1), "needs n_experts >= 2"),
    (dict(kind="dual-moe", n_experts=2, alpha=1.5), "alpha must be a number in [0, 1]"),
    (dict(kind="network-moe", n_experts=2, image_size=0), "image_size must be a positive integer"),
])
def test_bad_arguments_fail_in_one_line(kw, needle):
    with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        create_model("resnet18", base_width=4, **kw)


def test_component_attacks_hold_the_routing_or_aim_at_it():
    from advmoe.attacks import component_attack

    model = _model()
    x = _split_batch(model, 16)
    with torch.no_grad():
        y = model(x).argmax(1)  # every image right before the attack
    zero = {t: component_attack(model, x, y, 0.0, 0.0, 3, t) for t in ("model", "experts", "router")}
    assert all(c.all() for c in zero.values())  # eps 0 = clean accuracy, whatever the target
    eps = 16 / 255
    ra = component_attack(model, x, y, eps, eps / 4, 10, "model", torch.Generator().manual_seed(0))
    ra_e = component_attack(model, x, y, eps, eps / 4, 10, "experts", torch.Generator().manual_seed(0))
    ra_r = component_attack(model, x, y, eps, eps / 4, 10, "router", torch.Generator().manual_seed(0))
    assert ra.float().mean() < 1 and ra_e.float().mean() < 1  # an untrained network is easy to fool
    assert ra_r.dtype == torch.bool and ra_r.shape == (16,)
    from advmoe.attacks import pgd
    with torch.no_grad():
        clean = model.router(x).argmax(1)
    x_adv = pgd(model.router, x, clean, eps, eps / 4, 10)
    with torch.no_grad():
        moved = model.router(x_adv).argmax(1)
    assert (moved != clean).any()  # the router attack does change routes
    # with identical experts a new route changes nothing (RA-R = 100%), and holding the routing changes nothing
    # either (RA-E = RA: the same attack through the same function)
    for expert in model.experts[1:]:
        expert.load_state_dict(model.experts[0].state_dict())
    with torch.no_grad():
        y = model(x).argmax(1)
    assert component_attack(model, x, y, eps, eps / 4, 10, "router", torch.Generator().manual_seed(0)).all()
    same = [component_attack(model, x, y, eps, eps / 4, 10, t, torch.Generator().manual_seed(0))
            for t in ("model", "experts")]
    assert torch.equal(*same)
    with pytest.raises(ValueError, match="unknown attack target 'gate'"):
        component_attack(model, x, y, eps, eps, 1, "gate")
    block = create_model("resnet18", "block-moe", n_experts=2, base_width=4, placement="layer4.1")
    with pytest.raises(ValueError, match="needs a network MoE"):
        component_attack(block, x, y, eps, eps, 1, "router")
