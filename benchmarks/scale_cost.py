"""The cost of the scale pages (Fig. 7, Fig. 8 / Table A2, Table A1) at a preset, from measured numbers.

Every model those pages read (`advmoe.scale.plan`) gets its worker-minutes per evaluation part: measured where
its result is stored, else estimated from the measured cost of the preset's Table-1 model of the same kind and
method, scaled by the ratio of their training-iteration times, timed here (`advmoe.scale.estimate`). Prints the
new compute per page and in all (worker-minutes, and hours on `--workers` one-thread workers), and stores the
table with its provenance in results/<preset>/scale-cost.json.

    python benchmarks/scale_cost.py [--preset cpu] [--workers 2] [--reuse]   (--reuse: the stored iteration times)
"""
from __future__ import annotations

import argparse
import json

import torch

from advmoe import bench, experiments as ex, numerics, scale
from advmoe.io import atomic_write_json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cpu", choices=ex.PRESETS)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--reuse", action="store_true", help="reuse the iteration times stored by an earlier run")
    args = p.parse_args()
    numerics.use_pinned_threads()
    path = ex.results_root() / args.preset / "scale-cost.json"
    seconds = None
    if args.reuse:
        if not path.is_file():
            raise SystemExit(f"--reuse: no stored iteration times in {path}; run once without --reuse")
        seconds = {tuple(row["config"]): row["seconds"] for row in json.loads(path.read_text())["iteration_seconds"]}
    rows, seconds = scale.estimate(args.preset, seconds)
    new = rows[~rows.stored]
    by_page = new.groupby("page").minutes.sum()
    for page, minutes in by_page.items():
        print(f"{page:6s} new compute {minutes:7.1f} worker-min  ({(~rows.stored & (rows.page == page)).sum()} parts)")
    total = new.minutes.sum()
    print(f"all    new compute {total:7.1f} worker-min = {total / 60 / args.workers:.2f} h on {args.workers} workers")
    if len(new):
        print(new.groupby(["page", "model"]).minutes.sum().round(1).to_string())
    atomic_write_json({"preset": args.preset, "workers": args.workers, "new_worker_minutes": total,
                       "new_worker_minutes_by_page": by_page.to_dict(), "rows": rows.to_dict("records"),
                       "iteration_seconds": [{"config": list(k), "seconds": v} for k, v in seconds.items()],
                       "provenance": ex.provenance(torch.device("cpu"))}, path)


if __name__ == "__main__":
    main()
