"""Command line: `advmoe run | list | bench | fetch`; bad input ends in one line and exit status 2."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from . import data as datalib
from . import experiments as ex


def _specs(args) -> list[ex.ExperimentSpec]:
    seeds = tuple(args.seeds) if args.seeds else None
    specs = ex.table1(args.preset, seeds)
    if args.only:
        specs = [s for s in specs if any(o in s.name for o in args.only)]
        if not specs:
            raise ValueError(f"--only {args.only} matches no experiment of preset {args.preset!r}; "
                             f"see: advmoe list --preset {args.preset}")
    return specs


def cmd_run(args) -> int:
    specs = _specs(args)
    ex.resolve_device(args.device)
    t0 = time.perf_counter()
    print(f"{len(specs)} experiment(s), {args.jobs} at a time: " + ", ".join(s.name for s in specs), flush=True)

    def report(spec, m):
        f = m["final"]
        print(f"{spec.name} ({spec.hash}): SA {100 * f['sa']:.2f}  RA(PGD-{spec.eval_steps}) {100 * f['ra']:.2f}  "
              f"GFLOPs {f['gflops']:.4f}  train {m['provenance']['train_seconds_total']:.0f}s  "
              f"eval {m['provenance']['eval_seconds']:.0f}s  "
              f"sanity {'ok' if all(f['sanity'].values()) else 'FAILED ' + str(f['sanity'])}", flush=True)

    ex.get_many(specs, args.device, recompute=args.recompute, progress=not args.no_progress, jobs=args.jobs,
                on_done=report)
    print(f"done: {len(specs)} experiment(s) in {time.perf_counter() - t0:.0f}s", flush=True)
    return 0


def cmd_autoattack(args) -> int:
    specs = _specs(args)
    version, n = ex.autoattack_settings(args.preset)
    print(f"AutoAttack {version} on {n or 'all'} test examples per model, {len(specs)} model(s)", flush=True)
    for spec in specs:
        r = ex.autoattack_eval(spec, args.device, recompute=args.recompute, progress=not args.no_progress)
        print(f"{spec.name} ({spec.hash}): RA-AA {100 * r['ra_aa']:.2f}  RA-PGD-{r['pgd_steps']} (same examples) "
              f"{100 * r['ra_pgd_same_examples']:.2f}  {r['seconds']:.0f}s ({r['library']})", flush=True)
    return 0


def cmd_list(args) -> int:
    for spec in _specs(args):
        path = ex.result_dir(spec) / "metrics.json"
        print(f"{spec.name:55s} {spec.hash}  {'stored' if path.is_file() else 'not run'}")
    return 0


def cmd_bench(args) -> int:
    from .bench import main as bench_main
    result = bench_main(width=args.width, batch=args.batch, train_batch=args.train_batch, repeats=args.repeats,
                        output=args.output)
    if args.json:
        print(json.dumps(result, indent=1))
    return 0


def cmd_book(args) -> int:
    from . import book
    if not args.no_execute:
        os.chdir(datalib.REPO)
        book.execute(args.preset, args.device, args.recompute, args.pages, jobs=args.jobs)
    if not args.no_build:
        print(f"site: {book.build()}")
    return 0


def cmd_fetch(args) -> int:
    print(f"{args.dataset} ready in {datalib.fetch(args.dataset)}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="advmoe", description="AdvMoE reproduction: train, evaluate, benchmark.")
    sub = p.add_subparsers(dest="command", required=True)

    def with_selection(q):
        q.add_argument("--preset", default="cpu", help=f"one of {', '.join(ex.PRESETS)} (default: cpu)")
        q.add_argument("--only", nargs="*", help="run only experiments whose name contains one of these strings")
        q.add_argument("--seeds", nargs="*", type=int, help="seeds (default: the preset's)")

    q = sub.add_parser("run", help="train and evaluate the Table-1 slice of a preset (stored results are reused)")
    with_selection(q)
    q.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    q.add_argument("--recompute", action="store_true", help="retrain from scratch even if a result is stored")
    q.add_argument("--jobs", type=int, default=1,
                   help="experiments trained at once, each on cores/jobs threads (default 1; 2 is ~25%% faster "
                        "on a 2-core CPU)")
    q.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    q.set_defaults(func=cmd_run)

    q = sub.add_parser("autoattack", help="RA under AutoAttack (Table 2) of a preset's Table-1 models, stored")
    with_selection(q)
    q.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    q.add_argument("--recompute", action="store_true", help="re-run the attack even if a result is stored")
    q.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    q.set_defaults(func=cmd_autoattack)

    q = sub.add_parser("list", help="list a preset's experiments and whether they are stored")
    with_selection(q)
    q.set_defaults(func=cmd_list)

    q = sub.add_parser("bench", help="wall-clock of Dense, S-Dense, sparse MoE and the dense+mask reference")
    q.add_argument("--width", type=int, default=64, help="ResNet-18 base width (default: 64, the paper's)")
    q.add_argument("--batch", type=int, default=256, help="inference batch size (default: 256)")
    q.add_argument("--train-batch", type=int, default=128, help="training batch size (default: 128)")
    q.add_argument("--repeats", type=int, default=5, help="timed rounds (default: 5)")
    q.add_argument("--output", help="also write the result as JSON to this file")
    q.add_argument("--json", action="store_true", help="print the result as JSON")
    q.set_defaults(func=cmd_bench)

    q = sub.add_parser("book", help="execute the notebooks with papermill (reusing stored results) and build the site")
    q.add_argument("--preset", default="cpu", help=f"one of {', '.join(ex.PRESETS)} (default: cpu)")
    q.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    q.add_argument("--recompute", action="store_true", help="retrain and re-evaluate instead of loading results")
    q.add_argument("--jobs", type=int, default=1, help="experiments trained at once when some must be (default 1)")
    q.add_argument("--pages", nargs="*", help="execute only these notebooks (paths from the repository root)")
    q.add_argument("--no-execute", action="store_true", help="only build the site from the stored notebooks")
    q.add_argument("--no-build", action="store_true", help="only execute the notebooks")
    q.set_defaults(func=cmd_book)

    q = sub.add_parser("fetch", help="put a dataset under data/ (unpack the shared JPEG copy or download)")
    q.add_argument("dataset", help=f"one of {', '.join(datalib.DATASETS)}")
    q.set_defaults(func=cmd_fetch)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, datalib.DataMissingError, FileNotFoundError) as e:
        print(f"advmoe: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("advmoe: interrupted; finished experiments and the last epoch checkpoint are kept, re-run to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
