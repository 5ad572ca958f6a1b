"""Compute the Robust Experts chapter's models in units (one model: training and every evaluation of it), `--jobs`
at a time; stored units are skipped. Each finished unit prints its name and measured worker-minutes, so a session
can commit it as soon as it is done.

    python benchmarks/robust_units.py --preset cpu --seeds 0 --jobs 2
    python benchmarks/robust_units.py --preset cpu --seeds 0 --grid     # then the rest of the grid, one seed
"""
import argparse
import sys
import time

from advmoe import experiments as ex
from advmoe import robust



def done(spec, result):
    minutes = sum(ex.read_json(p)["provenance"].get("seconds", 0) or 0 for p in ex.result_dir(spec).glob("*.json")
                  if p.name != "metrics.json") / 60
    metrics = ex.load(spec)
    train = (metrics["provenance"]["train_seconds_total"] + metrics["provenance"]["eval_seconds"]) / 60
    print(f"done {spec.name} ({spec.hash}): SA {100 * metrics['final']['sa']:.1f}  RA-PGD "
          f"{100 * metrics['final']['ra']:.1f}  AutoPGD {100 * result['autopgd']['ra']:.1f}; "
          f"{train + minutes:.1f} worker-min; {time.perf_counter() - START:.0f}s since start", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--seeds", type=int, nargs="*", help="only these seeds (default: the preset's)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--grid", action="store_true", help="then the rest of the grid (robust.GRID_MODELS, first seed)")
    args = parser.parse_args()
    try:
        specs = [s for s in robust.plan(args.preset, args.grid) if args.seeds is None or s.seed in args.seeds]
    except ValueError as e:
        sys.exit(f"robust_units.py: error: {e}")
    print(f"{len(specs)} unit(s), {args.jobs} at a time: " + ", ".join(s.name for s in specs), flush=True)
    ex.get_many(specs, args.device, progress=False, jobs=args.jobs, task=robust.unit, on_done=done)


START = time.perf_counter()
if __name__ == "__main__":  # the workers are spawned: they import this file, and must not run it
    main()
