"""The Robust Experts chapter (advmoe.robust) at the smoke preset: its specs, and the evaluation every model gets."""
import pytest

from advmoe import experiments as ex
from advmoe import robust
from advmoe.io import from_bits
from advmoe.worstcase import attacks


def test_chapter_specs_and_the_paper_preset():
    moe = robust.spec("cpu", "block-moe", placement="layer4.1", balancing="switch")
    assert (moe.n_experts, moe.top_k, moe.train_steps, moe.schedule, moe.lr) == (4, 1, 7, "poly", 0.1)
    dense = robust.spec("cpu", "dense")
    assert dense.name == "cifar10-jpeg-resnet18-dense-r1-pgd-at-s0"  # no MoE fields in a baseline's name
    paper = robust.spec("paper", "conv-moe", top_k=2)
    assert (paper.dataset, paper.base_width, paper.epochs, paper.lr, paper.batch_size) == ("cifar100", 64, 200, 0.01, 640)
    with pytest.raises(ValueError, match="dense, block-moe or conv-moe, not 'moe'"):
        robust.spec("cpu", "moe")


def test_collapse_measure():
    assert robust.collapse([5, 5, 5, 5]) == {"largest_share": 0.25, "entropy_bits": 2.0, "max_bits": 2.0}
    assert robust.collapse([20, 0, 0, 0])["entropy_bits"] == 0 and robust.collapse([20, 0, 0, 0])["largest_share"] == 1
    assert 0 < robust.collapse([10, 5, 3, 2])["entropy_bits"] < 2


def test_every_gate_is_attacked_through_each_of_its_experts():
    model = ex.model_for(robust.spec("smoke", "block-moe", placement="layer4"))
    names = [name for name, *_ in attacks(model)]
    assert [n for n in names if n.startswith("expert-")] == [f"expert-{e}@layers.3.{b}" for b in (0, 1) for e in range(4)]


def test_the_chapter_evaluation_of_a_trained_moe(smoke_results):
    spec = robust.spec("smoke", "block-moe", placement="layer4.1", balancing="switch")
    result = robust.evaluate(spec, progress=False)
    n = result["n_test"]
    assert 0 <= result["autopgd"]["ra"] <= 1 and len(from_bits(result["autopgd"]["correct"])) == n
    assert list(result["forced"]) == ["layers.3.1"] and list(result["forced"]["layers.3.1"]) == ["0", "1", "2", "3"]
    for e, r in result["forced"]["layers.3.1"].items():
        assert 0 <= r["ra"] <= r["sa"] <= 1, e  # the attack never raises accuracy
    usage = result["usage"]
    assert set(usage) == {"clean", "adversarial", "training"}
    assert sum(usage["clean"]["layers.3.1"]) == n and sum(usage["training"]["layers.3.1"]) == result["n_traffic"]
    assert robust.evaluate(spec, progress=False) == result  # stored and reused
    metrics = ex.load(spec)
    assert metrics["spec"]["method"] == "pgd-at" and len(metrics["history"]) == spec.epochs


def test_the_worst_case_runs_through_every_gate_of_a_top_k_model():
    import torch

    from advmoe.worstcase import worst_case

    torch.manual_seed(0)
    model = ex.model_for(robust.spec("smoke", "conv-moe", placement="layer4", top_k=2)).eval()
    x, y = torch.rand(6, 3, 32, 32), torch.arange(6)
    result = worst_case(model, x, y, 8 / 255, {"clean": torch.ones(6, dtype=torch.bool)})
    experts = [k for k in result["order"] if k.startswith("expert-")]
    assert len(experts) == 5 * 4 and "soft-apgd-ce" in result["order"]  # 5 gated convs x 4 experts
    assert result["ra_after_each"][result["order"][-1]] == result["ra_worst"] <= 1
    assert all(0 <= v <= 1 for v in result["expert_clean_accuracy"].values())


def test_a_unit_stores_the_model_and_every_evaluation_of_it(smoke_results):
    spec = robust.spec("smoke", "block-moe", placement="layer4.1", top_k=2, seed=1)
    robust.unit(spec, progress=False)
    stored = sorted(p.name.split("-")[0] for p in ex.result_dir(spec).glob("*.json"))
    assert stored == ["autoattack", "metrics.json", "robust", "worst"]
    assert len(robust.plan("cpu")) == 3 * len(robust.VERDICT_MODELS)
    assert [s.seed for s in robust.plan("cpu")[:len(robust.VERDICT_MODELS)]] == [0] * len(robust.VERDICT_MODELS)
    grid = robust.plan("cpu", grid=True)[len(robust.plan("cpu")):]
    assert len(grid) == len(robust.GRID_MODELS) and {s.seed for s in grid} == {0}
    assert len({s.hash for s in robust.plan("cpu", grid=True)}) == len(robust.plan("cpu", grid=True))  # no repeats
    assert {s.method for s in grid} == {"pgd-at", "standard"}
    assert robust.paper_of(grid[0]) == robust.paper_k(1)  # both layer4 blocks, L_ent, GAP-FC, k = 1: their T1 row



