import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advmoe.attacks import pgd
from advmoe.losses import kl_from_logits, trades_loss
from advmoe.models import create_model


class Scaled(nn.Module):
    """A linear model whose logits are blown up to extreme values."""

    def __init__(self, scale: float):
        super().__init__()
        self.fc, self.scale = nn.Linear(3 * 4 * 4, 10), scale

    def forward(self, x):
        return self.scale * self.fc(x.flatten(1))


def test_kl_matches_definition_and_is_zero_on_equal_inputs():
    p, q = torch.randn(6, 5), torch.randn(6, 5)
    expected = (p.softmax(1) * (p.log_softmax(1) - q.log_softmax(1))).sum(1).mean()
    assert torch.allclose(kl_from_logits(p, q), expected, atol=1e-6)
    assert kl_from_logits(p, p).abs() < 1e-6
    assert kl_from_logits(p, q) > 0


def test_trades_loss_finite_on_extreme_logits():
    torch.manual_seed(0)
    model = Scaled(1e4)  # softmax of these logits underflows to exact zeros
    x = torch.rand(8, 3, 4, 4)
    x_adv = (x + 0.03 * torch.randn_like(x)).clamp(0, 1)
    y = torch.randint(0, 10, (8,))
    naive = F.kl_div(model(x_adv).softmax(1).log(), model(x).softmax(1), reduction="batchmean")
    assert not torch.isfinite(naive), "the naive softmax-then-log KL must underflow here (the authors' bug)"
    loss, logits = trades_loss(model, x, x_adv, y, beta=6.0)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_trades_loss_is_ce_when_adversarial_equals_clean():
    model = Scaled(1.0)
    x, y = torch.rand(4, 3, 4, 4), torch.randint(0, 10, (4,))
    loss, logits = trades_loss(model, x, x.clone(), y)
    assert torch.allclose(loss, F.cross_entropy(logits, y), atol=1e-6)


@pytest.fixture
def small_model():
    torch.manual_seed(0)
    return create_model("resnet18", "moe", 0.5, 2, base_width=8)


@pytest.mark.parametrize("loss", ["ce", "kl"])
def test_pgd_raises_loss_and_respects_box(small_model, loss):
    x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))
    eps = 8 / 255
    small_model.train()
    x_adv = pgd(small_model, x, y, eps, 2 / 255, 10, loss=loss)
    assert small_model.training, "train/eval state must be restored"
    assert all(p.requires_grad for p in small_model.parameters())
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    x_rand = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)  # a random point of the same ball
    small_model.eval()
    with torch.no_grad():
        clean, adv, rand = small_model(x), small_model(x_adv), small_model(x_rand)
    if loss == "ce":
        assert F.cross_entropy(adv, y) > F.cross_entropy(rand, y) > 0
    else:
        assert kl_from_logits(clean, adv) > 2 * kl_from_logits(clean, rand)


def test_pgd_eps_zero_is_identity_and_bad_eps_raises(small_model):
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    assert torch.equal(pgd(small_model, x, y, 0.0, 2 / 255, 3), x)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="eps must be in"):
            pgd(small_model, x, y, bad, 2 / 255, 3)
    with pytest.raises(ValueError, match="allowed: ce, kl"):
        pgd(small_model, x, y, 0.1, 0.01, 3, loss="cw")


def test_more_steps_do_not_weaken_the_attack(small_model):
    torch.manual_seed(1)
    x, y = torch.rand(32, 3, 32, 32), torch.randint(0, 10, (32,))
    small_model.eval()

    def ce_after(steps):
        x_adv = pgd(small_model, x, y, 8 / 255, 2 / 255, steps, random_start=False)
        with torch.no_grad():
            return F.cross_entropy(small_model(x_adv), y).item()

    assert ce_after(0) < ce_after(2) < ce_after(10)
