"""AT (Sparse): the structured HYDRA model, its masks, its compact form and its two training stages."""
import pytest
import torch

from advmoe import experiments as ex
from advmoe.flops import gflops
from advmoe.models import compact, create_model, init_scores_from_weights, mask_parameters, masks, weight_parameters


def _sparse(scale, seed=0):
    torch.manual_seed(seed)
    model = create_model("resnet18", "sparse", scale, base_width=8)
    model.load_state_dict(create_model("resnet18", "dense", 1.0, base_width=8).state_dict(), strict=False)
    init_scores_from_weights(model)
    with torch.no_grad():
        for m in masks(model):
            m.scores.add_(torch.randn_like(m.scores))  # some other channels than the largest weights
    model.train()
    for _ in range(2):
        model(torch.rand(16, 3, 32, 32))  # BatchNorm statistics away from their initial values
    return model.eval()


@pytest.mark.parametrize("scale", [0.2, 0.5, 0.8])
def test_compact_network_computes_the_same_outputs(scale):
    model = _sparse(scale)
    x = torch.rand(8, 3, 32, 32)
    small = compact(model).eval()
    assert torch.allclose(model(x), small(x), atol=1e-5)
    assert all(m().sum() == m.keep for m in masks(model))


def test_removed_channels_are_zero_and_the_residual_stream_shares_its_mask():
    model = _sparse(0.5)
    outputs = []
    hooks = [b.register_forward_hook(lambda m, i, o: outputs.append((m, o))) for stage in model.layers for b in stage]
    model(torch.rand(4, 3, 32, 32))
    for h in hooks:
        h.remove()
    for block, out in outputs:
        removed = block.bn2.mask() == 0
        assert block.bn2.mask is (block.shortcut[1].mask if len(block.shortcut) else block.bn2.mask)
        assert removed.any() and out[:, removed].abs().max() == 0
    assert len({id(m) for m in masks(model)}) == 4 + 8  # a stream mask per stage, one per block's first conv


def test_gflops_are_counted_on_the_executed_network_and_match_table1():
    sparse, dense = create_model("resnet18", "sparse", 0.5), create_model("resnet18", "dense")
    assert gflops(sparse) == pytest.approx(gflops(create_model("resnet18", "s-dense", 0.5)))
    assert gflops(sparse) == pytest.approx(0.14, rel=0.10)  # Table 1: AT (Sparse) 0.14 at r = 0.5
    assert gflops(sparse) / gflops(dense) == pytest.approx(0.25, rel=0.02)