def test_records_tables_and_verdicts_at_the_smoke_preset(smoke_results):
    records = robust.records("smoke")
    assert len(records) == len(robust.VERDICT_MODELS) * 2  # smoke: 2 seeds
    table = robust.summary(records)
    assert list(table.model) == list(robust.VERDICT_MODELS) and (table.seeds == 2).all()
    assert table["RA-PGD %"][0].endswith("(16.9)")  # the authors' AT baseline beside ours
    experts = robust.experts(records)
    assert len(experts) == 4 * 2 * 4  # 4 MoE models x 2 seeds x 4 experts
    assert experts.groupby(["model", "seed"]).traffic.sum().round(6).eq(100).all()
    usage = robust.usage(records)
    assert set(usage.traffic) == {"clean", "adversarial", "training"} and usage.largest_share.between(0.25, 1).all()
    verdicts = robust.verdicts(records, "smoke")
    assert [v.claim[:2] for v in verdicts] == ["R1", "R1", "R2", "R3", "R4", "R5", "R6"]
    assert [v.claim for v in robust.verdicts(records, "smoke", only=("R4", "R5"))] == [v.claim for v in verdicts[4:6]]
    summary = robust.experts_summary(experts)
    assert len(summary) == 4 * 2 and (summary["best forced RA %"] >= summary["most-used: forced RA %"]).all()
    assert set(robust.usage_summary(usage).traffic) == {"clean", "adversarial", "training"}
    scores = robust.scores(records)
    assert len(scores) == len(records) * 4 and scores.value.between(0, 100).all()
    assert all(v.status in ("reproduced", "not reproduced", "inconclusive") for v in verdicts)
    assert "2 seeds" in verdicts[0].detail and verdicts[0].also.startswith("RA worst case")


def test_the_authors_numbers_are_looked_up_by_configuration():
    from advmoe import robust_paper

    assert robust_paper.value("dense", "pgd-at") == (52.14, 16.87, 17.99)
    assert robust_paper.value("block-moe", "pgd-at", "layer4", "switch", "gap-fc", 1) == (51.36, 22.69, 21.22)
    assert robust_paper.value("block-moe", "standard", "layer3.0", "entropy", "conv-gap", 1) == (68.59, 0.00, 2.26)
    assert robust_paper.value("conv-moe", "pgd-at", "layer4.1", "entropy", "gap-fc", 1) is None  # no such run
    assert len(robust_paper.GRID) == 2 + 2 * 32 + 2 * 20  # baselines, T1 (32 rows), T3 (20 rows), two trainings
    assert robust.paper("BlockMoE, layer4.1, k = 2") is None and robust.paper_k(2) == (53.34, 18.40, 20.38)
    grid = robust.authors_grid("pgd-at")
    assert len(grid) == 1 + 32 + 20 and grid.PGD.max() == 25.03  # ConvMoE, L_ent, GAP-FC, k = 1
    assert "200 epochs" in robust.describe("paper") and "200 test images" in robust.describe("cpu")


def test_the_grid_is_read_per_moe_layer_beside_the_authors_numbers(smoke_results, monkeypatch):
    grid_models = {label: robust.GRID_MODELS[label] for label in ("ConvMoE, layer4 (5 convs)",
                                                                  "Dense, standard training")}
    monkeypatch.setattr(robust, "GRID_MODELS", grid_models)
    grid = robust.grid_records("smoke")
    assert [(r["label"], r["seed"]) for r in grid] == [(label, 0) for label in grid_models]  # the first seed only
    usage = robust.usage(grid)
    assert usage.layer.nunique() == 5 and set(usage.model) == {"ConvMoE, layer4 (5 convs)"}  # one row per gate
    assert len(robust.usage_summary(usage)) == 5 * 3  # 5 gates x 3 kinds of traffic
    assert len(robust.experts_summary(robust.experts(grid))) == 5
    both = robust.versus_authors(grid)
    assert list(both.model) == list(grid_models) and list(both.training) == ["pgd-at", "standard"]
    assert both.their_pgd.tolist() == [robust.paper_of(r["spec"])[1] for r in grid]
    assert robust.plan("smoke", grid=True)[-len(grid_models):] == [r["spec"] for r in grid]
