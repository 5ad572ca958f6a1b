"""Table 1's cells: the paper's protocol per dataset, each preset's specs, a cell trained end to end on files in the
official Tiny-ImageNet layout, and bad input failing before compute."""
import pytest
import torch
import torch.nn.functional as F

from advmoe import cells
from advmoe import experiments as ex
from advmoe.cli import main as cli
from advmoe.models import create_model
from conftest import write_tiny_imagenet

WNIDS = [f"n{i:08d}" for i in range(200)]


@pytest.mark.parametrize("preset", ["smoke", "cpu", "paper"])
def test_the_resnet18_cifar10_cell_is_the_stored_table1_slice(preset):
    # same specs, same hashes: every stored ResNet-18 result stays the cell's
    assert [s.hash for s in cells.specs(preset)] == [s.hash for s in ex.table1(preset)]


def test_the_papers_protocol_per_dataset():
    tiny = cells.specs("paper", "tiny-imagenet", "wrn28-10", seeds=(0,))
    assert {(s.train_eps, s.eval_eps) for s in tiny} == {(2 / 255, 2 / 255)}  # Sec. 5.1
    assert {(s.train_steps, s.train_step_size, s.eval_step_size) for s in tiny} == {(2, 1.25 / 255 * 2 / 2, 0.5 / 255)}
    assert {(s.base_width, s.batch_size, s.stem, s.num_classes) for s in tiny} == {(16, 128, "cifar", 200)}
    imagenet = cells.specs("paper", "imagenet", "resnet18", seeds=(0,))
    assert {(s.base_width, s.batch_size, s.stem, s.num_classes) for s in imagenet} == {(64, 512, "imagenet", 1000)}
    c100 = cells.specs("paper", "cifar100", "densenet", seeds=(0, 1, 2))
    assert len(c100) == 15 and {(s.train_eps, s.base_width) for s in c100} == {(8 / 255, 24)}
    assert len(cells.PAPER_CELLS) == 12 and ("tiny-imagenet", "vgg16") not in cells.PAPER_CELLS


def test_model_for_a_spec_takes_its_datasets_image_size_and_stem():
    spec = cells.specs("smoke", "imagenet", "resnet18", seeds=(0,))[0]
    model = ex.model_for(spec).eval()
    assert model.stem[0].kernel_size == (7, 7) and model(torch.rand(1, 3, 224, 224)).shape == (1, 1000)
    net = ex.model_for(ex.make_spec("smoke", "network-moe", "standard", 1.0, n_experts=2, dataset="tiny-imagenet"))
    assert net.router.fc.in_features == 3 * 64 * 64  # the image router reads the flattened 64 px image


@pytest.mark.parametrize("backbone,width", [("wrn28-10", 4), ("vgg16", 8), ("densenet", 8)])
def test_every_backbone_learns_a_fixed_batch(backbone, width):
    torch.manual_seed(0)
    model = create_model(backbone, "moe", 0.5, 2, num_classes=4, base_width=width).train()
    x, y = torch.rand(16, 3, 32, 32), torch.arange(16) % 4
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0], losses


def test_a_tiny_imagenet_cell_trains_and_evaluates_end_to_end(tmp_path, monkeypatch):
    write_tiny_imagenet(tmp_path / "data", WNIDS, n_train=1, n_val=1)
    monkeypatch.setenv("ADVMOE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("ADVMOE_RESULTS", str(tmp_path / "results"))
    spec = cells.specs("smoke", "tiny-imagenet", "wrn28-10", seeds=(0,))[3].replace(epochs=1)  # AT (MoE)
    assert spec.kind == "moe" and spec.eval_eps == 2 / 255
    m = ex.run(spec, progress=False)
    assert m["final"]["gflops"] == pytest.approx(m["final"]["gflops"]) and m["final"]["gflops"] > 0
    from advmoe.flops import gflops
    assert m["final"]["gflops"] == pytest.approx(gflops(ex.model_for(spec), (3, 64, 64)))
    assert "1 of the official 500 training images per class" in m["data"]["train"]
    assert m["data"]["n_train"] == 128 and m["data"]["n_test"] == 32
    assert all(m["final"]["sanity"].values())


def test_cli_runs_a_cell_notes_a_pair_the_paper_lacks_and_refuses_bad_input(capsys):
    assert cli(["list", "--preset", "paper", "--dataset", "tiny-imagenet", "--backbone", "vgg16"]) == 0
    out = capsys.readouterr()
    assert "the paper has no vgg16 on tiny-imagenet" in out.err and "tiny-imagenet-vgg16-moe-n2-r0.5-advmoe" in out.out
    for argv, needle in ((["--backbone", "resnet50"], "unknown backbone 'resnet50'"),
                         (["--dataset", "svhn"], "unknown dataset 'svhn'"),
                         (["--dataset", "cifar100", "--preset", "cpu"], "no cpu size for resnet18 on cifar100"),
                         (["--dataset", "imagenet", "--backbone", "vgg16", "--preset", "paper"], "CIFAR layout only"),
                         (["--backbone", "wrn28-10", "--preset", "smoke", "--set", "base_width=1"], "0 channels")):
        assert cli(["list", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert needle in err[-1] and err[-1].startswith("advmoe: error:"), err


def test_a_cells_unit_stores_every_evaluation_its_pages_read(smoke_results):
    from advmoe import audit

    spec = next(s for s in cells.page_models("smoke", "cifar10", "vgg16", seeds=(0,)) if s.method == "advmoe")
    cells.unit(spec, progress=False)
    folder = ex.result_dir(spec)
    version, n = ex.autoattack_settings("smoke")
    names = {p.name for p in folder.glob("*.json")}
    assert {"metrics.json", f"autoattack-{version}-n{n}.json", f"worst-case-{version}-n{n}.json"} <= names, names
    assert audit.stored(spec) is not None  # the audit page reads the first seed's audit
    assert [s.kind for s in cells.page_models("smoke", "cifar10", "vgg16", seeds=(0,))][-3:] == ["dense", "s-dense", "moe"]
    assert not [s for s in cells.page_models("smoke", "tiny-imagenet", "resnet18") if s.method == "standard"]
    planned = {(s.dataset, s.backbone) for s in cells.plan("cpu")}
    assert ("cifar10-jpeg", "resnet18") not in planned and ("cifar10-jpeg", "vgg16") in planned
    assert ("tiny-imagenet", "resnet18") not in {(s.dataset, s.backbone) for s in cells.plan("cpu", more=False)}
