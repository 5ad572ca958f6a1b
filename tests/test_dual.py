"""The dual-model chapter (advmoe.dual): its presets and specs, the alpha sweep's pieces, the certified-radius verdict,
and its models and evaluations at the smoke preset."""
import pytest
import torch

from advmoe import dual
from advmoe import experiments as ex
from advmoe.io import from_bits
from advmoe.models import DualModel
from advmoe.train import cyclic


def test_the_presets_follow_the_paper_where_it_is_known():
    paper = dual.model_spec("paper", "RT-ER MoE")
    assert (paper.dataset, paper.n_experts, paper.epochs, paper.batch_size, paper.optimizer, paper.lr,
            paper.schedule, paper.train_steps, paper.eval_steps, paper.beta) == \
        ("cifar10", 4, 130, 512, "adam", 1e-4, "cyclic", 10, 50, 6.0)
    cpu = dual.model_spec("cpu", "JTDMoE", seed=2)
    assert (cpu.kind, cpu.method, cpu.alpha, cpu.base_width, cpu.seed) == ("dual-moe", "jtdmoe", 0.7, 16, 2)
    frozen = dual.model_spec("cpu", "RT-ER MoE, frozen router (released)")
    assert not frozen.router_trains and frozen.name.endswith("-n4-frozen-router-r1-rt-er-s0")
    assert dual.model_spec("cpu", "RT-ER MoE, beta = 3").hash != dual.model_spec("cpu", "RT-ER MoE").hash
    with pytest.raises(ValueError, match="network-moe or dual-moe, not 'moe'"):
        dual.spec("cpu", "moe")
    with pytest.raises(ValueError, match="has no preset 'tpu'"):
        dual.settings("tpu")


def test_the_sgd_specs_keep_their_hash_and_the_cyclic_schedule_is_the_released_one():
    spec = ex.make_spec("cpu", "moe", "at", 0.5)
    assert spec.hash == spec.replace(optimizer="sgd").hash != spec.replace(optimizer="adam").hash
    factor = cyclic()
    assert [factor(i) for i in (0, 250, 500, 750, 1000, 1500)] == [0.5, 0.75, 1.0, 0.75, 0.5, 1.0]
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        spec.replace(optimizer="rmsprop")


def test_the_plan_trains_each_standard_moe_before_the_pair_that_reads_it():
    plan = dual.plan("cpu")
    seeds = ex.preset_seeds("cpu")
    assert [s.method for s in plan[:len(seeds)]] == ["standard"] * len(seeds)
    assert len(plan) == len(seeds) * len(dual.MODELS) + len(dual.ABLATIONS) == len({s.hash for s in plan})
    assert {s.seed for s in plan[-len(dual.ABLATIONS):]} == {0}
    assert len(dual.plan("cpu", ablations=False)) == len(seeds) * len(dual.MODELS)


def test_the_book_reads_only_the_stored_cpu_seeds_and_names_the_rest():
    seeds = dual.book_seeds("cpu")
    assert dual.book_seeds("smoke") == ex.preset_seeds("smoke") and dual.book_plan("smoke") == dual.plan("smoke")
    for spec in dual.book_plan("cpu"):  # stored, with the chapter's evaluation: CI executes the pages at cpu
        evaluations = {p.name.split("-")[2] for p in ex.result_dir(spec).glob("dual-model-*.json")}
        wanted = {"joint"} if spec.kind == "dual-moe" else (
            {"components", "pair"} if spec == dual.model_spec("cpu", dual.PAIR[1], spec.seed) else {"components"})
        assert (ex.result_dir(spec) / "metrics.json").is_file() and wanted <= evaluations, spec.name
    assert {s.seed for s in dual.book_plan("cpu")} == set(seeds)
    missing = [s for s in ex.preset_seeds("cpu") if s not in seeds]
    note = dual.pending("cpu")
    assert (note == "") == (not missing and dual.book_ablations("cpu"))
    assert all(f"{s}" in note for s in missing) and ("--more" in note or not note)
    assert note in dual.describe("cpu")


def test_the_routing_note_says_when_every_router_collapsed_onto_one_expert():
    record = lambda routing: {"label": "ST MoE", "seed": 0, "chapter": {"routing": routing}}
    collapsed = dual.routing_note([record([1000, 0, 0, 0]), record([0, 995, 5, 0])])
    assert "ST MoE seed 0: [1000, 0, 0, 0]" in collapsed and "at least 99.5% of them to a single expert" in collapsed
    assert "sends every one of them to a single expert" in dual.routing_note([record([0, 0, 12, 0])])
    spread = dual.routing_note([record([1000, 0, 0, 0]), record([400, 300, 200, 100])])
    assert "[400, 300, 200, 100]" in spread and "collapsed" not in spread
    assert dual.routing_note([{"label": "JTDMoE", "seed": 0}]) == ""
    assert "Read D1 with care" in dual.routing_note([record([1000, 0, 0, 0])], short=True)
    assert dual.routing_note([record([400, 300, 200, 100])], short=True) == ""


def test_the_blend_at_the_end_points_is_one_moe():
    torch.manual_seed(0)
    spec = dual.model_spec("smoke", "JTDMoE")
    model = ex.model_for(spec).eval()
    assert dual.blend(model, 0.0) is model.standard and dual.blend(model, 1.0) is model.robust
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        mixed = dual.blend(model, 0.3)(x)
        assert torch.allclose(mixed, 0.7 * model.standard(x) + 0.3 * model.robust(x), atol=1e-5)


