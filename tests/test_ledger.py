"""The claims ledger (advmoe.ledger): claims combine their pages' stored verdicts, the dashboard shows our numbers
beside the paper's with the gap against its threshold, and the landing page counts exactly what the ledger shows."""
import json

from advmoe import ledger, paper
from advmoe import report as R

CLAIMS = [dict(id="C1", source="Table 1", text="A beats B and C.",
               covered_by=[("tab1_overall", "A RA > B RA", "51.8% vs 45.6%"), ("tab1_overall", "A RA > C RA")]),
          dict(id="C2", source="Fig. 2", text="D beats E.", covered_by=[("fig2_at_vs_eps", "D RA > E RA")]),
          dict(id="C3", source="Fig. 9", text="Not tested.", covered_by=[])]


def _store(root, preset, notebook, verdicts):
    folder = root / preset / "verdicts"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{notebook}.json").write_text(json.dumps({"notebook": notebook, "verdicts": [v.__dict__ for v in verdicts]}))


def _verdict(claim, a, b, seeds=3, spread=0.01):
    """R.verdict on synthetic per-seed accuracies a, b (shares) with a small seed spread."""
    side = lambda p: [{"final": {"ra": p + spread * (i - 1), "n_test": 1000}} for i in range(seeds)]
    return R.verdict(claim, side(a), side(b), preset="cpu")


def test_claims_combine_their_parts_and_show_both_numbers(tmp_path):
    _store(tmp_path, "cpu", "tab1_overall", [_verdict("A RA > B RA (resnet18)", 0.30, 0.20),
                                             _verdict("A RA > C RA (resnet18)", 0.21, 0.20)])
    records = ledger.claims("cpu", tmp_path, CLAIMS)
    assert [r["status"] for r in records] == ["inconclusive", "not run", "not yet covered"]
    (first, numbers), (second, none) = records[0]["parts"]
    assert first.status == "reproduced" and second.status == "inconclusive" and numbers == "51.8% vs 45.6%" and none is None
    assert ledger.ours(first) == "30.0% vs 20.0%"
    assert ledger.against_threshold(first) == f"+10.0 vs ±{first.threshold:.1f} pp"
    assert ledger.against_threshold(second).endswith(f"({second.threshold - second.gap:.1f} short)")
    assert ledger.count_line(records) == "1 inconclusive, 1 not run, 1 not yet covered"


def test_dashboard_rows_align_each_comparison_with_its_numbers(tmp_path):
    _store(tmp_path, "cpu", "tab1_overall", [_verdict("A RA > B RA", 0.30, 0.20), _verdict("A RA > C RA", 0.21, 0.20)])
    shown = ledger.dashboard(ledger.claims("cpu", tmp_path, CLAIMS)).data
    assert list(shown["id"]) == ["C1", "", "C2", "C3"]  # C1's second comparison has a row of its own
    assert list(shown["paper"]) == ["51.8% vs 45.6%", "-", "-", "-"]
    assert shown["ours"][1] == "21.0% vs 20.0%"
    assert '<a href="../notebooks/tab1_overall.html">Table 1</a>' == shown["page"][0]


def test_landing_counts_are_the_ledgers_and_link_the_decided_claims(tmp_path, monkeypatch):
    _store(tmp_path, "cpu", "tab1_overall", [_verdict("A RA > B RA", 0.30, 0.20), _verdict("A RA > C RA", 0.40, 0.20)])
    _store(tmp_path, "cpu", "fig2_at_vs_eps", [_verdict("D RA > E RA", 0.10, 0.30)])
    monkeypatch.setattr(ledger, "PAPERS", [dict(key="x", title="Paper X", claims=CLAIMS),
                                           dict(key="y", title="Paper Y", claims=[])])
    text = ledger.landing(tmp_path)
    records = ledger.claims("cpu", tmp_path, CLAIMS)
    assert f"At the `cpu` preset: {ledger.count_line(records)}." in text
    assert ledger.count_line(records) == "1 reproduced, 1 not reproduced, 1 not yet covered"
    assert "C1 **reproduced**: A beats B and C. ([Table 1](../notebooks/tab1_overall.ipynb))" in text
    assert "C2 **not reproduced**: D beats E. ([Fig. 2](../notebooks/fig2_at_vs_eps.ipynb))" in text
    assert "Not executed at the `smoke`, `gpu`, `paper` presets." in text and "**Paper Y**: no chapter yet" in text


def test_claim_ids_run_in_the_papers_order_and_no_comparison_is_listed_twice():
    assert [c["id"] for c in paper.CLAIMS] == [f"C{i}" for i in range(1, len(paper.CLAIMS) + 1)]
    for c in paper.CLAIMS:
        pairs = [(nb, prefix) for nb, prefix, *_ in c["covered_by"]]
        assert len(pairs) == len(set(pairs)), c["id"]
    assert paper._vs("advmoe", "at-moe") == "51.83% vs 45.57%"  # Table 1, ResNet-18, CIFAR-10


def test_every_paper_has_its_ledger_section_and_its_claims_in_order():
    """The claims page has one section per paper of `ledger.PAPERS`, in order, headed by its title; the Robust Experts
    claims run R1..R6 and each names the authors' numbers where they published any."""
    import json

    from advmoe import robust
    from advmoe.data import REPO

    cells = json.loads((REPO / "book" / "claims.ipynb").read_text())["cells"]
    headings = ["".join(c["source"]).splitlines()[0][3:] for c in cells
                if c["cell_type"] == "markdown" and "".join(c["source"]).startswith("## ")]
    assert headings == [p["title"] for p in ledger.PAPERS]
    assert [c["id"] for c in robust.CLAIMS] == [f"R{i}" for i in range(1, 7)]
    assert robust.CLAIMS[0]["covered_by"][0][2] == "19.96% vs 16.87%"  # T3 conv5_x 2nd block vs the dense AT baseline
    assert robust.CLAIMS[-1]["covered_by"][0][2] == "19.75% vs 18.4%"  # T1 BlockMoE k = 1 vs k = 2
    for c in robust.CLAIMS:
        pairs = [(nb, prefix) for nb, prefix, *_ in c["covered_by"]]
        assert len(pairs) == len(set(pairs)), c["id"]
