"""Fig. 6's pathways: placement of experts in the full-width index space, IoU, diversity."""
import math

import pytest
import torch

from advmoe.models import create_model, moe_layers, record_routing
from advmoe.models.sparse import init_scores_from_weights
from advmoe.pathways import diversity, expert_start, iou, mask_pathway, moe_pathways


@pytest.mark.parametrize("n,r,expected", [(2, 0.5, [0, 32]), (4, 0.25, [0, 16, 32, 48]), (10, 0.8, None),
                                          (3, 0.5, [0, 16, 32]), (2, 0.2, [0, 51])])
def test_experts_tile_overlap_or_spread_over_the_full_width(n, r, expected):
    width, full = round(r * 64), 64
    starts = [expert_start(e, n, width, full) for e in range(n)]
    if expected is not None:
        assert starts == expected
    assert starts[0] == 0 and starts[-1] + width == full  # first and last channel always covered
    covered = torch.zeros(full, dtype=torch.bool)
    for s in starts:
        covered[s:s + width] = True
    assert covered.all() == (n * width >= full)  # N * r >= 1 leaves no gap


def test_pathways_iou_and_diversity_on_real_models():
    torch.manual_seed(0)
    moe = create_model("resnet18", "moe", 0.5, 2, base_width=8).eval()
    sparse = create_model("resnet18", "sparse", 0.5, base_width=8)
    init_scores_from_weights(sparse)
    layers = moe_layers(moe)
    full = {name: dict(sparse.named_modules())[name].out_channels for name in layers}
    x = torch.rand(16, 3, 32, 32)
    with torch.no_grad(), record_routing(moe) as routes:
        moe(x)
    paths = moe_pathways(routes, layers, full)
    assert paths.shape == (16, sum(full.values()))
    assert (paths.sum(1) == sum(m.out_channels for m in layers.values())).all()  # r of every layer's channels
    mask = mask_pathway(sparse, list(routes))
    assert mask.sum() == paths[0].sum()  # the same share of each layer: both keep r
    scores = iou(paths, mask)
    assert ((scores >= 0) & (scores <= 1)).all()
    assert torch.equal(iou(paths, paths), torch.ones(16))
    d = diversity(routes)
    assert 1 <= d["distinct"] <= 16 and 0 <= d["entropy_bits"] <= math.log2(d["distinct"]) + 1e-9


def test_diversity_counts_routes():
    one = {"a": torch.tensor([0, 0, 0, 0]), "b": torch.tensor([1, 1, 1, 1])}
    assert diversity(one) == {"distinct": 1, "inputs": 4, "entropy_bits": 0.0}
    four = {"a": torch.tensor([0, 0, 1, 1]), "b": torch.tensor([0, 1, 0, 1])}
    assert diversity(four)["distinct"] == 4 and diversity(four)["entropy_bits"] == pytest.approx(2.0)
