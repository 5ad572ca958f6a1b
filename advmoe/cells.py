"""Table 1's cells: one dataset x one backbone, its five rows (AT (Dense), AT (S-Dense), AT (Sparse), AT (MoE),
AdvMoE), the paper's protocol per dataset, and what each preset makes of a cell.

The paper (Sec. 5.1, Appendix B) runs ResNet-18 and WRN-28-10 on CIFAR-10, CIFAR-100, Tiny-ImageNet and ImageNet,
and VGG-16 and DenseNet on CIFAR-10 and CIFAR-100: `PAPER_CELLS`. Attacks: eps 8/255 on CIFAR, 2/255 on
Tiny-ImageNet and ImageNet, at training and test; the step sizes are not given, and keep their ratio to eps
(training: 2 steps of 1.25 eps / 2, the authors' 5/255 at 8/255; test: eps / 4, their 2/255). Batch 128, 512 on
ImageNet. Images: 32 px on CIFAR, Tiny-ImageNet's native 64 px (what the paper's GFLOPs imply; the authors' code
resizes to 128), ImageNet 224 px crops with the 7x7 stem.
"""
from __future__ import annotations

from . import data as datalib
from . import experiments as ex
from . import paper
from .models import BACKBONES

DATASETS = ("cifar10", "cifar100", "tiny-imagenet", "imagenet")  # the paper's, in its column order
PAPER_CELLS = tuple(dict.fromkeys((d, b) for (t, d, b, *_) in paper.PAPER if t == "1"))
EPS = {"tiny-imagenet": 2 / 255, "imagenet": 2 / 255}  # Sec. 5.1; CIFAR keeps the spec defaults (8/255)

# cpu sizes per cell (base width, training images, epochs; 1k test images, PGD-20 as the ResNet-18 cell), chosen
# from the timed training iterations of results/bench/backbone-cost-cpu.json (benchmarks/backbone_cost.py);
# the reasons are on the How-to-reproduce page. A cell absent here has no cpu size: its data is not on this machine.
CPU = {
    ("cifar10", "resnet18"): dict(base_width=16),
}
CPU_DATASET = {"cifar10": "cifar10-jpeg"}  # the JPEG copy of CIFAR-10 stands in for the official files here


def check_cell(dataset: str, backbone: str) -> str | None:
    """ValueError for an unknown dataset or backbone; a note (not an error) for a pair the paper does not run."""
    datalib.check_dataset(dataset)
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; allowed: {', '.join(BACKBONES)}")
    paper_dataset = dataset.replace("cifar10-jpeg", "cifar10")
    if (paper_dataset, backbone) not in PAPER_CELLS:
        return (f"the paper has no {backbone} on {paper_dataset} (its cells: "
                f"{', '.join(f'{b} on {d}' for d, b in PAPER_CELLS if d == paper_dataset) or 'none'}); computing it anyway")
    return None


def dataset_settings(dataset: str) -> dict:
    """The fields the paper's protocol sets for `dataset` that differ from the spec defaults (CIFAR's)."""
    datalib.check_dataset(dataset)
    out = dict(dataset=dataset)
    if dataset in EPS:
        eps = EPS[dataset]
        out.update(train_eps=eps, eval_eps=eps, eval_step_size=eps / 4, **ex.train_attack(2, eps))
    return out


def settings(preset: str, dataset: str, backbone: str) -> dict:
    """The overrides of `preset` that make its specs this cell's."""
    check_cell(dataset, backbone)
    if preset == "paper":
        return dict(**dataset_settings(dataset), backbone=backbone, base_width=BACKBONES[backbone][1],
                    **(dict(batch_size=512) if dataset == "imagenet" else {}))
    if preset == "smoke":  # an eighth of the paper's widths, as the smoke ResNet-18 (8 of 64)
        return dict(**dataset_settings(CPU_DATASET.get(dataset, dataset)), backbone=backbone,
                    base_width=max(1, BACKBONES[backbone][1] // 8))
    if (dataset, backbone) not in CPU:
        raise ValueError(f"no cpu size for {backbone} on {dataset} (sized cells: "
                         f"{', '.join(f'{b} on {d}' for d, b in CPU)}); run it at the paper preset on a GPU")
    return dict(**dataset_settings(CPU_DATASET.get(dataset, dataset)), backbone=backbone, **CPU[(dataset, backbone)])


def specs(preset: str, dataset: str = "cifar10", backbone: str = "resnet18",
          seeds: tuple[int, ...] | None = None) -> list[ex.ExperimentSpec]:
    """The cell's five Table-1 rows at `preset`, every seed (AT (Sparse): the end of HYDRA's chain)."""
    return ex.table1(preset, seeds, **settings(preset, dataset, backbone))
