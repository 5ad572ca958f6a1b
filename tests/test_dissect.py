"""Fig. 4/5's dissection: routing changed or not x prediction correct or not, under PGD."""
import pytest
import torch

from advmoe import data as datalib
from advmoe import experiments as ex
from advmoe.dissect import CATEGORIES, dissect
from advmoe.io import digits, from_bits, from_digits
from advmoe.models import create_model, moe_layers


def _data(n=24):
    g = torch.Generator().manual_seed(0)
    return datalib.ImageData(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                             torch.randint(0, 10, (n,), generator=g), 10, "random")


def test_shares_add_up_and_follow_the_per_image_results():
    torch.manual_seed(0)
    model = create_model("resnet18", "moe", 0.5, 2, base_width=8).eval()
    r = dissect(model, _data(), "cpu", 8 / 255, 2 / 255, 3, progress=False)
    assert sum(r["shares"].values()) == pytest.approx(1.0) and set(r["shares"]) == set(CATEGORIES)
    changed, correct = from_bits(r["routing_changed_bits"]), from_bits(r["correct_bits"])
    assert r["shares"]["routing unchanged, prediction correct"] == pytest.approx(float((~changed & correct).float().mean()))
    assert r["routing_unchanged"] == pytest.approx(1 - float(changed.float().mean()))
    assert set(r["layer_change_rate"]) == set(moe_layers(model))
    assert max(r["layer_change_rate"].values()) <= 1 - r["routing_unchanged"] + 1e-9  # a layer's rate <= any layer's
    # the stored routes are the experts chosen per image and layer, and they explain the change bits
    clean = {k: from_digits(v) for k, v in r["routes_clean"].items()}
    adv = {k: from_digits(v) for k, v in r["routes_adversarial"].items()}
    assert list(clean) == list(moe_layers(model)) and all(len(c) == 24 and c.max() <= 1 for c in clean.values())
    assert torch.equal(torch.stack([clean[k] != adv[k] for k in clean]).any(0), changed)
    assert all((clean[k] != adv[k]).float().mean().item() == pytest.approx(v) for k, v in r["layer_change_rate"].items())


def test_digits_round_trip_and_refuse_what_they_cannot_store():
    x = torch.tensor([0, 9, 10, 35, 3])
    assert digits(x) == "09az3" and torch.equal(from_digits(digits(x)), x)
    with pytest.raises(ValueError, match="integers in"):
        digits(torch.tensor([36]))


def test_no_attack_changes_no_routing_and_a_fixed_router_is_never_changed():
    torch.manual_seed(0)
    model = create_model("resnet18", "moe", 0.5, 2, base_width=8).eval()
    assert dissect(model, _data(), "cpu", 0.0, 2 / 255, 1, progress=False)["routing_unchanged"] == 1.0
    with torch.no_grad():
        for m in moe_layers(model).values():
            m.router.fc.weight.zero_()
            m.router.fc.bias.copy_(torch.tensor([50.0, -50.0]))  # every input goes to expert 0, whatever it is
    r = dissect(model, _data(), "cpu", 16 / 255, 4 / 255, 3, progress=False)
    assert r["routing_unchanged"] == 1.0 and all(v == 0 for v in r["layer_change_rate"].values())


def test_dissection_needs_an_moe_model():
    with pytest.raises(ValueError, match="needs an MoE model"):
        dissect(create_model("resnet18", "s-dense", 0.5, base_width=8), _data(4), "cpu", 8 / 255, 2 / 255, 1)
    with pytest.raises(ValueError, match="not 'moe'"):
        ex.dissection(ex.make_spec("smoke", "s-dense", "at", 0.5))
