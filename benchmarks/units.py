"""Compute a chapter's models in units (one model: training and every evaluation of it), `--jobs` at a time; stored
units are skipped. Each finished unit prints its name and measured worker-minutes, so a session can commit it as soon
as it is done. Chapters: robust (Robust Experts: the verdict models, then with --more the rest of the grid, one seed),
dual (the dual-model paper: the verdict models, then with --more the ablations, one seed) and cells (Table 1's cells
sized for the cpu preset and not yet in the book: the cells read with 3 seeds, then with --more the one-seed ones).

    python benchmarks/units.py robust --preset cpu --seeds 0 --jobs 2
    python benchmarks/units.py dual --preset cpu --more
    python benchmarks/units.py cells --preset cpu --more --only vgg16
    python benchmarks/units.py dual --jobs 1 --only jtdmoe    # one lane for the longest units, another for the rest
"""
import argparse
import re
import sys
import time

from advmoe import cells, dual, robust
from advmoe import experiments as ex

CHAPTERS = {"robust": robust, "dual": dual, "cells": cells}


def done(spec, result):
    seconds = sum(ex.read_json(p)["provenance"].get("seconds", 0) or 0 for p in ex.result_dir(spec).glob("*.json")
                  if p.name != "metrics.json")
    metrics = ex.load(spec)
    seconds += metrics["provenance"]["train_seconds_total"] + metrics["provenance"]["eval_seconds"]
    print(f"done {spec.name} ({spec.hash}): SA {100 * metrics['final']['sa']:.1f}  RA-PGD "
          f"{100 * metrics['final']['ra']:.1f}; {seconds / 60:.1f} worker-min; "
          f"{time.perf_counter() - START:.0f}s since start", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chapter", choices=CHAPTERS)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--seeds", type=int, nargs="*", help="only these seeds (default: the preset's)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--more", action="store_true", help="the chapter's one-seed models too (grid, ablations)")
    parser.add_argument("--only", metavar="REGEX", help="only the units whose name matches (re.search)")
    args = parser.parse_args()
    chapter = CHAPTERS[args.chapter]
    try:
        specs = [s for s in chapter.plan(args.preset, args.more) if args.seeds is None or s.seed in args.seeds]
        only = re.compile(args.only) if args.only else None
    except re.error as e:
        print(f"units.py: error: --only {args.only!r} is not a regular expression ({e}); quote it, e.g. 'jtdmoe'",
              file=sys.stderr)
        sys.exit(2)
    except ValueError as e:
        print(f"units.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    specs = [s for s in specs if only is None or only.search(s.name)]
    if not specs:
        print(f"units.py: error: no unit of {args.chapter} at {args.preset} matches --only {args.only!r}; "
              "list them with --only .", file=sys.stderr)
        sys.exit(2)
    print(f"{len(specs)} unit(s), {args.jobs} at a time: " + ", ".join(s.name for s in specs), flush=True)
    chapter.precompute(args.preset, args.device, args.jobs, progress=False, specs=specs, on_done=done)


START = time.perf_counter()
if __name__ == "__main__":  # the workers are spawned: they import this file, and must not run it
    main()
