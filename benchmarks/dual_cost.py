"""What the dual-model chapter costs at a preset: seconds per training iteration of each of its training methods
(one pinned thread, interleaved rounds: `advmoe.bench.iteration_seconds`), and seconds per image and attack step
of the evaluation's PGD on a network MoE, on the dual model, and on the soft-routing surrogate of the dual model
(every expert of both MoEs). Stored in results/bench/dual-model-cost-<preset>.json; what sizes the cpu preset.

The AT (Dense) PGD-7 iteration of the Robust Experts chapter is timed in the same rounds: its ratio to the value
stored in results/bench/robust-experts-cost-<preset>.json (an idle machine) says how loaded this machine was, and
every time is also given divided by it.

    python benchmarks/dual_cost.py --preset cpu
"""
import argparse
import time

import torch

from advmoe import bench, dual, numerics, robust
from advmoe.attacks import pgd
from advmoe.data import REPO
from advmoe.experiments import model_for, provenance, resolve_device
from advmoe.io import atomic_write_json
from advmoe.models import DualModel, soft_routing


def attack_seconds(model, n: int = 64, steps: int = 5, repeats: int = 3) -> float:
    """Median seconds per image and PGD step on `model` (eval mode, random images)."""
    x, y = torch.rand(n, 3, 32, 32), torch.randint(0, 10, (n,))
    model.eval()
    pgd(model, x, y, 8 / 255, 2 / 255, 1)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        pgd(model, x, y, 8 / 255, 2 / 255, steps)
        times.append((time.perf_counter() - t) / (n * steps))
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    numerics.use_pinned_threads()
    specs = {label: dual.model_spec(args.preset, label) for label in dual.MODELS}
    anchor = robust.spec(args.preset, "dense")
    seconds = bench.iteration_seconds([*specs.values(), anchor], repeats=args.repeats)
    load = bench.load_factor(seconds, anchor, args.preset)
    rows = []
    for label, spec in specs.items():
        per_iteration = seconds[bench.config(spec)]
        iterations = spec.train_subset // spec.batch_size if spec.train_subset else None
        per_epoch = per_iteration * iterations if iterations else None
        rows.append(dict(model=label, method=spec.method, seconds_per_iteration=per_iteration,
                         seconds_per_epoch=per_epoch, idle_seconds_per_epoch=per_epoch / load if per_epoch else None,
                         idle_training_minutes=per_epoch * spec.epochs / load / 60 if per_epoch else None))
        print(f"{label} ({spec.method}): {per_iteration:.2f} s per iteration; idle estimate "
              f"{per_epoch / load:.0f} s per epoch, {per_epoch * spec.epochs / load / 60:.1f} min for "
              f"{spec.epochs} epochs" if per_epoch else f"{label}: {per_iteration:.2f} s per iteration")
    torch.manual_seed(0)
    moe, other = model_for(specs["ST MoE"]), model_for(specs["ST MoE"])
    pair = DualModel(moe, other, dual.PAPER_ALPHA)
    steps = {"network MoE": attack_seconds(moe), "dual model": attack_seconds(pair)}
    with soft_routing(pair):
        steps["dual model, soft routing"] = attack_seconds(pair)
    for name, s in steps.items():
        print(f"attack step on the {name}: {1e3 * s:.2f} ms per image here, {1e3 * s / load:.2f} ms idle")
    path = REPO / "results" / "bench" / f"dual-model-cost-{args.preset}.json"
    atomic_write_json({"preset": args.preset, "load_factor": load, "rows": rows,
                       "attack_step_seconds_per_image": steps,
                       "provenance": provenance(resolve_device("cpu"))}, path)
    print(f"stored in {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
