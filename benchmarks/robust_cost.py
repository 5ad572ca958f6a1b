"""Seconds per training iteration and per epoch of every Robust Experts verdict model at a preset (one pinned
thread, interleaved rounds: `advmoe.bench.iteration_seconds`), stored in results/bench/robust-experts-cost-<preset>.json.
What sizes the chapter's cpu grid: a unit is its training plus every evaluation of it.

    python benchmarks/robust_cost.py --preset cpu
"""
import argparse

from advmoe import bench, numerics, robust
from advmoe.data import REPO
from advmoe.experiments import provenance, resolve_device
from advmoe.io import atomic_write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    numerics.use_pinned_threads()
    specs = {label: robust.spec(args.preset, kind, **fields) for label, (kind, fields) in robust.VERDICT_MODELS.items()}
    seconds = bench.iteration_seconds(list(specs.values()), repeats=args.repeats)
    rows = []
    for label, spec in specs.items():
        per_iteration = seconds[bench.config(spec)]
        per_epoch = per_iteration * (spec.train_subset // spec.batch_size)
        rows.append(dict(model=label, seconds_per_iteration=per_iteration, seconds_per_epoch=per_epoch,
                         training_minutes=per_epoch * spec.epochs / 60))
        print(f"{label}: {per_iteration:.2f} s per iteration, {per_epoch:.0f} s per epoch, "
              f"{per_epoch * spec.epochs / 60:.1f} min of training")
    path = REPO / "results" / "bench" / f"robust-experts-cost-{args.preset}.json"
    atomic_write_json({"preset": args.preset, "rows": rows, "provenance": provenance(resolve_device("cpu"))}, path)
    print(f"stored in {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
