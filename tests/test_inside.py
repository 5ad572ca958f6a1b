"""Fig. 3-6 (advmoe.inside) at the smoke preset: the chains train, the measures are consistent, the verdicts decide."""
import json
import math

import pytest
import torch

from advmoe import experiments as ex
from advmoe import inside
from advmoe.dissect import CATEGORIES
from advmoe.io import from_bits, from_digits
from advmoe.pathways import diversity

STATUSES = {"reproduced", "not reproduced", "inconclusive"}


def test_precompute_stores_every_model_dissection_and_mask_the_pages_read(smoke_results):
    inside.precompute("smoke", jobs=1, progress=False)
    models, dissect, masks = inside.page_models("smoke")
    assert len(dissect) == 4 * len(ex.preset_seeds("smoke")) and all(m.kind == "sparse" for m in masks)
    assert {m.scale for m in models if m.method == "at-backbone"} == {inside.VERDICT_SCALE}  # Fig. 5's only
    for spec in models + masks:
        ex.load(spec)  # raises if missing
    assert all(ex.read_evaluation(ex.result_dir(s) / "dissection-pgd5.json", s) for s in dissect)
    assert all(ex.read_evaluation(ex.result_dir(s) / "mask-channels.json", s) for s in masks)


def test_fig3_trains_the_chains_and_decides_at_the_verdict_scale_only(smoke_results):
    df, verdicts, records = inside.fig3("smoke", "cpu", False, [0.5, 0.2])
    seeds = ex.preset_seeds("smoke")
    assert len(df[df.scale == 0.5]) == 4 * len(seeds) and len(df[df.scale == 0.2]) == 4  # other scales: first seed
    assert set(df.model) == set(inside.FIG3) and df.ra.between(0, 100).all()
    assert len(verdicts) == 3 and {v.status for v in verdicts} <= STATUSES
    assert all("2 seeds" in v.detail for v in verdicts)
    theta_bar = next(r for r in records if r["label"] == inside.FIG3["theta-bar"] and r["scale"] == 0.5)
    m1 = next(r for r in records if r["label"] == inside.FIG3["M1"] and r["scale"] == 0.5)
    assert theta_bar["metrics"]["parent"]["model_sha256"] == m1["metrics"]["model_sha256"]  # started from M1
    assert inside.fig3("smoke", "cpu", False, [0.2])[1] == []  # no verdict without the verdict scale


def test_dissection_shares_and_verdicts(smoke_results):
    shares, layers, stored, records = inside.dissections("smoke", "cpu", False)
    totals = shares.groupby(["model", "seed"]).share.sum()
    assert totals.round(6).eq(100).all() and set(shares.category) == set(CATEGORIES)
    assert set(stored) == {inside.THETA_BAR, inside.THETA_BARBAR, "AT (MoE)", "AdvMoE"}
    assert layers.rate.between(0, 100).all()
    verdicts = inside.dissection_verdicts(stored, "smoke")
    assert len(verdicts) == 4 and {v.status for v in verdicts} <= STATUSES
    d = stored["AdvMoE"][0]  # the C5 verdict's gap is the difference of the stored routing-unchanged shares
    gap = [100 * (a["routing_unchanged"] - b["routing_unchanged"])
           for a, b in zip(stored[inside.THETA_BAR], stored[inside.THETA_BARBAR])]
    assert verdicts[2].gap == pytest.approx(sum(gap) / len(gap))
    assert len(d["routes_clean"]) == len(d["layer_change_rate"])


def test_fig6_pathway_measures_are_consistent_with_the_routes(smoke_results):
    rows, summary, verdicts, records = inside.fig6("smoke", "cpu", False)
    assert rows.iou.between(0, 1).all() and set(rows.data) == {"clean", "adversarial"}
    assert len(verdicts) == 4 and {v.status for v in verdicts} <= STATUSES and verdicts[3].unit == "bits"
    spec = inside.dissected("smoke", 0)["AT (MoE)"]
    d = ex.dissection(spec)
    mask = ex.mask_channels(ex.hydra_chain("smoke", 0.5, seed=0).parent)
    m = inside.pathway_measures(spec, d, mask)
    unchanged = ~from_bits(d["routing_changed_bits"])
    same = torch.tensor(m["iou_clean_adversarial"]) == 1
    assert torch.equal(same, unchanged)  # the pathway moves exactly when some layer's expert changes
    routes = {k: from_digits(v) for k, v in d["routes_clean"].items()}
    assert sum(m["surprisal_clean"]) / len(m["surprisal_clean"]) == pytest.approx(diversity(routes)["entropy_bits"])
    assert m["distinct_clean"] == diversity(routes)["distinct"]
    # N * r = 1: every input's pathway holds half of each MoE layer's full-width channels, as the mask does
    assert all(0 <= v <= 1 for v in m["iou_mask_clean"]) and not math.isnan(sum(m["iou_mask_clean"]))


def test_scale_grids_per_preset():
    assert inside.scales("paper") == inside.PAPER_SCALES == [0.8, 0.5, 0.2]
    assert set(inside.scales("cpu")) <= set(inside.PAPER_SCALES) and inside.VERDICT_SCALE in inside.scales("cpu")
    assert inside.seeds("cpu", 0.5) == ex.preset_seeds("cpu") and inside.seeds("cpu", 0.8) == (0,)
    assert inside.seeds("paper", 0.8) == ex.preset_seeds("paper")  # the paper preset decides at every scale
    with pytest.raises(ValueError, match="preset must be one of"):
        inside.scales("huge")


def _plain(text: str) -> str:
    """The text as a font without combining overlines shows it: every combining mark dropped."""
    import unicodedata

    return "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c))


def test_theta_bar_and_theta_double_bar_stay_apart_in_every_rendering():
    """θ̄ and θ̿ differ only by a combining mark, which many fonts (and the pages' monospace verdicts) draw alike: the
    names differ without it, and every θ the executed Sec. 4 pages print carries one of the names (or Fig. 3's label)."""
    import re

    from advmoe.data import REPO

    assert _plain(inside.THETA_BAR) != _plain(inside.THETA_BARBAR)
    names = (inside.THETA_BAR, inside.THETA_BARBAR, inside.FIG3["theta-bar"])
    for page in ("fig3_router_only", "fig4_fig5_dissection"):
        nb = json.loads((REPO / "notebooks" / f"{page}.ipynb").read_text())
        shown = " ".join(json.dumps(o, ensure_ascii=False) for c in nb["cells"] for o in c.get("outputs", []))
        bare = [m.start() for m in re.finditer("θ", shown) if not any(shown.startswith(n, m.start()) for n in names)]
        assert not bare, (page, [shown[i - 30:i + 30] for i in bare[:3]])