def test_mask_scores_get_the_straight_through_gradient():
    model = _sparse(0.5).train()
    model(torch.rand(4, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mask_parameters(model))


@pytest.mark.parametrize("changes,needle", [
    (dict(kind="sparse", method="at", scale=0.5), "trained by HYDRA"),
    (dict(kind="sparse", method="hydra-mask", scale=1.0), "r in (0, 1)"),
    (dict(kind="moe", method="hydra-mask", scale=0.5), "kind 'sparse'"),
])
def test_bad_sparse_spec_fails_before_compute(changes, needle):
    with pytest.raises(ValueError) as e:
        ex.ExperimentSpec(**{**dict(preset="smoke"), **changes})
    assert needle in str(e.value)


def test_hydra_parents_must_be_dense_then_mask():
    moe = ex.make_spec("smoke", "moe", "at", 0.5)
    with pytest.raises(ValueError, match="starts from a Dense model"):
        ex.make_spec("smoke", "sparse", "hydra-mask", 0.5, parent=moe)
    dense = ex.make_spec("smoke", "dense", "at", 1.0)
    with pytest.raises(ValueError, match="starts from a 'hydra-mask' experiment"):
        ex.make_spec("smoke", "s-dense", "hydra-finetune", 0.5, parent=ex.hydra_chain("smoke", 0.5))


def test_hydra_stages_train_the_mask_then_the_weights(tiny_data):
    small = dict(dataset="cifar10", epochs=1, train_subset=64, batch_size=32, test_subset=16, eval_steps=1)
    finetune = ex.hydra_chain("smoke", 0.5, **small)
    mask_spec, dense_spec = finetune.parent, finetune.parent.parent
    metrics = ex.get(finetune, progress=False)  # trains the Dense parent, the mask, then the fine-tuning
    dense, mask, tuned = (ex.load_model(s) for s in (dense_spec, mask_spec, finetune))
    # stage 1: conv and linear weights as the Dense parent's; BatchNorm (affine and statistics) follows the masked
    # network, as in HYDRA (freeze_bn=False); the mask moved away from its initial scores
    frozen = lambda m: {n: p for n, p in m.named_parameters() if "bn" not in n and "shortcut.1" not in n
                        and "stem.1" not in n and not n.endswith("scores")}
    assert frozen(dense).keys() == frozen(mask).keys() and len(frozen(dense)) > 20
    assert all(torch.equal(p, frozen(mask)[n]) for n, p in frozen(dense).items())
    dense_buffers = dict(dense.named_buffers())
    assert any(not torch.equal(b, dense_buffers[n]) for n, b in mask.named_buffers() if n.endswith("running_mean"))
    dense_params = dict(dense.named_parameters())
    assert any(not torch.equal(p, dense_params[n]) for n, p in mask.named_parameters()
               if n in dense_params and n not in frozen(dense))  # BatchNorm affine trained
    start = create_model("resnet18", "sparse", 0.5, base_width=8)
    start.load_state_dict(dense.state_dict(), strict=False)
    init_scores_from_weights(start)
    assert any(not torch.equal(p, q) for p, q in zip(mask_parameters(start), mask_parameters(mask)))
    # stage 2: the mask fixed, the kept weights trained: the compact network (S-Dense), started from the mask's
    start = compact(mask)
    assert type(tuned) is type(start) and finetune.kind == "s-dense"
    assert all(p.shape == q.shape for p, q in zip(start.parameters(), tuned.parameters()))
    assert any(not torch.equal(p, q) for p, q in zip(start.parameters(), tuned.parameters()))
    assert metrics["parent"]["hash"] == mask_spec.hash
    assert metrics["final"]["gflops"] == pytest.approx(gflops(create_model("resnet18", "s-dense", 0.5, base_width=8)))


def test_hydra_finetune_trains_the_compact_network():
    mask = ex.hydra_chain("smoke", 0.5, finetune=False)
    with pytest.raises(ValueError, match="compact network"):
        ex.make_spec("smoke", "sparse", "hydra-finetune", 0.5, parent=mask)
    with pytest.raises(ValueError, match="give parent="):
        ex.make_spec("smoke", "s-dense", "hydra-finetune", 0.5)
    tuned = ex.make_spec("smoke", "s-dense", "hydra-finetune", 0.5, parent=mask)
    assert tuned == ex.hydra_chain("smoke", 0.5) and tuned.hash != ex.make_spec("smoke", "s-dense", "at", 0.5).hash


def test_mask_channels_are_stored_per_conv_in_full_width_index_space(tiny_data):
    from advmoe.pathways import mask_pathway

    small = dict(dataset="cifar10", epochs=1, train_subset=64, batch_size=32, test_subset=16, eval_steps=1)
    spec = ex.hydra_chain("smoke", 0.5, finetune=False, **small)
    stored = ex.mask_channels(spec, progress=False)
    model = ex.load_model(spec)
    convs = dict(model.named_modules())
    assert set(stored["kept"]) >= {"stem.0", "layers.0.0.conv1", "layers.3.1.conv2"}
    for name, kept in stored["kept"].items():
        assert stored["full_widths"][name] == convs[name].out_channels
        assert len(kept) == convs[name].out_channels // 2 and kept == sorted(set(kept))  # r = 0.5 of the channels
    names = ["layers.0.0.conv1", "layers.2.1.conv2"]
    full = torch.cat([torch.zeros(stored["full_widths"][n], dtype=torch.bool).index_fill_(0, torch.tensor(stored["kept"][n]), True)
                      for n in names])
    assert torch.equal(full, mask_pathway(model, names))  # what Fig. 6 reads back equals the live model's mask
    with pytest.raises(ValueError, match="not 'sparse'"):
        ex.mask_channels(ex.make_spec("smoke", "s-dense", "at", 0.5))
