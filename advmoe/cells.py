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
FIG1B_ST = (("ST (Dense)", "dense", "standard", 1.0), ("ST (S-Dense)", "s-dense", "standard", 0.5),
            ("ST (MoE)", "moe", "standard", 0.5))  # Fig. 1b's standard-trained models, CIFAR-10 cells only
PAPER_CELLS = tuple(dict.fromkeys((d, b) for (t, d, b, *_) in paper.PAPER if t == "1"))
EPS = {"tiny-imagenet": 2 / 255, "imagenet": 2 / 255}  # Sec. 5.1; CIFAR keeps the spec defaults (8/255)

# cpu sizes per cell, chosen from the timed training iterations of results/bench/backbone-cost-cpu.json
# (benchmarks/backbone_cost.py: idle minutes of one seed's six trainings at 5,000 images and 8 epochs). Everything
# else is the cpu preset's (8 epochs, batch 128, PGD-20 on a balanced 1,000-image test subset, AutoAttack and the
# worst case on 200). A cell absent here has no cpu size: CIFAR-100 and ImageNet are not on this machine, and
# Tiny-ImageNet's WRN-28-10 costs 384 min per seed at an eighth of its width.
CPU = {
    ("cifar10", "resnet18"): dict(base_width=16),  # 35 min per seed
    ("cifar10", "vgg16"): dict(base_width=16),  # a quarter of the paper's widths, as ResNet-18's: 19 min
    ("cifar10", "wrn28-10"): dict(base_width=2),  # an eighth (stem 2, groups 20/40/80): 93 min; a quarter: 215
    ("cifar10", "densenet"): dict(base_width=12),  # half (k = 6): 93 min, its many small layers cost more than FLOPs
    # Tiny-ImageNet: 200 classes need more than the 25 images per class of 5,000: 50 per class, 10 per class tested;
    # an eighth of the widths at its 64 px costs what a quarter costs at 32 px (59 min per 5,000 images)
    ("tiny-imagenet", "resnet18"): dict(base_width=8, train_subset=10_000, test_subset=2_000),
}
CPU_SEEDS = {("cifar10", "densenet"): (0,), ("tiny-imagenet", "resnet18"): (0,)}  # one seed: plotted, not decided
# The cpu cells the book's pages compute: the others of `CPU` enter when their units are stored (benchmarks/units.py
# cells), since every page is executed at the cpu preset by `make book` and in CI.
BOOK = (("cifar10", "resnet18"),)
CPU_DATASET = {"cifar10": "cifar10-jpeg"}  # the JPEG copy of CIFAR-10 stands in for the official files here
GPU_CELL = ("cifar10", "resnet18")  # the gpu preset's one cell (advmoe.gpupreset)


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
    if preset == "gpu":  # the paper's regime for ResNet-18 on CIFAR-10 only (advmoe.gpupreset)
        if (dataset, backbone) != GPU_CELL:
            raise ValueError(f"the gpu preset computes ResNet-18 on CIFAR-10 only; run {backbone} on {dataset} at the "
                             f"paper preset: advmoe run --preset paper --dataset {dataset} --backbone {backbone} "
                             f"--device cuda")
        return dict(**dataset_settings(CPU_DATASET.get(dataset, dataset)), backbone=backbone)
    if preset == "smoke":  # an eighth of the paper's widths, as the smoke ResNet-18 (8 of 64)
        return dict(**dataset_settings(CPU_DATASET.get(dataset, dataset)), backbone=backbone,
                    base_width=max(1, BACKBONES[backbone][1] // 8))
    if (dataset, backbone) not in CPU:
        raise ValueError(f"no cpu size for {backbone} on {dataset} (sized cells: "
                         f"{', '.join(f'{b} on {d}' for d, b in CPU)}); run it at the paper preset on a GPU")
    return dict(**dataset_settings(CPU_DATASET.get(dataset, dataset)), backbone=backbone, **CPU[(dataset, backbone)])


def cell_seeds(preset: str, dataset: str, backbone: str) -> tuple[int, ...]:
    """The preset's seeds, or the one seed a cpu cell can afford (`CPU_SEEDS`)."""
    paper_dataset = dataset.replace("cifar10-jpeg", "cifar10")
    return CPU_SEEDS.get((paper_dataset, backbone), ex.preset_seeds(preset)) if preset == "cpu" else \
        ex.preset_seeds(preset)


def specs(preset: str, dataset: str = "cifar10", backbone: str = "resnet18",
          seeds: tuple[int, ...] | None = None) -> list[ex.ExperimentSpec]:
    """The cell's five Table-1 rows at `preset`, for its seeds (`cell_seeds`) or the given ones (AT (Sparse): the end
    of HYDRA's chain)."""
    return ex.table1(preset, seeds or cell_seeds(preset, dataset, backbone), **settings(preset, dataset, backbone))


def page_models(preset: str, dataset: str, backbone: str, seeds: tuple[int, ...] | None = None) -> list:
    """Every model the pages read in a cell: its Table-1 rows and, on CIFAR-10, Fig. 1b's standard-trained ones."""
    st = [ex.make_spec(preset, kind, method, scale, seed=seed, **settings(preset, dataset, backbone))
          for _, kind, method, scale in FIG1B_ST for seed in seeds or cell_seeds(preset, dataset, backbone)]
    return specs(preset, dataset, backbone, seeds) + (st if dataset == "cifar10" else [])


def plan(preset: str = "cpu", more: bool = True) -> list[ex.ExperimentSpec]:
    """Every model of the sized cells the book does not show yet (more=False: only the cells whose verdicts are
    read, with every seed): what `benchmarks/units.py cells` computes, each unit one model with every evaluation
    the pages read (`unit`)."""
    return [s for d, b in CPU if (d, b) not in BOOK and (more or (d, b) not in CPU_SEEDS)
            for s in page_models(preset, d, b)]


def unit(spec: ex.ExperimentSpec, device: str = "cpu", root=None, recompute: bool = False, progress: bool = True,
         position: int = 0) -> dict:
    """One model and every evaluation the pages read of it: training with PGD, AutoAttack and the worst case over
    every attack (Tables 1 and 2, Fig. 1b), and for the preset's first seed the robustness audit."""
    from . import audit
    from .worstcase import worst_case_eval

    out = ex.get(spec, device, root, recompute=recompute, progress=progress, position=position)
    worst_case_eval(spec, device, root, progress=progress)
    if spec.seed == ex.preset_seeds(spec.preset)[0]:
        audit.audit(spec, device, root, progress=progress)
    return out


def precompute(preset: str, device: str = "cpu", jobs: int = 1, progress: bool = True, specs: list | None = None,
               on_done=None) -> None:
    """Train and evaluate every model of `plan` (or `specs`) not stored yet, `jobs` at a time."""
    ex.get_many(plan(preset) if specs is None else specs, device, progress=progress, jobs=jobs, task=unit,
                on_done=on_done)
