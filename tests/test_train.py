import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import advmoe
from advmoe import experiments as ex
from advmoe.attacks import pgd
from advmoe.losses import trades_loss
from advmoe.models import backbone_parameters, create_model, router_parameters
from advmoe.train import iteration, make_optimizers, trades_step


def _spec(method, kind="moe", **kw):
    scale = 1.0 if kind == "dense" else 0.5
    return ex.make_spec("smoke", kind, method, scale, dataset="cifar10", **{"lr": 0.05, **kw})


def _batch(seed, n=32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def _loss(model, x, x_adv, y, method):
    model.train()
    with torch.no_grad():
        if method == "standard":
            return torch.nn.functional.cross_entropy(model(x), y).item()
        return trades_loss(model, x, x_adv, y)[0].item()


@pytest.mark.parametrize("method,kind", [("standard", "dense"), ("at", "dense"), ("at", "s-dense"), ("at", "moe"),
                                         ("advmoe", "moe")])
def test_one_step_lowers_the_loss_on_a_fixed_batch(method, kind):
    torch.manual_seed(0)
    spec = _spec(method, kind)
    model = create_model("resnet18", kind, spec.scale, base_width=8)
    optimizers = make_optimizers(model, spec)
    x, y = _batch(0)
    torch.manual_seed(1)
    x_adv = pgd(model, x, y, spec.train_eps, spec.train_step_size, spec.train_steps, loss="kl")
    before = _loss(model, x, x_adv, y, method)
    iteration(model, optimizers, (x, y), (x, y), spec)  # advmoe: both steps on the same batch here
    assert _loss(model, x, x_adv, y, method) < before


def _snapshot(params):
    return [p.detach().clone() for p in params]


def _changed(before, params):
    return [not torch.equal(b, p) for b, p in zip(before, params)]


def test_advmoe_router_step_touches_only_routers_and_backbone_step_only_backbone():
    torch.manual_seed(0)
    spec = _spec("advmoe")
    model = create_model("resnet18", "moe", 0.5, 2, base_width=8)
    optimizers = make_optimizers(model, spec)
    phi, psi = router_parameters(model), backbone_parameters(model)
    assert {id(p) for p in optimizers["router"].param_groups[0]["params"]} == {id(p) for p in phi}
    x, y = _batch(0)
    b_phi, b_psi = _snapshot(phi), _snapshot(psi)
    trades_step(model, phi, optimizers["router"], x, y, spec)  # Algorithm 1, line 4
    assert any(_changed(b_phi, phi)) and not any(_changed(b_psi, psi))
    b_phi, b_psi = _snapshot(phi), _snapshot(psi)
    trades_step(model, psi, optimizers["backbone"], x, y, spec)  # Algorithm 1, line 5
    assert not any(_changed(b_phi, phi)) and any(_changed(b_psi, psi))
    assert all(p.requires_grad for p in model.parameters())


def test_advmoe_draws_different_batches_for_router_and_backbone(monkeypatch, tiny_data):
    seen = []
    real = trades_step

    def spy(model, params, optimizer, x, y, spec):
        seen.append(x.clone())
        return real(model, params, optimizer, x, y, spec)

    monkeypatch.setattr("advmoe.train.trades_step", spy)
    advmoe.run(_spec("advmoe", epochs=1, train_subset=64, batch_size=16, eval_steps=1, test_subset=8), progress=False)
    assert len(seen) == 2 * 4  # 4 iterations, each a router step and a backbone step
    for router_x, backbone_x in zip(seen[::2], seen[1::2]):
        assert router_x.shape == backbone_x.shape and not torch.equal(router_x, backbone_x)


RUNNER = """
import sys, advmoe
from advmoe import experiments as ex
spec = ex.make_spec("smoke", "moe", "advmoe", 0.5, dataset="cifar10", epochs=3, train_subset=256, batch_size=16,
                    test_subset=16, eval_steps=2)
advmoe.run(spec, progress=False)
"""


def _comparable(metrics):
    history = [{k: v for k, v in h.items() if k != "seconds"} for h in metrics["history"]]
    return history, metrics["final"]


def test_killed_run_resumes_to_the_same_metrics(tiny_data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    spec = ex.make_spec("smoke", "moe", "advmoe", 0.5, dataset="cifar10", epochs=3, train_subset=256, batch_size=16,
                        test_subset=16, eval_steps=2)
    out = ex.result_dir(spec)
    proc = subprocess.Popen([sys.executable, "-c", RUNNER], env=env)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "metrics.json").exists(), "the run finished before it could be killed"
    epoch = torch.load(out / "checkpoint.pt", weights_only=True)["epoch"]
    assert 1 <= epoch < 3
    subprocess.run([sys.executable, "-c", RUNNER], env=env, check=True)  # resumes from the checkpoint
    resumed = json.loads((out / "metrics.json").read_text())
    assert len(resumed["history"]) == 3

    other = tmp_path / "uninterrupted"
    subprocess.run([sys.executable, "-c", RUNNER], env={**env, "ADVMOE_RESULTS": str(other)}, check=True)
    straight = json.loads((ex.result_dir(spec, other) / "metrics.json").read_text())
    assert _comparable(resumed) == _comparable(straight)


def _bn_statistics(model):
    return [b.clone() for n, b in model.named_buffers() if "running" in n]


@pytest.mark.parametrize("method,trained,fixed", [("at-routers", router_parameters, backbone_parameters),
                                                  ("at-backbone", backbone_parameters, router_parameters)])
def test_partial_at_trains_only_its_part_and_fixes_the_rest_with_its_batchnorm(method, trained, fixed):
    torch.manual_seed(0)
    router = "shared" if method == "at-backbone" else "per-layer"  # the shared router has BatchNorms of its own
    model = create_model("resnet18", "moe", 0.5, 2, base_width=8, router=router)
    spec = _spec(method, router=router, parent=_spec("standard", router=router))
    optimizers = make_optimizers(model, spec)
    assert {id(p) for p in optimizers["all"].param_groups[0]["params"]} == {id(p) for p in trained(model)}
    before_t, before_f, stats = _snapshot(trained(model)), _snapshot(fixed(model)), _bn_statistics(model)
    iteration(model, optimizers, _batch(0), None, spec)
    assert any(_changed(before_t, trained(model))) and not any(_changed(before_f, fixed(model)))
    moved = [not torch.equal(a, b) for a, b in zip(stats, _bn_statistics(model))]
    if method == "at-routers":  # every BatchNorm belongs to the fixed backbone: none of their statistics move
        assert not any(moved)
    else:  # the backbone's BatchNorms train; the shared router's (fixed) do not
        names = [n for n, _ in model.named_buffers() if "running" in n]
        router_stats = [m for n, m in zip(names, moved) if n.startswith("shared_router")]
        assert router_stats and not any(router_stats) and any(moved)


def test_advmoe_router_step_moves_the_batchnorm_statistics_as_the_authors_code_does():
    torch.manual_seed(0)
    spec = _spec("advmoe")
    model = create_model("resnet18", "moe", 0.5, 2, base_width=8)
    optimizers = make_optimizers(model, spec)
    stats = _bn_statistics(model)
    trades_step(model, router_parameters(model), optimizers["router"], *_batch(0), spec)
    assert any(not torch.equal(a, b) for a, b in zip(stats, _bn_statistics(model)))


def test_tracking_robust_accuracy_every_epoch_leaves_the_weights_unchanged(tiny_data, tmp_path):
    from advmoe import data as datalib
    from advmoe.io import state_sha256
    from advmoe.train import train

    spec = _spec("advmoe", epochs=2, train_subset=64, batch_size=16, test_subset=16, eval_steps=1)
    train_data = datalib.load(spec.dataset, "train", subset=spec.train_subset, seed=0)
    test_data = datalib.load(spec.dataset, "test", subset=spec.test_subset, seed=0)
    runs = {}
    for track in (None, (8, 2)):
        torch.manual_seed(spec.seed)
        model = create_model("resnet18", "moe", 0.5, 2, base_width=spec.base_width)
        history = train(spec, model, train_data, test_data, tmp_path / str(track), torch.device("cpu"), progress=False,
                        track=track)
        runs[track] = (state_sha256(model.state_dict()), history, torch.get_rng_state())
    (plain, h_plain, rng_plain), (tracked, h_tracked, rng_tracked) = runs[None], runs[(8, 2)]
    assert plain == tracked and torch.equal(rng_plain, rng_tracked)
    assert all("test_ra_tracked" not in h for h in h_plain)
    assert [h["tracked"] for h in h_tracked] == [{"n": 8, "steps": 2}] * 2
    assert all(0 <= h["test_ra_tracked"] <= 1 for h in h_tracked)
    assert [h["train_loss"] for h in h_plain] == [h["train_loss"] for h in h_tracked]


def _topk_spec(method="pgd-at", **kw):
    return ex.make_spec("smoke", "block-moe", method, 1.0, **{"dataset": "cifar10", "n_experts": 4,
                                                              "placement": "layer4.1", "lr": 0.05,
                                                              "balancing": "switch", **kw})


@pytest.mark.parametrize("kind", ["dense", "block-moe", "conv-moe"])
def test_pgd_at_step_lowers_the_loss_on_its_adversarial_examples(kind):
    spec = _topk_spec(placement="layer4") if kind != "dense" else ex.make_spec("smoke", "dense", "pgd-at", 1.0,
                                                                                dataset="cifar10", lr=0.05)
    spec = spec.replace(kind=kind) if kind == "conv-moe" else spec
    torch.manual_seed(0)
    model = ex.model_for(spec.replace(base_width=8))
    optimizers = make_optimizers(model, spec)
    x, y = _batch(0)
    torch.manual_seed(1)
    x_adv = pgd(model, x, y, spec.train_eps, spec.train_step_size, spec.train_steps, last_iterate=True)

    def loss():
        model.eval()
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(model(x_adv), y).item()

    before = loss()
    for _ in range(3):
        iteration(model, optimizers, (x, y), None, spec)
    assert loss() < before


def test_the_balancing_loss_reaches_the_gates_and_only_robust_experts_models():
    x, y = _batch(0)
    gates = {}
    for coef in (0.0, 0.5):
        spec = _topk_spec(balancing_coef=coef, method="standard")
        torch.manual_seed(0)
        model = ex.model_for(spec.replace(base_width=8))
        iteration(model, make_optimizers(model, spec), (x, y), None, spec)
        gates[coef] = model.layers[3][1].router.fc.weight.detach().clone()
    assert not torch.equal(gates[0.0], gates[0.5])
    # the same step on an AdvMoE model is what it was: no balancing term (`balancing_losses` is None)
    from advmoe.models import balancing_losses
    moe = create_model("resnet18", "moe", 0.5, base_width=8)
    moe.train()
    moe(x)
    assert balancing_losses(moe) is None


def test_poly_schedule_is_constant_within_an_epoch_and_decays_with_power_0_9():
    from advmoe.train import schedule
    f = schedule(_topk_spec(schedule="poly", epochs=4), iterations_per_epoch=5)
    assert [f(i) for i in range(5)] == [1.0] * 5
    assert f(5) == pytest.approx(0.75 ** 0.9) and f(19) == pytest.approx(0.25 ** 0.9) and f(20) == 0.0
    assert schedule(_topk_spec(), 5)(10) < 1  # cosine by default


def test_the_new_spec_fields_keep_every_stored_hash():
    """Fields added for Robust Experts stay out of the hash at their defaults: every stored result's spec, read back
    from its metrics.json, hashes to the name of its folder."""
    from advmoe.data import REPO

    def rebuild(d):
        return ex.ExperimentSpec(**{**d, "parent": rebuild(d["parent"]) if d.get("parent") else None})

    stored = sorted((REPO / "results" / "cpu").glob("*/metrics.json"))
    assert len(stored) > 50
    for path in stored:
        spec = rebuild(json.loads(path.read_text())["spec"])
        assert path.parent.name.endswith("-" + spec.hash) and path.parent.name == f"{spec.name}-{spec.hash}", path
    changed = _topk_spec(balancing_coef=0.25)
    assert changed.hash != _topk_spec().hash and _topk_spec(gate="conv-gap").hash != _topk_spec().hash


@pytest.mark.parametrize("kw, needle", [
    (dict(method="at"), "kind 'block-moe' is trained by standard or pgd-at, not 'at'"),
    (dict(placement="layer9"), "unknown placement 'layer9' for block-moe"),
    (dict(top_k=5), "top_k must be an integer in [1, n_experts = 4]"),
    (dict(schedule="step"), "unknown schedule 'step'; allowed: cosine, poly"),
    (dict(balancing_coef=-1), "balancing_coef must be a number >= 0"),
])
def test_a_robust_experts_spec_with_bad_fields_fails_in_one_line(kw, needle):
    with pytest.raises(ValueError) as e:
        _topk_spec(**kw)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_a_robust_experts_model_trains_stores_and_reloads(tiny_data):
    spec = _topk_spec(epochs=2, train_subset=64, batch_size=16, test_subset=16, eval_steps=2, train_steps=2,
                      schedule="poly", base_width=8)
    m = ex.get(spec, progress=False)
    assert [h["lr"] for h in m["history"]] == pytest.approx([spec.lr * 0.5 ** 0.9, 0.0])
    model = ex.trained_model(spec)
    assert ex.state_sha256(model.state_dict()) == m["model_sha256"]


def _dual_spec(method="rt-er", kind="network-moe", **kw):
    return ex.ExperimentSpec(**{"preset": "smoke", "kind": kind, "method": method, "dataset": "cifar10",
                                "n_experts": 3, "base_width": 4, "lr": 0.05, "train_steps": 2,
                                "train_step_size": 4 / 255, **kw})


def test_rt_er_lowers_its_loss_and_robustifies_each_samples_second_ranked_expert(monkeypatch):
    from advmoe import train as T

    spec = _dual_spec()
    torch.manual_seed(0)
    model = ex.model_for(spec)
    with torch.no_grad():
        model.router.fc.weight.mul_(50)  # scores that differ, so the batch splits over experts
    optimizers = make_optimizers(model, spec)
    x, y = _batch(0)
    seen = []
    attacks = T._expert_attacks

    def spy(moe, x_, y_, assign, s):  # the experts RT-ER attacks: each sample's second choice, ranked on x at that step
        with torch.no_grad():
            top2 = moe.router(x_).topk(2, 1).indices
            seen.append((assign, top2[:, 1], top2[:, 0]))
        return attacks(moe, x_, y_, assign, s)

    monkeypatch.setattr(T, "_expert_attacks", spy)
    torch.manual_seed(1)
    x_adv = pgd(model, x, y, spec.train_eps, spec.train_step_size, spec.train_steps, last_iterate=True)
    experts = attacks(model, x, y, model.router(x).topk(2, 1).indices[:, 1], spec)

    def loss():
        model.train()
        with torch.no_grad():
            return T.robust_moe_loss(model, x, x_adv, y, experts, spec)[0].item()

    before = loss()
    for _ in range(3):
        iteration(model, optimizers, (x, y), None, spec)
    assert loss() < before
    assert len(seen) == 3 and len(set(seen[0][0].tolist())) > 1
    assert all(torch.equal(assign, second) and not (assign == first).any() for assign, second, first in seen)


def test_the_released_router_never_moves_and_ours_does(tiny_data):
    for trains in (True, False):
        spec = _dual_spec(method="standard", router_trains=trains, epochs=1, train_subset=64, batch_size=16,
                          test_subset=16, eval_steps=2)
        torch.manual_seed(spec.seed)
        initial = ex.model_for(spec).router.fc.weight.detach().clone()
        ex.get(spec, progress=False)
        assert torch.equal(ex.trained_model(spec).router.fc.weight, initial) != trains
    assert _dual_spec(router_trains=False).name.endswith("-n3-frozen-router-r1-rt-er-s0")


def test_jtdmoe_steps_the_robust_moe_then_the_standard_one_on_the_blend():
    spec = _dual_spec(method="jtdmoe", kind="dual-moe", n_experts=2, alpha=0.7)
    torch.manual_seed(0)
    model = ex.model_for(spec)
    optimizers = make_optimizers(model, spec)
    assert set(optimizers) == {"robust", "standard"}
    x, y = _batch(0)
    robust, standard = _snapshot(model.robust.parameters()), _snapshot(model.standard.parameters())
    robust_bn = [b.clone() for n, b in model.robust.named_buffers() if "running" in n]

    def blend_loss():
        model.eval()
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(model(x), y).item()

    before = blend_loss()
    for _ in range(3):
        iteration(model, optimizers, (x, y), None, spec)
    assert blend_loss() < before
    assert any(_changed(robust, model.robust.parameters())) and any(_changed(standard, model.standard.parameters()))
    # F_R's statistics move in its own (robust) step only: they did move
    assert any(not torch.equal(a, b) for a, b in zip(robust_bn, [b for n, b in model.robust.named_buffers()
                                                                  if "running" in n]))


def test_the_standard_step_of_jtdmoe_leaves_the_robust_moe_fixed_with_its_statistics():
    from advmoe.train import only_training

    spec = _dual_spec(method="jtdmoe", kind="dual-moe", n_experts=2)
    torch.manual_seed(0)
    model = ex.model_for(spec)
    x, y = _batch(0)
    robust = _snapshot(model.robust.parameters())
    robust_bn = [b.clone() for n, b in model.robust.named_buffers() if "running" in n]
    optimizer = make_optimizers(model, spec)["standard"]
    with only_training(model, list(model.standard.parameters()), fixed_statistics=True):
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    assert not any(_changed(robust, model.robust.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(robust_bn, [b for n, b in model.robust.named_buffers()
                                                              if "running" in n]))


@pytest.mark.parametrize("kw, needle", [
    (dict(method="rt-er", kind="dense", n_experts=2), "method 'rt-er' trains kind 'network-moe', not 'dense'"),
    (dict(method="at"), "kind 'network-moe' is trained by standard or pgd-at or rt-er, not 'at'"),
    (dict(method="jtdmoe", kind="dual-moe", alpha=-0.1), "alpha must be a number in [0, 1]"),
    (dict(method="jtdmoe", kind="dual-moe", n_experts=1), "needs n_experts >= 2"),
    (dict(router_trains="no"), "router_trains must be True or False"),
])
def test_a_dual_model_spec_with_bad_fields_fails_in_one_line(kw, needle):
    with pytest.raises(ValueError) as e:
        _dual_spec(**kw)
    assert needle in str(e.value) and "\n" not in str(e.value)
