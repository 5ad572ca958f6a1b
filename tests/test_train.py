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
