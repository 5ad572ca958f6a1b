"""Fig. 7, Fig. 8 / Table A2 and Table A1 (advmoe.scale) at the smoke preset: grids, seeds per point, verdicts."""

import pytest

from advmoe import experiments as ex
from advmoe import scale

STATUSES = {"reproduced", "not reproduced", "inconclusive"}


def test_regimes_follow_the_papers_reading_of_fig7():
    assert scale.regime(2, 0.5) == scale.regime(5, 0.9) == "effective"
    assert scale.regime(8, 0.2) == scale.regime(10, 0.4) == "ineffective"
    assert scale.regime(8, 0.5) is None and scale.regime(2, 0.2) is None and scale.regime(5, 0.95) is None
    for preset, points in scale.VERDICT_POINTS.items():
        experts, scales = scale.GRIDS[preset]
        assert all(n in experts and r in scales and scale.regime(n, r) for n, r in points)
        assert {scale.regime(n, r) for n, r in points} == {"effective", "ineffective"}  # both regimes decided
    assert scale.point_seeds("cpu", 2, 0.5) == ex.preset_seeds("cpu") and scale.point_seeds("cpu", 5, 0.2) == (0,)


def test_fig7_decides_both_regimes_from_the_verdict_points(smoke_results):
    experts, scales = scale.GRIDS["smoke"]
    df, verdicts, records = scale.fig7("smoke", "cpu", False, experts, scales)
    advmoe = df[df.model == "AdvMoE"]
    assert len(advmoe) == 2 * 2 + 2 * 1 and set(advmoe.n) == set(experts)  # verdict points: both seeds
    assert len(df[df.model == "AT (Dense)"]) == len(ex.preset_seeds("smoke"))
    assert [v.claim for v in verdicts[-2:]] == ["AdvMoE beats AT (Dense) where N < 8 and r in [0.5, 0.9]",
                                                "AdvMoE falls behind AT (Dense) where N >= 8 and r < 0.5"]
    assert len(verdicts) == 4 and {v.status for v in verdicts} <= STATUSES
    n8 = next(r for r in records if r["label"] == "AdvMoE N=8 r=0.2")
    assert n8["spec"].n_experts == 8 and len(n8["metrics"]["final"]["routing"]["clean"]["layers.0.0.conv1"]) == 8


def test_fig8_compares_same_r_baselines_and_the_growth_of_the_gain(smoke_results):
    records, verdicts = scale.fig8("smoke", "cpu", False, [0.2, 0.5])
    assert {(r["label"], r["scale"]) for r in records} >= {("AT (Sparse)", 0.2), ("AdvMoE", 0.5), ("AT (Dense)", 1.0)}
    sparse = next(r["spec"] for r in records if r["label"] == "AT (Sparse)" and r["scale"] == 0.2)
    assert sparse == ex.hydra_chain("smoke", 0.2, seed=0)
    claims = [v.claim for v in verdicts]
    assert "AdvMoE beats every same-r baseline at r = 0.2" in claims and claims[-1].startswith("AdvMoE's gain")
    assert {v.status for v in verdicts} <= STATUSES


def test_fig8_decides_only_the_scales_with_every_seed(smoke_results, monkeypatch):
    monkeypatch.setitem(scale.FIG8_VERDICT_SCALES, "smoke", [0.5])
    assert scale.fig8_seeds("smoke", 0.2) == (0,) and scale.fig8_seeds("smoke", 0.5) == ex.preset_seeds("smoke")
    records, verdicts = scale.fig8("smoke", "cpu", False, [0.2, 0.5])
    assert {r["seed"] for r in records if r["scale"] == 0.2} == {0}
    assert all("r = 0.2" not in v.claim for v in verdicts) and not any("grows" in v.claim for v in verdicts)


def test_table_a1_trains_the_rows_with_the_10_step_attack(smoke_results):
    records, verdicts = scale.table_a1("smoke", "cpu", False)
    run = [r for r in records if r["metrics"] is not None]
    assert {r["label"] for r in run} == {row[0] for row in ex.TABLE1}
    assert all(r["spec"].train_steps == 10 and r["metrics"]["final"]["n_ra_worst"] > 0 for r in run)
    sparse = next(r["spec"] for r in run if r["label"] == "AT (Sparse)")
    assert sparse.parent.train_steps == sparse.parent.parent.train_steps == 10  # both HYDRA stages, and its Dense
    assert verdicts[-1].claim == "With a 10-step training attack AdvMoE beats every baseline"
    assert len(verdicts) == len(ex.TABLE1) and {v.status for v in verdicts} <= STATUSES


def test_cpu_plan_sizes_the_grid_and_lists_each_model_once():
    plan = scale.plan("cpu")
    specs = [s for _, s in plan]
    assert len({s.hash for s in specs}) == len(specs)
    pages = {page for page, _ in plan}
    assert pages == {"fig7", "fig8", "tabA1"}
    at = lambda page, **kw: [s for p, s in plan if p == page and all(getattr(s, k) == v for k, v in kw.items())]
    assert len(at("fig7", n_experts=10, scale=0.2)) == 3 and len(at("fig7", n_experts=5, scale=0.8)) == 1
    assert len(at("fig8", method="at", kind="moe", scale=0.2)) == 3
    assert len(at("fig8", method="at", kind="moe", scale=0.8)) == 1  # plotted only
    tab = at("tabA1")
    assert {(s.kind, s.method) for s in tab} == {("moe", "at"), ("moe", "advmoe")} and len(tab) == 6
    assert all(s.train_steps == 10 for s in tab)
    only8 = scale.plan("cpu", pages=("fig8",))
    assert {p for p, _ in only8} == {"fig8"} and ex.row_spec("cpu", "moe", "advmoe", 0.2, seed=0) in [s for _, s in only8]
