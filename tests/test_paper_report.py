
import math

import pytest

from advmoe import experiments as ex, paper, report as R


@pytest.mark.parametrize("key,expected", [
    (("1", "cifar10", "resnet18", "at-dense", 1.0, "ra"), (50.13, 0.13)),
    (("1", "cifar10", "resnet18", "advmoe", 0.5, "sa"), (80.15, 0.11)),
    (("1", "cifar10", "wrn28-10", "advmoe", 0.5, "ra"), (55.73, 0.13)),
    (("1", "cifar10", "densenet", "at-moe", 0.5, "sa"), (64.41, 0.81)),
    (("1", "cifar100", "vgg16", "at-sparse", 0.5, "ra"), (21.12, 0.22)),
    (("1", "tiny-imagenet", "wrn28-10", "at-dense", 1.0, "gflops"), (21.0, None)),
    (("1", "imagenet", "resnet18", "at-moe", 0.5, "ra"), (35.57, 0.73)),
    (("2", "cifar10", "resnet18", "advmoe", 0.5, "ra_aa"), (45.13, 0.07)),
    (("2", "cifar100", "wrn28-10", "at-moe", 0.5, "ra_aa"), (17.87, 0.24)),
    (("2", "cifar100", "resnet18", "at-s-dense", 0.5, "sa"), (57.02, 0.14)),  # repeated from Table 1
    (("A1", "cifar10", "wrn28-10", "advmoe", 0.5, "ra_aa"), (46.73, 0.08)),
    (("A2", "cifar10", "resnet18", "advmoe", 0.2, "ra"), (49.18, 0.12)),
    (("A2", "cifar10", "wrn28-10", "at-moe", 0.8, "gflops"), (4.57, None)),
    (("fig1b", "cifar10", "resnet18", "st-moe", 0.5, "sa"), (94.3, None)),
])
def test_paper_values_spot_checked_against_the_text(key, expected):
    assert paper.PAPER[key] == expected


def test_paper_tables_are_complete():
    t1 = [k for k in paper.PAPER if k[0] == "1"]
    assert len(t1) == 12 * 5 * 3  # 12 (dataset, backbone) cells x 5 methods x (RA, SA, GFLOPs)
    assert len([k for k in paper.PAPER if k[0] == "2" and k[-1] == "ra_aa"]) == 20
    assert paper.value("cifar10-jpeg", "resnet18", "at-moe", 0.5, "ra") == (45.57, 0.51)
    assert paper.value("cifar10", "resnet18", "at-moe", 0.5, "nothing") is None
    assert paper.method_id("moe", "advmoe") == "advmoe" and paper.method_id("s-dense", "standard") == "st-s-dense"


def _m(ra, n=1000):
    return {"final": {"ra": ra, "sa": ra, "n_test": n}}


def test_verdict_needs_seeds_and_follows_the_numbers():
    one = R.verdict("a > b", [_m(0.50)], [_m(0.40)])  # a 10 pp gap, but one seed: never decided
    assert one.status == "inconclusive" and "one seed" in one.detail and one.threshold is None
    three = lambda xs, ys: R.verdict("a > b", [_m(x) for x in xs], [_m(y) for y in ys])
    assert three([0.50, 0.51, 0.49], [0.40, 0.41, 0.39]).status == "reproduced"
    assert three([0.40, 0.41, 0.39], [0.50, 0.51, 0.49]).status == "not reproduced"
    noisy = three([0.50, 0.40, 0.60], [0.45, 0.45, 0.45])  # +5 pp on average, but the seeds disagree
    assert noisy.status == "inconclusive" and noisy.threshold > 5
    assert f"{noisy.threshold - 5:.2f} pp short of the threshold" in noisy.detail  # says by how much it misses
    # the threshold is t(2) = 4.303 standard errors, not 2
    v = three([0.45, 0.46, 0.44], [0.44, 0.44, 0.44])
    assert v.gap == pytest.approx(1.0) and v.threshold == pytest.approx(4.303 * v.se)
    assert R.verdict("a > b", [], [_m(0.4)]).status == "not run"
    assert R.combine("all", [v, one]).status == "inconclusive"


