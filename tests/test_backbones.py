"""WRN-28-10, VGG-16 and DenseNet-BC-40 beside ResNet-18: every model kind from one definition, the paper's GFLOPs,
MoE execution equal to its dense reference, the Sparse network equal to its compact form."""
import pytest
import torch
import torch.nn.functional as F

import advmoe
from advmoe.bench import mixed_routing
from advmoe.flops import gflops
from advmoe.models import (compact, create_model, dense_reference, init_scores_from_weights, masks, moe_layers,
                           record_routing)

NEW = ("wrn28-10", "vgg16", "densenet")


@pytest.mark.parametrize("backbone,size,classes,stem,dense,s_dense", [
    # the paper's Dense and S-Dense GFLOPs (Tables 1, A2), which analytic counts of these architectures reproduce
    # (../shared/papers/advmoe-backbones-facts.md Sec. 1.6); VGG-16's S-Dense is 0.079, printed 0.07 by the paper
    ("resnet18", 32, 10, "cifar", 0.54, 0.14),
    ("wrn28-10", 32, 10, "cifar", 5.25, 1.31),
    ("vgg16", 32, 10, "cifar", 0.31, 0.079),
    ("densenet", 32, 10, "cifar", 0.07, 0.02),
    ("resnet18", 64, 200, "cifar", 2.23, 0.55),  # Tiny-ImageNet at its native 64 px
    ("wrn28-10", 64, 200, "cifar", 21.0, 5.26),
    ("resnet18", 224, 1000, "imagenet", 1.82, 0.48),  # ImageNet: the 7x7 stride-2 stem and max-pool
    ("wrn28-10", 224, 1000, "imagenet", 16.1, 4.04),
])
def test_gflops_reproduce_the_papers_dense_and_s_dense_columns(backbone, size, classes, stem, dense, s_dense):
    shape = (3, size, size)
    ours = [gflops(create_model(backbone, k, r, num_classes=classes, stem=stem), shape)
            for k, r in (("dense", 1.0), ("s-dense", 0.5))]
    assert ours == pytest.approx([dense, s_dense], rel=0.03, abs=0.006)
    sparse = gflops(create_model(backbone, "sparse", 0.5, num_classes=classes, stem=stem), shape)
    moe = gflops(create_model(backbone, "moe", 0.5, 2, num_classes=classes, stem=stem), shape)
    assert sparse == pytest.approx(ours[1], rel=1e-9)  # counted on the compact network: S-Dense's widths
    assert ours[1] < moe < 1.02 * ours[1]  # one pathway of S-Dense's widths, plus the per-layer routers


@pytest.mark.parametrize("backbone,n_moe,kernels", [
    ("wrn28-10", 27, {3: 24, 1: 3}),  # both convs of 12 blocks and the 3 shortcuts where the shape changes
    ("vgg16", 12, {3: 12}),  # every conv but the first
    ("densenet", 36, {1: 18, 3: 18}),  # both convs of 18 bottleneck layers
])
def test_moe_layers_sit_where_the_chapter_says(backbone, n_moe, kernels):
    layers = moe_layers(create_model(backbone, "moe", 0.5, 3, base_width=8))
    assert len(layers) == n_moe
    assert {k: sum(m.kernel_size == k for m in layers.values()) for k in kernels} == kernels
    assert all(m.n_experts == 3 for m in layers.values())


def test_every_layer_is_rounded_on_its_own_as_the_authors_int_r_c():
    # WRN-28-10 at r = 0.2: 3, 32, 64, 128 channels (the paper's 0.21 GFLOPs of Table A2), not 3 x (1, 10, 20, 40)
    model = create_model("wrn28-10", "s-dense", 0.2)
    assert [model.stem[0].out_channels] + [g[0].conv1.out_channels for g in model.groups] == [3, 32, 64, 128]
    assert gflops(model) == pytest.approx(0.21, abs=0.005)
    small = create_model("densenet", "s-dense", 0.5)  # stem 12, growth 6, bottleneck 24: the authors' densenet_ori
    layer = small.stages[0].layers[0]
    assert (small.stem[0].out_channels, layer.conv2.out_channels, layer.conv1.out_channels) == (12, 6, 24)


def _mixed(model, n):
    """Sparse execution vs computing every expert and masking, in float64, on a batch that routing splits."""
    torch.manual_seed(1)
    x = torch.rand(n, 3, 32, 32, dtype=torch.float64).requires_grad_()
    y = torch.randint(0, 10, (n,))
    out = []
    for reference in (False, True):
        model.zero_grad()
        x.grad = None
        torch.manual_seed(2)  # the same random routing in both passes
        with (dense_reference(model) if reference else torch.enable_grad()), record_routing(model) as routes:
            logits = model(x)
            F.cross_entropy(logits, y).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        out.append((logits.detach(), grads, x.grad.clone(), routes))
    return out


@pytest.mark.parametrize("backbone", NEW)
def test_sparse_moe_execution_equals_the_dense_reference(backbone):
    torch.manual_seed(0)
    model = mixed_routing(create_model(backbone, "moe", 0.5, 3, base_width=8)).double()
    (o_s, g_s, x_s, routes), (o_d, g_d, x_d, _) = _mixed(model, 12)
    assert any(len(set(c.tolist())) > 1 for c in routes.values()), "routing must split the batch"
    assert torch.allclose(o_s, o_d, atol=1e-10) and torch.allclose(x_s, x_d, atol=1e-10)
    assert g_s.keys() == g_d.keys() and any("router" in n for n in g_s)
    for n in g_s:
        assert torch.allclose(g_s[n], g_d[n], atol=1e-10, rtol=1e-8), n


