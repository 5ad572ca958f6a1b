import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advmoe.attacks import autoattack, pgd
from advmoe.models import create_model
from conftest import class_images


@pytest.fixture(scope="module")
def trained():
    """A small CNN trained for a few steps on class-coloured images, so that it has something to lose."""
    torch.manual_seed(0)
    x, y = class_images(64, 10, 0)
    x = torch.from_numpy(x).view(-1, 3, 32, 32).float() / 255
    y = torch.from_numpy(y).long()
    model = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                          nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    return model, x[:32], y[:32]


def _accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_autoattack_at_eps_zero_is_clean_accuracy(trained):
    model, x, y = trained
    r = autoattack(model, x, y, 0.0, version="apgd-ce")
    assert r["ra_aa"] == _accuracy(model, x, y) > 0.5
    assert r["n"] == 32 and r["library"] in ("autoattack", "pyautoattack") and r["max_perturbation"] == 0


def test_autoattack_is_at_least_as_strong_as_pgd(trained):
    model, x, y = trained
    eps = 16 / 255
    torch.manual_seed(0)
    x_pgd = pgd(model, x, y, eps, 2 / 255, 10)
    ra_pgd = _accuracy(model, x_pgd, y)
    r = autoattack(model, x, y, eps, version="apgd-ce")
    assert r["ra_aa"] <= ra_pgd + 1 / 32  # one image of slack for PGD's random start
    assert r["ra_aa"] < _accuracy(model, x, y)
    assert r["max_perturbation"] <= eps + 1e-5 and r["seconds"] > 0


def test_autoattack_standard_on_an_moe(trained):
    torch.manual_seed(0)
    model = create_model("resnet18", "moe", 0.5, 2, base_width=4).eval()
    _, x, y = trained
    r = autoattack(model, x, y, 8 / 255, version="standard", n=4)
    assert r["n"] == 4 and r["version"] == "standard" and 0 <= r["ra_aa"] <= _accuracy(model, x[:4], y[:4])
    assert model.training is False and all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("kwargs,needle", [
    (dict(eps=-0.1), "eps must be in [0, 1]"),
    (dict(eps=0.1, version="plus"), "allowed: standard, apgd-ce"),
    (dict(eps=0.1, n=0), "n must be an integer"),
])
def test_autoattack_bad_input(trained, kwargs, needle):
    model, x, y = trained
    with pytest.raises(ValueError) as e:
        autoattack(model, x, y, **kwargs)
    assert needle in str(e.value)


class _Constant(torch.nn.Module):
    """Always predicts class 0, with a zero input gradient: AutoAttack's own checks must say so."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        logits = torch.zeros(x.shape[0], 10)
        logits[:, 0] = 10
        return logits + 0 * self.w * x.flatten(1).sum(1, keepdim=True)


def test_autoattack_keeps_the_library_warnings_and_its_per_attack_accuracy():
    import logging

    from advmoe.attacks import _library_messages
    x, y = torch.rand(6, 3, 32, 32), torch.zeros(6, dtype=torch.long)
    r = autoattack(_Constant(), x, y, 8 / 255, version="apgd-ce")
    assert r["ra_aa"] == 1.0 and r["correct"] == "111111"
    assert r["ra_after_each"] == {"apgd-ce": 1.0}  # from the library's own log
    try:
        from autoattack.checks import check_zero_gradients
    except ImportError:
        from pyautoattack.checks import check_zero_gradients
    with _library_messages() as said:  # what the library's checks say (logger or warnings) is kept, once each
        for _ in range(3):
            check_zero_gradients(torch.zeros(4, 3), logger=logging.getLogger("auto-attack"))
            check_zero_gradients(torch.zeros(4, 3))
    assert len(said["warnings"]) == 1 and "4 points with zero gradient" in said["warnings"][0]
