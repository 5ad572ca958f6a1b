"""The robustness audit: routing surrogates, PGD iterates, each check's decision, and that it catches masking."""
import pytest
import torch
from torch import nn

from advmoe import audit
from advmoe import experiments as ex
from advmoe.attacks import pgd, pgd_iterates
from advmoe.models import create_model, fixed_routing, moe_layers, record_routing, soft_routing


def _moe(seed=0):
    torch.manual_seed(seed)
    return create_model("resnet18", "moe", 0.5, 2, 10, base_width=8).eval()


def test_fixed_routing_replays_the_recorded_choices_and_other_choices_change_the_output():
    model, x = _moe(), torch.rand(8, 3, 32, 32)
    with torch.no_grad(), record_routing(model) as routes:
        out = model(x)
    with torch.no_grad(), fixed_routing(model, dict(routes)):
        assert torch.equal(model(x), out)
    flipped = {name: 1 - c for name, c in routes.items()}
    with torch.no_grad(), fixed_routing(model, flipped), record_routing(model) as used:
        changed = model(x)
    assert all(torch.equal(used[name], flipped[name]) for name in routes)
    assert not torch.allclose(changed, out)
    assert all(m.mode == "sparse" and m.fixed_choice is None for m in moe_layers(model).values())


def test_soft_routing_mixes_every_expert_by_its_router_probability():
    torch.manual_seed(0)
    layer = create_model("resnet18", "moe", 0.5, 2, 10, base_width=8).eval()
    m = next(iter(moe_layers(layer).values()))
    x = torch.rand(4, m.in_channels, 8, 8)
    p = m.router(x).softmax(1)
    expected = sum(p[:, e, None, None, None] * torch.nn.functional.conv2d(x, m.expert_weight(e), None, m.stride,
                                                                           m.padding) for e in range(2))
    with soft_routing(layer):
        assert torch.allclose(m(x), expected, atol=1e-6)


def test_pgd_k_is_the_kth_iterate_of_a_longer_run():
    model, x, y = _moe(), torch.rand(4, 3, 32, 32), torch.arange(4)
    iterates = list(pgd_iterates(model, x, y, 8 / 255, 2 / 255, 5, generator=torch.Generator().manual_seed(3)))
    assert len(iterates) == 5
    short = pgd(model, x, y, 8 / 255, 2 / 255, 3, generator=torch.Generator().manual_seed(3))
    assert torch.equal(short, iterates[2])


def _raw(**changes):
    raw = {"n": 500, "steps": [10, 20, 50, 100], "eval_steps": 20, "large_eps": 64 / 255, "square_queries": 1000,
           "zero_gradient_examples": 0, "nonfinite_gradient_examples": 0,
           "ra": {"clean": 0.40, "eps0": 0.40, "pgd-10": 0.25, "pgd-20": 0.24, "pgd-50": 0.235, "pgd-100": 0.235,
                  "large-eps": 0.0, "square": 0.30, "transfer": 0.35, "soft-routing": 0.26, "fixed-routing": 0.25,
                  "worst-case (f)": 0.235},
           "autoattack": {"ra_aa": 0.22, "ra_pgd_same_examples": 0.24, "n": 200, "version": "standard"}}
    for key, value in changes.items():
        if key in raw["ra"]:
            raw["ra"][key] = value
        else:
            raw[key] = value
    return raw


def test_each_check_passes_on_a_sound_model_and_fails_on_its_own_symptom():
    assert audit.failed({"checks": audit.checks(_raw())}) == []
    symptoms = {
        "a": dict(eps0=0.39),                 # eps 0 changed a prediction
        "b": dict(**{"pgd-100": 0.30}),       # 100 steps worse than 50 by far more than noise
        "c": dict(**{"large-eps": 0.10}),     # eps 64/255 leaves 10% robust
        "d": dict(square=0.15),               # black box beats white box
        "e": dict(autoattack={"ra_aa": 0.35, "ra_pgd_same_examples": 0.24, "n": 200, "version": "standard"}),
        "f": dict(**{"worst-case (f)": 0.15}),  # router-aware / transfer attacks break far more
        "g": dict(zero_gradient_examples=50),
    }
    for letter, change in symptoms.items():
        assert audit.failed({"checks": audit.checks(_raw(**change))}) == [letter], letter
    assert audit.checks(_raw(nonfinite_gradient_examples=1))["g"]["passed"] is False
    assert audit.checks(_raw(autoattack=None))["e"]["passed"] is None  # not run: not a failure