def test_certified_fractions_count_the_radii_at_or_above_each_eps():
    radius = torch.tensor([0.0, 1 / 255, 3 / 255, 9 / 255])
    out = dual.certified(radius)
    assert out["fraction"] == {"0.5/255": 0.75, "1/255": 0.75, "2/255": 0.5, "4/255": 0.25, "8/255": 0.25}
    assert out["correct_8"] == "0001" and out["max"] == pytest.approx(9 / 255)


def _cert(fraction8, largest):
    return {"fraction": {"8/255": fraction8}, "max": largest}


@pytest.mark.parametrize("fractions, largest, status", [
    ((0.0, 0.0), 1e-6, "not reproduced"), ((0.1, 0.2), 0.1, "reproduced"), ((0.0, 0.2), 0.1, "inconclusive"),
    ((0.0, 0.0), 0.05, "inconclusive")])
def test_the_certified_verdict_reads_every_seed(fractions, largest, status):
    records = [dict(label="RT-ER MoE", seed=s, chapter={"certified": _cert(f, largest)}) for s, f in enumerate(fractions)]
    v = dual.certified_verdict(records, "cpu")
    assert v.status == status and v.claim.startswith("D5:")


def test_tiny_imagenet_at_the_paper_preset_fails_in_one_line():
    with pytest.raises(ValueError) as e:
        dual.tiny_imagenet("paper")
    assert "\n" not in str(e.value) and "vit_small_patch16_224" in str(e.value)
    cost = dual.tiny_imagenet("cpu")  # from the stored measurement of benchmarks/dual_cost.py
    assert cost["factor"] == 40 and cost["per_seed_hours"] > 0
    assert "worker-hours per seed" in dual.tiny_imagenet_note("cpu")


def test_units_records_and_verdicts_at_the_smoke_preset(smoke_results):
    dual.precompute("smoke", progress=False, specs=dual.plan("smoke", ablations=False))
    records = dual.records("smoke")
    assert [r["label"] for r in records] == [label for label in dual.MODELS for _ in (0, 1)]
    rt_er = next(r for r in records if r["label"] == "RT-ER MoE")
    n = rt_er["chapter"]["n_test"]
    parts = rt_er["chapter"]["components"]
    assert {len(from_bits(parts[t]["correct"])) for t in ("experts", "router")} == {n}
    assert sum(rt_er["chapter"]["routing"]) == n and rt_er["chapter"]["router_change"] > 0
    points = rt_er["sweep"]["points"]
    assert [p["alpha"] for p in points] == list(dual.ALPHAS)
    for p in points:
        assert 0 <= p["ra_worst"] <= 1 and p["ra"] <= p["sa"] + 1e-9  # an attack never raises accuracy
        assert "soft-apgd-t" not in p["broken_by_each"]
    _, x, y = dual._test(rt_er["spec"], "cpu", dual.settings("smoke")["n_sweep"])
    for point, spec in ((points[0], rt_er["spec"].replace(method="standard")), (points[-1], rt_er["spec"])):
        with torch.no_grad():  # the end points are the pair's two MoEs alone
            right = ex.load_model(spec)(x).argmax(1) == y
        assert torch.equal(from_bits(point["correct"]["clean"]), right)
    stored = sorted(p.name.split("-")[0] + "-" + p.name.split("-")[2] for p in
                    ex.result_dir(rt_er["spec"]).glob("dual-model-*.json"))
    assert stored == ["dual-components", "dual-pair"]
    verdicts = dual.verdicts(records, "smoke")
    assert [v.claim[:2] for v in verdicts] == ["D1", "D1", "D2", "D3", "D3", "D3", "D3", "D4", "D4", "D5"]
    assert [v.claim for v in dual.verdicts(records, "smoke", only=("D4",))] == [v.claim for v in verdicts[7:9]]
    curves = dual.curves(records)
    assert len(curves) == 2 * 2 * len(dual.ALPHAS) * 4 and curves.value.between(0, 100).all()
    same = curves.pivot_table(index=["model", "seed", "alpha"], columns="metric", values="value")
    assert (same["RA worst case"] <= same["RA-PGD (worst-case images)"] + 1e-9).all()  # PGD is one of its attacks
    table = dual.summary(dual.components(records))
    assert list(table.model) == ["ST MoE", "AT MoE", "RT-ER MoE"] and table["RA-E %"][2].endswith("(75.7)")
    cert = dual.certified_table(records)
    assert set(cert.eps) == {0.5, 1, 2, 4, 8} and cert.certified.between(0, 100).all()
    note = dual.certified_note(records)  # smoke models certify nothing: the page says so, with the numbers
    assert note.startswith("The bound is vacuous here") if (cert.certified == 0).all() else "% at 8/255" in note


def test_the_frozen_router_ablation_keeps_its_router_weights(smoke_results):
    spec = dual.model_spec("smoke", "RT-ER MoE, frozen router (released)")
    result = dual.evaluate(spec, progress=False)
    assert result["router_change"] == 0.0
    with pytest.raises(ValueError, match="evaluated by `sweep`"):
        dual.evaluate(dual.model_spec("smoke", "JTDMoE"), progress=False)
