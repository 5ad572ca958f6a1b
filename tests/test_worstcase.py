"""The worst case over attacks: it finds what gradient masking by routing hides from PGD."""
import torch

from advmoe import experiments as ex
from advmoe import worstcase
from advmoe.io import bits
from advmoe.attacks import pgd
from advmoe.models import MoEConv2d, RoutedNet

EPS = 8 / 255


class GateFree(MoEConv2d):
    """Top-1 routing without the straight-through gate: the model's gradient never sees the routing."""

    def forward(self, x):
        if self.mode != "sparse":
            return super().forward(x)
        return self._sparse(x, self.router(x).argmax(1))


class MaskedByRouting(RoutedNet):
    """10 classes, inputs of 10 class channels and 1 routing channel (4x4 pixels). Expert 0 reads the class
    channels and is right with a wide margin; expert 1 is off by one class. The router sends an input to
    expert 1 when the routing channel's mean exceeds 0.5 + eps/2, which clean inputs (0.5) never do and an
    attacker reaches by adding eps to it. Neither expert reads that channel, so PGD's gradient there is 0."""

    def __init__(self):
        super().__init__()
        self.moe = GateFree(11, 10, n_experts=2, kernel_size=1, padding=0)
        with torch.no_grad():
            self.moe.weight.zero_()
            for c in range(10):
                self.moe.weight[c, c] = 10.0                      # expert 0: the class channel
                self.moe.weight[10 + (c + 1) % 10, c] = 10.0     # expert 1: the next class
            fc = self.moe.router.fc
            fc.weight.zero_()
            fc.bias.zero_()
            fc.weight[1, 10] = 200.0
            fc.bias[1] = -200.0 * (0.5 + EPS / 2)

    def forward_features(self, x):
        return self.moe(x).mean((2, 3))


def _data(n=30):
    y = torch.arange(n) % 10
    x = torch.full((n, 11, 4, 4), 0.25)
    x[torch.arange(n), y] = 0.75
    x[:, 10] = 0.5
    return x, y


def test_the_worst_case_finds_what_routing_hides_from_pgd():
    model, (x, y) = MaskedByRouting().eval(), _data()
    with torch.no_grad():
        assert (model(x).argmax(1) == y).all()
    x_pgd = pgd(model, x, y, EPS, 2 / 255, 20, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pgd_correct = model(x_pgd).argmax(1) == y
    assert pgd_correct.all()  # PGD sees no way in
    r = worstcase.worst_case(model, x, y, EPS, {"pgd-20": pgd_correct})
    assert r["ra_after_each"]["pgd-20"] == 1.0 and r["ra_worst"] <= 0.1  # clearly below PGD
    assert r["broken_by_each"]["apgd-dlr"] == 0  # through the real model's gradient: blind as PGD
    assert r["broken_by_each"]["soft-apgd-ce"] >= 27  # the soft-routing surrogate reaches the router
    assert r["expert_clean_accuracy"] == {"expert-0": 1.0, "expert-1": 0.0}
    assert r["correct_worst"].count("1") == round(r["ra_worst"] * len(y))


def test_worst_case_of_a_trained_model_is_stored_below_every_attack(tiny_data):
    spec = ex.make_spec("smoke", "moe", "at", 0.5, dataset="cifar10", base_width=4, epochs=2, train_subset=64,
                        batch_size=16, test_subset=16, eval_steps=2)
    r = worstcase.worst_case_eval(spec, progress=False)
    assert r["checkpoint_sha256"] == ex.load(spec)["checkpoint_sha256"]
    assert r["order"][:2] == ["pgd-2", "autoattack (apgd-ce)"] and "expert-1" in r["order"]
    after = [r["ra_after_each"][k] for k in r["order"]]
    assert after == sorted(after, reverse=True) and r["ra_worst"] == after[-1]
    assert r["ra_worst"] <= min(r["ra_pgd_same_examples"], r["ra_aa"])
    assert worstcase.worst_case_eval(spec, progress=False) == r  # stored, reused
    ex.run(spec, progress=False)  # re-trained: dropped with the model's other evaluations
    assert not list(ex.result_dir(spec).glob("worst-case-*.json"))


def test_bits_round_trip():
    assert bits([torch.tensor([True, False]), torch.tensor([True])]) == "101"
