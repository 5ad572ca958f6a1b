"""What a Table-1 cell costs on this machine, per backbone, dataset and base width: seconds of one training
iteration (batch 128, TRADES with PGD-2, one pinned thread, interleaved rounds: `advmoe.bench.iteration_seconds`)
of each of the cell's trainings (AT (Dense), AT (S-Dense), HYDRA's mask stage, AT (MoE), AdvMoE; HYDRA's
fine-tuning is an AT (S-Dense) iteration), and from them the training minutes of one seed of the cell at the cpu
preset's 5,000 images and 8 epochs. What sizes the cpu cells of `advmoe.cells`.

The Robust Experts chapter's AT (Dense) PGD-7 iteration is timed in the same rounds: its ratio to the value stored
in results/bench/robust-experts-cost-cpu.json (an idle machine) says how loaded this machine was, and every time is
also given divided by it. Stored in results/bench/backbone-cost-cpu.json.

    python benchmarks/backbone_cost.py [--repeats 2]
"""
import argparse

from advmoe import bench, cells, numerics, robust
from advmoe import experiments as ex
from advmoe.data import REPO
from advmoe.flops import gflops
from advmoe.io import atomic_write_json

# (dataset, backbone, base width): the paper's widths times 1/8, 1/4, 1/2 or 1, where the facts file's FLOPs
# estimate (../shared/papers/advmoe-backbones-facts.md Sec. 4) leaves a cell within a few cpu hours
CANDIDATES = [
    ("cifar10", "resnet18", 16),
    ("cifar10", "wrn28-10", 2), ("cifar10", "wrn28-10", 4),
    ("cifar10", "vgg16", 16), ("cifar10", "vgg16", 32),
    ("cifar10", "densenet", 12), ("cifar10", "densenet", 24),
    ("tiny-imagenet", "resnet18", 8), ("tiny-imagenet", "resnet18", 16),
    ("tiny-imagenet", "wrn28-10", 2),
]
IMAGES, EPOCHS = 5_000, 8  # the cpu preset's ResNet-18 cell


def cell_specs(dataset: str, backbone: str, width: int) -> dict:
    """The five trainings a cell runs, as specs at the cpu preset with this width."""
    over = dict(**cells.dataset_settings("cifar10-jpeg" if dataset == "cifar10" else dataset), backbone=backbone,
                base_width=width)
    sparse = ex.hydra_chain("cpu", 0.5, finetune=False, **over)
    return {"AT (Dense)": ex.make_spec("cpu", "dense", "at", 1.0, **over),
            "AT (S-Dense)": ex.make_spec("cpu", "s-dense", "at", 0.5, **over),
            "HYDRA mask": sparse,
            "AT (MoE)": ex.make_spec("cpu", "moe", "at", 0.5, **over),
            "AdvMoE": ex.make_spec("cpu", "moe", "advmoe", 0.5, **over)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    numerics.use_pinned_threads()
    specs = {c: cell_specs(*c) for c in CANDIDATES}
    anchor = robust.spec("cpu", "dense")
    seconds = bench.iteration_seconds([anchor, *(s for row in specs.values() for s in row.values())],
                                      repeats=args.repeats)
    load = bench.load_factor(seconds, anchor, "cpu")
    iterations = IMAGES // 128
    rows = []
    for (dataset, backbone, width), row in specs.items():
        per = {label: seconds[bench.config(s)] / load for label, s in row.items()}
        # AT (Sparse) = HYDRA's mask stage and its fine-tuning (an S-Dense iteration), over AT (Dense)'s weights
        trainings = per["AT (Dense)"] + 2 * per["AT (S-Dense)"] + per["HYDRA mask"] + per["AT (MoE)"] + per["AdvMoE"]
        size = 64 if dataset == "tiny-imagenet" else 32
        dense = row["AT (Dense)"]
        rows.append(dict(dataset=dataset, backbone=backbone, base_width=width,
                         gflops_dense=gflops(ex.model_for(dense), (3, size, size)),
                         idle_seconds_per_iteration=per,
                         idle_minutes_per_seed=trainings * iterations * EPOCHS / 60))
        print(f"{backbone} on {dataset}, width {width}: " + ", ".join(f"{k} {v:.2f}" for k, v in per.items())
              + f" s/iteration idle; one seed of the cell {rows[-1]['idle_minutes_per_seed']:.0f} min "
              f"({IMAGES} images, {EPOCHS} epochs)")
    path = REPO / "results" / "bench" / "backbone-cost-cpu.json"
    atomic_write_json({"images": IMAGES, "epochs": EPOCHS, "batch_size": 128, "load_factor": load, "rows": rows,
                       "provenance": ex.provenance(ex.resolve_device("cpu"))}, path)
    print(f"stored in {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