def _trained_sparse(backbone, scale, stem="cifar"):
    torch.manual_seed(0)
    model = create_model(backbone, "sparse", scale, base_width=8, stem=stem)
    dense = create_model(backbone, "dense", 1.0, base_width=8, stem=stem)
    missing, unexpected = model.load_state_dict(dense.state_dict(), strict=False)  # HYDRA starts from Dense
    assert not unexpected and missing and all(".mask." in k and k.endswith("scores") for k in missing)
    init_scores_from_weights(model)
    with torch.no_grad():
        for m in masks(model):
            m.scores.copy_(torch.randn_like(m.scores))  # some channels, not the first ones
    model.train()
    for _ in range(2):
        model(torch.rand(8, 3, 64, 64) if stem == "imagenet" else torch.rand(8, 3, 32, 32))
    return model.eval()


@pytest.mark.parametrize("backbone,scale,stem", [("wrn28-10", 0.5, "cifar"), ("wrn28-10", 0.3, "imagenet"),
                                                 ("vgg16", 0.5, "cifar"), ("vgg16", 0.7, "cifar"),
                                                 ("densenet", 0.5, "cifar"), ("densenet", 0.5, "imagenet")])
def test_sparse_network_equals_its_compact_s_dense_form(backbone, scale, stem):
    model = _trained_sparse(backbone, scale, stem)
    x = torch.rand(4, 3, 64, 64) if stem == "imagenet" else torch.rand(4, 3, 32, 32)
    small = compact(model).eval()
    assert type(small) is type(model) and not masks(small)
    assert sum(p.numel() for p in small.parameters()) < 0.7 * sum(p.numel() for p in model.parameters())
    assert torch.allclose(model(x), small(x), atol=1e-5)
    assert all(int(m().sum()) == m.keep for m in masks(model) if hasattr(m, "keep"))


@pytest.mark.parametrize("backbone", NEW)
def test_hydra_scores_start_from_the_weights_of_the_convs_each_mask_cuts(backbone):
    from advmoe.models.sparse import _producers

    model = _trained_sparse(backbone, 0.5)
    producers = _producers(model)
    assert {id(m) for m in masks(model)} == set(producers)  # every mask, and only masks, has its producers
    for m in masks(model):
        assert all(c.out_channels == len(m.scores) for c in producers[id(m)])
    init_scores_from_weights(model)
    assert all(m.scores.min() > 0 for m in masks(model))


def test_densenet_readers_of_a_concatenation_share_its_parts_masks():
    model = create_model("densenet", "sparse", 0.5, base_width=8)
    block = model.stages[0]
    first, last = block.layers[0].norm1.mask, block.layers[-1].norm1.mask
    assert first.parts[0] is last.parts[0] is model.stages[1].norm.mask.parts[0]  # the stem's output, three readers
    assert len(last.parts) == 6 and len(model.stages[1].norm.mask.parts) == 7


@pytest.mark.parametrize("backbone", ["resnet18", *NEW])
def test_creating_a_sparse_model_draws_the_random_numbers_of_its_dense_parent(backbone):
    # the S-Dense twin that sizes the masks is built on the meta device with the random state restored: a Sparse
    # model's weights (and every draw after it) are those of a Dense model created from the same seed
    torch.manual_seed(3)
    sparse = create_model(backbone, "sparse", 0.5, base_width=8)
    after_sparse = torch.rand(3)
    torch.manual_seed(3)
    dense = create_model(backbone, "dense", 1.0, base_width=8)
    assert torch.equal(torch.rand(3), after_sparse)
    state = sparse.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in dense.state_dict().items())


@pytest.mark.parametrize("kwargs,needle", [
    (dict(backbone="wrn28-10", kind="s-dense", scale=0.1, base_width=2), "0 channels"),
    (dict(backbone="vgg16", kind="dense", stem="imagenet"), "CIFAR layout only"),
    (dict(backbone="densenet", kind="block-moe", n_experts=4), "ResNet-18's stages"),
    (dict(backbone="wrn28-10", kind="dense", stem="tiny"), "allowed: cifar, imagenet"),
])
def test_bad_backbone_arguments_fail_before_compute(kwargs, needle):
    with pytest.raises(ValueError) as e:
        advmoe.create_model(**kwargs)
    assert needle in str(e.value)


def test_densenets_growth_layer_of_0_channels_is_refused_by_the_argument_check():
    from advmoe.models import check_model_args

    check_model_args("densenet", "s-dense", 0.5, 1, "per-layer", base_width=4)  # growth 12 -> 1 channel
    with pytest.raises(ValueError, match=r"0 channels \(paper width 12\)"):  # the stem (24) keeps 1 channel
        check_model_args("densenet", "s-dense", 0.2, 1, "per-layer", base_width=4)


def test_vit_count_matches_the_known_sizes_of_deit_tiny_and_vit_base():
    from advmoe.flops import vit_gmacs

    assert vit_gmacs() == pytest.approx(1.25, abs=0.01)  # DeiT-Tiny at 224 px (Touvron et al.: 1.3 GFLOPs)
    assert vit_gmacs(dim=768) == pytest.approx(17.56, rel=0.01)  # ViT-B/16 at 224 px (Dosovitskiy et al.: 17.6)