def _bits(correct, n=1000):
    return "1" * correct + "0" * (n - correct)


def test_paired_test_set_error_is_smaller_when_two_models_agree_on_images():
    # the same 1,000 images: b gets right exactly the images a gets right, minus 20 of them
    a = [{"final": {"ra": 0.42, "n_test": 1000, "correct": {"pgd": _bits(420)}}} for _ in range(3)]
    b = [{"final": {"ra": 0.40, "n_test": 1000, "correct": {"pgd": _bits(400)}}} for _ in range(3)]
    se_paired, n, paired = R.test_set_se(a, b, "ra")
    se_indep, _, unpaired = R.test_set_se([_m(0.42)] * 3, [_m(0.40)] * 3, "ra")
    assert paired and not unpaired and n == 1000
    assert se_paired == pytest.approx(100 * (0.02 * 0.98 / 999) ** 0.5, rel=1e-6)  # sd of D_i in {0, 1} / sqrt(n)
    assert se_paired < se_indep / 2
    assert R.verdict("a > b", a, b).status == "reproduced"  # +2 pp on 1,000 images, decided only by pairing
    assert R.verdict("a > b", [_m(0.42)] * 3, [_m(0.40)] * 3).status == "inconclusive"


@pytest.mark.parametrize("kwargs,needle", [
    (dict(preset="huge", device="cpu", recompute=False), "preset must be one of smoke, cpu, paper"),
    (dict(preset="cpu", device="cuda", recompute=False), "no CUDA GPU"),
    (dict(preset="cpu", device="cpu", recompute="yes"), "recompute must be True or False"),
    (dict(preset="cpu", device="cpu", recompute=False, eps_grid=[]), "eps_grid must be a non-empty list"),
    (dict(preset="cpu", device="cpu", recompute=False, eps_grid=[2, "8"]), "eps_grid must hold numbers in [0, 255]"),
    (dict(preset="cpu", device="cpu", recompute=False, eps_grid=[300]), "eps_grid must hold numbers in [0, 255]"),
    (dict(preset=3, device="cpu", recompute=False), "preset must be one of"),
    (dict(preset="cpu", device="cpu", recompute=False, scale_grid=[0.5, 1.2]), "scale_grid must hold model scales r in (0, 1]"),
    (dict(preset="cpu", device="cpu", recompute=False, scale_grid=[0.0]), "scale_grid must hold model scales r in (0, 1]"),
    (dict(preset="cpu", device="cpu", recompute=False, experts_grid=[2, 0]), "experts_grid must hold expert numbers N"),
    (dict(preset="cpu", device="cpu", recompute=False, experts_grid=[2.5]), "experts_grid must hold expert numbers N"),
    (dict(preset="cpu", device="cpu", recompute=False, experts_grid=()), "experts_grid must be a non-empty list"),
    (dict(preset="cpu", device="tpu", recompute=False), "unknown device 'tpu'"),
    (dict(preset="cpu", device="cpu", recompute=False, names={"preset": "cpu", "steps": 3, "np": object()}),
     "unknown parameter(s) steps; this notebook takes: device, preset, recompute"),
])
def test_notebook_parameters_are_validated(kwargs, needle, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(ValueError) as e:
        R.check_params(**kwargs)
    assert needle in str(e.value)


def test_every_preset_shows_every_table1_cell_and_says_what_it_does_not_compute():
    cells = R.cells("paper")
    assert len(cells) == 12 and ("imagenet", "wrn28-10") in cells
    assert R.cells("cpu")[0] == ("cifar10-jpeg", "resnet18") and len(R.cells("cpu")) == 12
    assert R.cells("paper", table="2") == [("cifar10", "resnet18"), ("cifar10", "wrn28-10"),
                                          ("cifar100", "resnet18"), ("cifar100", "wrn28-10")]
    assert all(R.runnable(d, b, "paper") is None for d, b in cells)  # the paper preset computes every cell
    assert R.runnable("cifar10-jpeg", "resnet18", "cpu") is None
    why = R.runnable("cifar100", "densenet", "cpu")
    assert "no data on this machine" in why and "advmoe run --preset paper --dataset cifar100 --backbone densenet" in why
    # our GFLOPs at the paper's widths for every cell, on its images: Tiny-ImageNet's 64 px, ImageNet's 224 px
    assert R.paper_width_gflops("wrn28-10", "dense", 1.0, "tiny-imagenet") == pytest.approx(21.0, rel=0.01)
    assert R.paper_width_gflops("resnet18", "s-dense", 0.5, "imagenet") == pytest.approx(0.48, rel=0.01)


def test_claims_ledger_references_real_verdicts():
    """Every (page, claim prefix) of the ledger names a page of the book and matches a verdict that page stored
    when it was executed at the cpu preset (the committed results)."""
    from advmoe.book import PAGES
    pages = {p.split("/")[-1][:-6] for p in PAGES if p.startswith("notebooks/")}
    from advmoe.data import REPO
    from advmoe.ledger import PAPERS
    stored = R.load_verdicts("cpu", REPO / "results")
    for claim in [c for p in PAPERS for c in p["claims"]]:
        for nb, prefix, *_ in claim["covered_by"]:
            assert nb in pages, (claim["id"], nb)
            assert any(v["claim"].startswith(prefix) for v in stored[nb]["verdicts"]), (claim["id"], prefix)


@pytest.mark.parametrize("notebook, params, needle", [
    ("notebooks/tab1_overall.ipynb", {"preset": "huge"}, "preset must be one of smoke, cpu, paper"),
    ("notebooks/tab2_autoattack.ipynb", {"recompute": "no"}, "recompute must be True or False"),
    ("notebooks/audit_robustness.ipynb", {"eps": 0.1}, "unknown parameter(s) eps"),
    ("notebooks/fig2_at_vs_eps.ipynb", {"eps_grid": [-1]}, "eps_grid must hold numbers in [0, 255]"),
    ("notebooks/fig3_router_only.ipynb", {"scale_grid": [0.5, 0]}, "scale_grid must hold model scales r in (0, 1]"),
    ("notebooks/fig3_router_only.ipynb", {"preset": "huge"}, "preset must be one of smoke, cpu, paper"),
    ("notebooks/re_grid.ipynb", {"preset": "huge"}, "preset must be one of smoke, cpu, paper"),
    ("notebooks/re_experts.ipynb", {"k": 3}, "unknown parameter(s) k"),
    ("notebooks/fig6_pathway_iou.ipynb", {"steps": 3}, "unknown parameter(s) steps"),
    ("notebooks/fig7_experts_vs_scale.ipynb", {"experts_grid": [0, 2]}, "experts_grid must hold expert numbers N"),
    ("notebooks/fig7_experts_vs_scale.ipynb", {"scale_grid": []}, "scale_grid must be a non-empty list"),
    ("notebooks/fig7_experts_vs_scale.ipynb", {"scale_grid": [0.5, 1.5]}, "scale_grid must hold model scales r in (0, 1]"),
    ("notebooks/fig8_tabA2_model_scale.ipynb", {"scale_grid": ["a"]}, "scale_grid must hold model scales r in (0, 1]"),
    ("notebooks/tabA1_train_steps.ipynb", {"device": 0}, "device must be a string (cpu, cuda, cuda:N, auto)"),
])
def test_a_notebook_with_bad_parameters_stops_in_its_first_code_cell(notebook, params, needle, tmp_path):
    import nbformat
    import papermill as pm

    from advmoe.data import REPO

    out = tmp_path / "out.ipynb"
    with pytest.raises(pm.PapermillExecutionError) as e:
        pm.execute_notebook(str(REPO / notebook), str(out), parameters=params, cwd=str(REPO / "notebooks"),
                            progress_bar=False, kernel_name="python3")
    assert needle in str(e.value)
    cells = nbformat.read(out, 4).cells
    failed = [i for i, c in enumerate(cells) if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    first_code = next(i for i, c in enumerate(cells) if c.cell_type == "code"
                      and not {"parameters", "injected-parameters"} & set(c.metadata.get("tags", [])))
    assert failed == [first_code]


def test_page_specs_follow_the_preset_seeds_or_the_given_ones():
    default = R.page_specs("cpu")
    assert {s.seed for s in default} == set(R.ex.preset_seeds("cpu"))
    first = R.page_specs("cpu", (0,))
    extra = R.page_specs("cpu", (1, 2))
    assert {s.seed for s in extra} == {1, 2} and len(extra) == 2 * len(first) and len(default) == 3 * len(first)
    model = lambda s: (s.kind, s.method, s.scale)
    assert sorted(model(s) for s in extra if s.seed == 1) == sorted(model(s) for s in first)  # same models
    chain = lambda s: [s] + chain(s.parent) if s.parent else [s]
    assert all({p.seed for p in chain(s)} == {s.seed} for s in extra)  # a chain's parents have the child's seed


def test_section4_models_chain_as_the_paper_describes():
    specs = R.sec4_specs("cpu", 0.5)
    m1, bar, barbar, m3 = specs["M1"], specs["theta-bar"], specs["theta-bar-bar"], specs["M3"]
    assert (m1.kind, m1.method, m1.parent) == ("moe", "standard", None)
    assert (bar.method, bar.parent) == ("at-routers", m1) and (barbar.method, barbar.parent) == ("at-backbone", bar)
    assert (m3.kind, m3.method, m3.parent.kind, m3.parent.method) == ("sparse", "hydra-mask", "dense", "standard")
    assert specs["M2"] == R.ex.make_spec("cpu", "s-dense", "at", 0.5)  # the Table-1 model itself, stored once
    assert len({s.hash for s in specs.values()}) == 5


def _curves(ra_by_seed: dict[int, list[float]], n: int = 10_000):
    records = [dict(label="AdvMoE", seed=seed, metrics={
        "final": {"n_test": n},
        "history": [{"epoch": e + 1, "train_loss": 2.0 - 0.1 * e, "test_sa": 0.5, "test_ra_tracked": ra / 100,
                     "tracked": {"n": n, "steps": 10}} for e, ra in enumerate(ras)]})
        for seed, ras in ra_by_seed.items()]
    return R.trajectories(records)


def test_trajectories_hold_one_row_per_model_seed_and_epoch_in_percent():
    df = _curves({0: [10, 20, 30, 40], 1: [11, 21, 31, 41]})
    assert len(df) == 8 and set(df.seed) == {0, 1}
    assert df[(df.seed == 1) & (df.epoch == 4)].ra.item() == pytest.approx(41)
    assert (df.sa == 50).all() and (df.n_ra == 10_000).all()


def test_plateau_verdict_is_an_equivalence_test_on_the_last_quarter():
    claim = "AdvMoE's RA (tracked) has plateaued"
    # test-set term unpaired (an upper bound), so only a huge test set lets 3 seeds show a plateau inside +-2 pp
    flat = _curves({s: [10, 30, 40, 40 + 0.1 * s, 40, 40, 40, 40.2 - 0.1 * s] for s in range(3)}, n=1_000_000)
    v = R.plateau_verdict(claim, "AdvMoE", flat, "ra", "cpu")
    assert v.status == "reproduced" and "epochs 6 -> 8" in v.detail
    rising = _curves({s: [10, 20, 30, 40, 50, 60, 70, 80 + s] for s in range(3)}, n=1_000_000)
    assert R.plateau_verdict(claim, "AdvMoE", rising, "ra", "cpu").status == "not reproduced"
    falling = _curves({s: [10, 20, 30, 40, 50, 60, 50, 40 + s] for s in range(3)}, n=1_000_000)
    assert R.plateau_verdict(claim, "AdvMoE", falling, "ra", "cpu").status == "not reproduced"
    small_subset = _curves({s: [10, 30, 40, 40, 40, 40, 40, 40] for s in range(3)}, n=200)  # test-set SE 4.9 pp
    assert R.plateau_verdict(claim, "AdvMoE", small_subset, "ra", "cpu").status == "inconclusive"
    one_seed = _curves({0: [10, 30, 40, 40, 40, 40, 40, 40]})
    assert "one seed" in R.plateau_verdict(claim, "AdvMoE", one_seed, "ra", "cpu").detail
    assert R.plateau_verdict(claim, "AT (MoE)", flat, "ra", "cpu").status == "not run"


def test_at_sparse_is_a_table1_row_built_as_hydras_chain():
    specs = {s.name: s for s in R.ex.table1("cpu", (0,))}
    sparse = next(s for s in specs.values() if s.method == "hydra-finetune")
    assert sparse == R.ex.hydra_chain("cpu", 0.5, seed=0) and sparse.kind == "s-dense"
    assert sparse.parent.parent in specs.values()  # its Dense parent is the AT (Dense) row itself
    assert R.paper.method_id(sparse.kind, sparse.method) == "at-sparse"
    assert R.paper.value("cifar10-jpeg", "resnet18", "at-sparse", 0.5, "ra") == (47.93, 0.17)
    assert sparse in R.page_specs("cpu", (0,)) and "AT (Sparse)" not in {r[0] for r in R.FIG1B}  # as the paper's Fig. 1b
    assert sparse.with_seed(2) == R.ex.hydra_chain("cpu", 0.5, seed=2)  # the whole chain changes seed


def test_compute_seconds_count_a_chain_parent_once(tmp_path):
    from advmoe.io import atomic_write_json

    sparse = R.ex.hydra_chain("smoke", 0.5, seed=0)
    for spec, seconds in ((sparse, 10.0), (sparse.parent, 20.0), (sparse.parent.parent, 30.0)):
        atomic_write_json({"hash": spec.hash, "spec": R.ex.dataclasses.asdict(spec),
                           "provenance": {"train_seconds_total": seconds, "eval_seconds": 1.0, "git_commit": "abc"}},
                          R.ex.result_dir(spec, tmp_path) / "metrics.json")
    rows = R.compute_seconds("smoke", (0,), tmp_path)
    assert sorted(r["seconds"] for r in rows) == [11.0, 21.0, 31.0]  # the mask stage counted, AT (Dense) once
    every = R.stored_compute("smoke", tmp_path)  # every stored result, whichever page reads it
    assert sorted(r["seconds"] for r in every) == [11.0, 21.0, 31.0]
    assert {r["method"] for r in every} == {"at", "hydra-mask", "hydra-finetune"}


def test_compute_note_counts_models_by_hash_not_name(tmp_path):
    """The beta ablation's models share one name (the name omits beta): each is its own model in the note."""
    from advmoe.io import atomic_write_json

    specs = [R.ex.make_spec("smoke", "moe", "advmoe", 0.5, seed=0, **extra) for extra in ({}, dict(beta=3.0))]
    assert specs[0].name == specs[1].name and specs[0].hash != specs[1].hash
    for spec, seconds in zip(specs, (60.0, 120.0)):
        atomic_write_json({"hash": spec.hash, "spec": R.ex.dataclasses.asdict(spec),
                           "provenance": {"train_seconds_total": seconds, "eval_seconds": 0.0, "git_commit": "abc"}},
                          R.ex.result_dir(spec, tmp_path) / "metrics.json")
    note = R.compute_note([{"spec": s} for s in specs], "smoke", tmp_path)
    assert "3 worker-minutes over 2 models" in note


def test_label_names_every_page_model_and_falls_back_to_the_spec_name():
    assert R.label(R.ex.hydra_chain("cpu", 0.5, seed=2)) == "AT (Sparse)"
    assert R.label(R.ex.make_spec("cpu", "moe", "standard", 0.5, seed=1)) == "ST (MoE)"
    odd = R.ex.make_spec("cpu", "moe", "advmoe", 0.8)
    assert R.label(odd) == odd.name


def test_a_row_not_run_still_shows_its_gflops_and_cut():
    """GFLOPs are the architecture's: a row this preset does not train (Table A1's AT (Dense) at cpu) still shows
    them, and the cut against it; a cell this code cannot run (a backbone we do not build) shows none."""
    row = lambda label, kind, scale, backbone="resnet18": dict(dataset="cifar10", backbone=backbone, label=label,
                                                               kind=kind, method="at", scale=scale, seed=None,
                                                               metrics=None, why="not run at this preset")
    df = R.summary([row("AT (Dense)", "dense", 1.0), row("AT (S-Dense)", "s-dense", 0.5),
                    row("AT (Dense)", "dense", 1.0, "vit")], table="A1")
    dense, small, vit = df.gflops_ours_paper_width
    assert small / dense == pytest.approx(0.25, rel=0.02) and math.isnan(vit)
    shown = R.display_table(df).data
    assert list(shown["cut"]) == ["0%", "75%", "-"] and list(shown["note"]) == ["not run at this preset"] * 3


def test_a_row_autoattack_warned_about_is_never_badged_as_plainly_passing(monkeypatch):
    from advmoe import audit

    specs = [ex.row_spec("cpu", "moe", "advmoe", 0.5, seed=s) for s in (0, 1, 2)]
    clean = {"checks": audit.checks({**_sound_audit(), "autoattack": None})}
    monkeypatch.setattr(audit, "stored", lambda spec, root=None: clean)
    monkeypatch.setattr(ex, "stored_autoattack", lambda spec, root=None: {"warnings": []})
    assert R.audit_badge(specs) == "passes all checks"
    said = ["Square Attack has decreased the robust accuracy of 1.00%."]
    monkeypatch.setattr(ex, "stored_autoattack", lambda spec, root=None: {"warnings": said if spec.seed else []})
    assert R.audit_badge(specs) == "⚠ passes; AutoAttack warned (seeds 1, 2)"
    monkeypatch.setattr(audit, "stored", lambda spec, root=None: None)
    assert R.audit_badge(specs) == "not audited"


def _sound_audit() -> dict:
    return {"n": 500, "steps": [10, 20], "eval_steps": 20, "large_eps": 64 / 255, "square_queries": 1000,
            "zero_gradient_examples": 0, "nonfinite_gradient_examples": 0,
            "ra": {"clean": 0.4, "eps0": 0.4, "pgd-10": 0.25, "pgd-20": 0.24, "large-eps": 0.0, "square": 0.3,
                   "worst-case (f)": 0.24}}


def test_the_audit_note_separates_failures_from_autoattacks_warnings():
    import pandas as pd

    plain = pd.DataFrame({"method": ["AT (Dense)"], "audit": ["passes all checks"]})
    assert R.audit_note(plain).startswith("Every model on this page passes")
    mixed = pd.DataFrame({"method": ["A", "B", "C"],
                          "audit": ["⚠ fails (c)", "⚠ passes; AutoAttack warned (seed 2)", "passes all checks"]})
    note = R.audit_note(mixed)
    assert "Audit failures: A ⚠ fails (c). Their PGD robust accuracy overstates" in note
    assert "may be unreliable for: B ⚠ passes; AutoAttack warned (seed 2). Their PGD robust accuracy may overstate" in note
    assert "C " not in note
