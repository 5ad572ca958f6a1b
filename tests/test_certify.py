"""Certified radii (advmoe.certify): the Lipschitz bounds are upper bounds, and no attack inside a certified radius
changes a prediction."""
import pytest
import torch

from advmoe import certify
from advmoe.attacks import pgd
from advmoe.models import create_model


def _trained_like(model):
    """Nontrivial BatchNorm statistics and affine parameters (an untrained model's are 0/1)."""
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


def test_the_feature_bound_exceeds_every_measured_ratio():
    torch.manual_seed(0)
    net = _trained_like(create_model("resnet18", "dense", base_width=4))
    bound = certify.feature_lipschitz(net)
    features = lambda x: net.layers(net.stem(x)).mean((2, 3))
    x = torch.rand(64, 3, 32, 32)
    with torch.no_grad():
        for scale in (1e-3, 1e-2):
            d = (torch.rand_like(x) * 2 - 1) * scale
            ratio = (features(x + d) - features(x)).abs().flatten(1).max(1).values / d.abs().flatten(1).max(1).values
            assert (ratio <= bound).all() and ratio.max() > 0


def test_no_attack_inside_the_certified_radius_changes_a_prediction():
    torch.manual_seed(0)
    moe = _trained_like(create_model("resnet18", "network-moe", n_experts=3, base_width=4))
    with torch.no_grad():
        moe.router.fc.weight.mul_(20)
    x = torch.rand(32, 3, 32, 32)
    with torch.no_grad():
        y = moe(x).argmax(1)  # every image right: its radius is positive
    out = certify.moe_radius(moe, x, y)
    assert (out["radius"] > 0).all() and torch.equal(out["radius"], torch.minimum(out["route"], out["expert"]))
    for i in range(8):  # PGD at 0.99 of each image's own radius
        eps = 0.99 * float(out["radius"][i])
        x_adv = pgd(moe, x[i:i + 1], y[i:i + 1], eps, eps / 4, 20)
        with torch.no_grad():
            assert moe(x_adv).argmax(1) == y[i]
    wrong = (y + 1) % 10
    assert (certify.moe_radius(moe, x, wrong)["radius"] == 0).all()  # a wrong prediction certifies nothing


def test_the_route_radius_is_tight_for_the_linear_router():
    torch.manual_seed(0)
    moe = create_model("resnet18", "network-moe", n_experts=3, base_width=4).eval()
    x = torch.rand(4, 3, 32, 32)
    choice, radius = certify.route_radius(moe, x)
    w = moe.router.fc.weight.detach()
    for i in range(4):  # the worst L-inf step against the closest rival moves the route just past the radius
        k = min((k for k in range(3) if k != choice[i]),
                key=lambda k: float((moe.router(x[i:i + 1])[0, choice[i]] - moe.router(x[i:i + 1])[0, k]).detach()
                                    / (w[choice[i]] - w[k]).abs().sum()))
        step = -(w[choice[i]] - w[k]).sign().view(3, 32, 32) * float(radius[i]) * 1.01
        with torch.no_grad():
            assert moe.router(x[i:i + 1] + step).argmax(1) != choice[i]


def test_the_dual_radius_weighs_its_two_experts_by_alpha():
    torch.manual_seed(0)
    dual = _trained_like(create_model("resnet18", "dual-moe", n_experts=2, base_width=4, alpha=0.5))
    x = torch.rand(16, 3, 32, 32)
    with torch.no_grad():
        y = dual(x).argmax(1)
    out = certify.dual_radius(dual, x, y)
    assert (out["radius"] <= out["blend"]).all() and (out["radius"] > 0).any()
    i = int(out["radius"].argmax())
    eps = 0.99 * float(out["radius"][i])
    x_adv = pgd(dual, x[i:i + 1], y[i:i + 1], eps, eps / 4, 20)
    with torch.no_grad():
        assert dual(x_adv).argmax(1) == y[i]
    dual.alpha = 1.0  # the robust MoE alone: the standard one's route no longer counts
    with torch.no_grad():
        y_r = dual(x).argmax(1)
    alone = certify.dual_radius(dual, x, y_r)
    assert torch.isinf(alone["route_standard"]).all()
    assert torch.allclose(alone["radius"], certify.moe_radius(dual.robust, x, y_r)["radius"])


def test_only_plain_resnets_are_bounded():
    moe = create_model("resnet18", "moe", 0.5, 2, base_width=4)
    with pytest.raises(ValueError, match="plain ResNet-18"):
        certify.feature_lipschitz(moe)