def test_autoattacks_own_warning_is_never_a_plain_pass():
    said = "Square Attack has decreased the robust accuracy of 2.50%. This might indicate that ..."
    plain = {"checks": audit.checks(_raw())}
    warned = {"checks": audit.checks(_raw(autoattack={"ra_aa": 0.22, "ra_pgd_same_examples": 0.24, "n": 200,
                                                      "version": "standard", "warnings": [said]}))}
    assert audit.status(plain) == "passed" and audit.warned(plain) == []
    assert warned["checks"]["e"]["passed"] is True  # the numbers agree ...
    assert audit.warned(warned) == ["e"] and audit.status(warned) == "warned"  # ... but the library doubts them
    assert warned["checks"]["e"]["warnings"] == [said] and "AutoAttack warned" in warned["checks"]["e"]["detail"]
    failing = {"checks": audit.checks(_raw(square=0.15, autoattack={**_raw()["autoattack"], "warnings": [said]}))}
    assert audit.status(failing) == "failed"  # a failure outranks a warning


def test_tolerance_is_two_binomial_standard_errors():
    assert abs(audit.tolerance(0.5, 100) - 0.1) < 1e-12
    assert audit.tolerance(0.0, 100) > 0  # clipped: one example's worth of uncertainty at the edges


class Quantised(nn.Module):
    """A linear classifier on inputs rounded to 2 levels: rounding has a zero gradient (gradient masking)."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return torch.round(x).flatten(1) @ self.w


def test_the_audit_flags_a_gradient_masking_model_and_passes_a_smooth_one():
    torch.manual_seed(0)
    w, x = torch.randn(3 * 8 * 8, 10), torch.rand(64, 3, 8, 8)
    masked, smooth = Quantised(w), nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    for model, must_fail in ((masked, {"c", "g"}), (smooth, set())):
        with torch.no_grad():
            y = model(x).argmax(1)  # labels = the model's own predictions: clean accuracy 100%
        raw = audit.measure(model, x, y, 8 / 255, 2 / 255, 10, steps=(5, 10, 20), square_queries=50)
        assert raw["ra"]["eps0"] == raw["ra"]["clean"] == 1.0
        bad = set(audit.failed({"checks": audit.checks(raw)}))
        assert must_fail <= bad and (bad == set() if not must_fail else True), (type(model).__name__, bad, raw)
    assert raw["ra"]["large-eps"] == 0.0  # the smooth model is driven to zero at eps 64/255


def test_transfer_source_is_the_s_dense_model_of_the_same_training():
    moe = ex.make_spec("cpu", "moe", "advmoe", 0.5)
    assert audit.transfer_source(moe) == ex.make_spec("cpu", "s-dense", "at", 0.5)
    assert audit.transfer_source(ex.make_spec("cpu", "dense", "standard", 1.0)) == \
        ex.make_spec("cpu", "s-dense", "standard", 0.5)
    assert audit.transfer_source(ex.make_spec("cpu", "s-dense", "at", 0.5)) is None


def test_audit_of_a_trained_moe_is_stored_reused_and_dropped_on_retrain(tiny_data):
    kw = dict(dataset="cifar10", test_subset=32)
    spec = ex.make_spec("smoke", "moe", "at", 0.5, **kw)
    result = audit.audit(spec)  # trains the model, its S-Dense transfer source and runs AutoAttack first
    assert set(result["checks"]) == set("abcdefg") and result["n"] == 16
    assert {"soft-routing", "fixed-routing", "transfer"} <= set(result["ra"])
    assert result["checks"]["a"]["passed"] is True  # holds for any deterministic model, even this barely trained one
    path = next(ex.result_dir(spec).glob("audit-*.json"))
    assert audit.audit(spec) == result  # reused
    path.write_text(path.read_text().replace('"passed": true', '"passed": false', 1))  # tampered with
    with pytest.warns(UserWarning, match="damaged"):
        assert audit.audit(spec)["checks"] == result["checks"]  # detected and recomputed
    ex.run(spec, progress=False)
    assert not list(ex.result_dir(spec).glob("audit-*.json"))
