"""Command line: `advmoe run | autoattack | audit | verify | list | bench | book | fetch`.

Bad input ends in one line and exit status 2 before any compute. SIGINT and SIGTERM stop a run cleanly
(exit 130): temporary files are removed, finished results and the last epoch checkpoint are kept, and
the same command resumes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import time

from . import accel, cluster
from . import data as datalib
from . import distributed
from . import experiments as ex
from . import numerics


def _specs(args, every: bool = False) -> list[ex.ExperimentSpec]:
    """The preset's Table-1 slice, or with every=True every model the book shows (Fig. 1b's too); with --dataset or
    --backbone, that Table-1 cell's five rows (`advmoe.cells`)."""
    seeds = tuple(args.seeds) if args.seeds else None
    overrides = _overrides(args.set) if getattr(args, "set", None) else {}  # every spec of a chain gets them
    if getattr(args, "dataset", None) or getattr(args, "backbone", None):
        from . import cells

        dataset, backbone = args.dataset or "cifar10", args.backbone or "resnet18"
        note = cells.check_cell(dataset, backbone)
        if note:
            print(f"advmoe: note: {note}", file=sys.stderr)
        specs = ex.table1(args.preset, seeds, **{**cells.settings(args.preset, dataset, backbone), **overrides})
    elif every:
        from .report import page_specs
        specs = page_specs(args.preset, seeds, **overrides)
    else:
        specs = ex.table1(args.preset, seeds, **overrides)
    if args.only:
        specs = [s for s in specs if any(o in s.name for o in args.only)]
        if not specs:
            raise ValueError(f"--only {args.only} matches no experiment of preset {args.preset!r}; "
                             f"see: advmoe list --preset {args.preset}")
    return specs


def cmd_run(args) -> int:
    specs = _specs(args)
    ex.resolve_device(args.device)
    if distributed.launched() > 1:
        return _run_distributed(args, specs)
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


def _run_distributed(args, specs: list[ex.ExperimentSpec]) -> int:
    """One experiment trained by the processes torchrun started (`advmoe.distributed`); rank 0 reports."""
    if len(specs) != 1:
        raise ValueError(f"torchrun trains one experiment at a time; --only selects {len(specs)}: name one of "
                         f"{', '.join(s.name for s in specs[:4])}{', ...' if len(specs) > 4 else ''}")
    spec = specs[0]
    if args.executor != "local" or args.jobs != 1:
        raise ValueError("torchrun runs one experiment over its processes: drop --executor and --jobs")
    if spec.parent is not None and not (ex.result_dir(spec.parent) / "metrics.json").is_file():
        raise ValueError(f"train its parent first: advmoe run --preset {args.preset} --only {spec.parent.name}")
    distributed.setup(args.device)
    try:
        distributed.check_batch(spec.batch_size)
        if args.recompute and distributed.is_main():
            for f in ("checkpoint.pt", "metrics.json"):
                (ex.result_dir(spec) / f).unlink(missing_ok=True)
        distributed.barrier()
        stored = (ex.result_dir(spec) / "metrics.json").is_file()
        if not stored:
            ex.run(spec, args.device, progress=not args.no_progress and distributed.is_main())
        if distributed.is_main():
            m = ex.load(spec)
            print(f"{spec.name} ({spec.hash}) on {distributed.world()[1]} processes: SA {100 * m['final']['sa']:.2f}  "
                  f"RA(PGD-{spec.eval_steps}) {100 * m['final']['ra']:.2f}  train "
                  f"{m['provenance']['train_seconds_total']:.0f}s{' (stored)' if stored else ''}", flush=True)
    finally:
        distributed.teardown()
    return 0


def cmd_autoattack(args) -> int:
    from .worstcase import worst_case_eval

    specs = _specs(args, every=True)
    ex.resolve_device(args.device)
    version, n = ex.autoattack_settings(args.preset)
    print(f"AutoAttack {version}, then the worst case over every attack, on {n or 'all'} test examples per "
          f"model, {len(specs)} model(s)", flush=True)

    def report(spec, r):
        print(f"{spec.name} ({spec.hash}): RA worst case {100 * r['ra_worst']:.2f}  RA-AA {100 * r['ra_aa']:.2f}  "
              f"RA-PGD (same examples) {100 * r['ra_pgd_same_examples']:.2f}  broken by each: {r['broken_by_each']}",
              flush=True)

    ex.get_many(specs, args.device, recompute=args.recompute, progress=not args.no_progress, jobs=args.jobs,
                on_done=report, task=worst_case_eval)
    return 0


def cmd_audit(args) -> int:
    from . import audit

    specs = _specs(args, every=True)
    ex.resolve_device(args.device)
    print(f"auditing {len(specs)} model(s), {args.jobs} at a time: {audit.settings(args.preset)}", flush=True)

    def report(spec, r):
        bad, warned = audit.failed(r), audit.warned(r)
        said = ("FAILS " + ", ".join(bad) if bad else "all checks pass") + \
               (f"; AutoAttack warned on {', '.join(warned)}" if warned else "")
        print(f"{spec.name} ({spec.hash}): {said}  ({r['provenance']['seconds']:.0f}s)", flush=True)

    ex.get_many(specs, args.device, recompute=args.recompute, progress=not args.no_progress, jobs=args.jobs,
                on_done=report, task=audit.audit)
    return 0


def cmd_verify(args) -> int:
    specs = [s for s in _specs(args, every=True) if (ex.result_dir(s) / "metrics.json").is_file()]
    if not specs:
        raise ValueError(f"nothing stored to verify for preset {args.preset!r} (see: advmoe list --preset {args.preset})")
    ex.resolve_device(args.device)
    print(f"re-training {len(specs)} stored experiment(s) from scratch to compare: " +
          ", ".join(s.name for s in specs), flush=True)

    def report(spec, r):
        print(f"{spec.name} ({spec.hash}): {r['verdict']} ({r['detail']})  {r['seconds']:.0f}s", flush=True)

    results = ex.get_many(specs, args.device, progress=not args.no_progress, jobs=args.jobs, on_done=report,
                          task=_verify_task)
    return 0 if all(r["verdict"] in ("bit-identical", "within seed spread") for r in results) else 1


def _verify_task(spec, device, root, recompute, progress, position=0):
    from .verify import verify
    return verify(spec, device, root, progress)


def cmd_list(args) -> int:
    for spec in _specs(args):
        path = ex.result_dir(spec) / "metrics.json"
        print(f"{spec.name:55s} {spec.hash}  {'stored' if path.is_file() else 'not run'}")
    return 0


def cmd_bench(args) -> int:
    from .bench import main as bench_main
    if args.pin_cost:
        from .bench import pin_cost
        from .io import atomic_write_json
        result = {"widths": [pin_cost(width=w, batch=args.train_batch, rounds=args.repeats) for w in args.pin_cost]}
        for r in result["widths"]:
            for mode, ratios in r["ratio_pinned_to_native"].items():
                print(f"width {r['width']}, seconds per AT training iteration (batch {r['batch']}), pinned / {mode}: "
                      + ", ".join(f"{m} {r['seconds']['pinned'][m]:.3f} / {r['seconds'][mode][m]:.3f} = {v:.2f}x"
                                  for m, v in ratios.items()))
        if args.output:
            atomic_write_json(result, args.output)
        return 0
    if args.moe_cost:
        from .bench import moe_cost
        from .io import atomic_write_json
        result = {"widths": [moe_cost(width=w, batch=args.batch, train_batch=args.train_batch, rounds=args.repeats)
                             for w in args.moe_cost]}
        for r in result["widths"]:
            print(f"width {r['width']}: MoE / S-Dense, median of {r['rounds']} rounds: " + ", ".join(
                f"{k} {v:.2f}x (target <= {r['targets'][k]:.2f}: {'met' if v <= r['targets'][k] else 'NOT met'})"
                for k, v in r["ratio_median"].items()))
        if args.output:
            atomic_write_json(result, args.output)
        return 0
    result = bench_main(width=args.width, batch=args.batch, train_batch=args.train_batch, repeats=args.repeats,
                        output=args.output)
    if args.json:
        print(json.dumps(result, indent=1))
    return 0


def cmd_book(args) -> int:
    from . import book
    if args.preset == "gpu" and not args.no_execute:
        raise ValueError("the gpu preset has no book of its own: its stored units show on the Table 1 and Table 2 "
                         "pages of the cpu book (advmoe book); compute them on a GPU with: bash benchmarks/gpu_window.sh "
                         "run")
    if not args.no_execute:
        os.chdir(datalib.REPO)
        book.execute(args.preset, args.device, args.recompute, args.pages, jobs=args.jobs)
    if not args.no_build:
        print(f"site: {book.build()}")
    return 0


def cmd_fetch(args) -> int:
    print(f"{args.dataset} ready in {datalib.fetch(args.dataset)}")
    return 0


def _overrides(pairs: list[str]) -> dict:
    """--set key=value ... -> spec field overrides (values parsed as JSON when they can be: 3, 0.5, null)."""
    fields = [f.name for f in dataclasses.fields(ex.ExperimentSpec) if f.name != "preset"]
    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"--set expects field=value with field one of {', '.join(fields)}; got {pair!r}")
        try:
            out[key] = json.loads(text)
        except ValueError:
            out[key] = text
    return out


def _at_least(minimum: int):
    """An argparse type: an integer >= minimum (argparse turns the ValueError into one line, exit 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value
    return parse


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line (no usage block), exit status 2
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="advmoe", description="AdvMoE reproduction: train, evaluate, benchmark.")
    sub = p.add_subparsers(dest="command", required=True)

    def with_selection(q):
        q.add_argument("--preset", default="cpu", help=f"one of {', '.join(ex.PRESETS)} (default: cpu)")
        q.add_argument("--only", nargs="*", help="run only experiments whose name contains one of these strings")
        q.add_argument("--seeds", nargs="*", type=_at_least(0), help="seeds (default: the preset's)")
        q.add_argument("--dataset", help="the Table-1 cell's dataset: cifar10, cifar100, tiny-imagenet, imagenet "
                                         "(default: cifar10; with the preset's sizes, advmoe.cells)")
        q.add_argument("--backbone", help="the Table-1 cell's backbone: resnet18, wrn28-10, vgg16, densenet "
                                          "(default: resnet18)")
        q.add_argument("--set", nargs="*", metavar="FIELD=VALUE",
                       help="override experiment settings, e.g. --set epochs=4 test_subset=500 (results are stored "
                            "under their own hash)")

    def with_executor(q):
        q.add_argument("--executor", choices=cluster.EXECUTORS, default="local",
                       help="local: this machine (--jobs at a time); ray: every unit (one model: its training and "
                            "evaluations) as a Ray task (default: local; pip install -e .[cluster])")
        q.add_argument("--address", help="the Ray cluster: auto (the one this node is in) or host:port or "
                                         "ray://host:port (default: a local Ray instance, loopback only)")
        q.add_argument("--gpus-per-run", type=float, default=0.0,
                       help="GPUs per unit on Ray; a fraction lets several small trainings share one (default 0)")
        q.add_argument("--cpus-per-run", type=float, default=1.0, help="CPUs per unit on Ray (default 1)")

    def with_compute(q, what=None):
        q.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
        if what:
            q.add_argument("--recompute", action="store_true", help=f"{what} even if a result is stored")
        q.add_argument("--jobs", type=_at_least(1), default=1,
                       help="experiments at once, each on cores/jobs threads (default 1; 2 is ~25%% faster "
                            "on a 2-core CPU)")
        with_executor(q)
        q.add_argument("--no-progress", action="store_true", help="hide the progress bars")
        q.add_argument("--native-numerics", action="store_true",
                       help="let torch pick this CPU's fastest kernels and threads instead of the pinned, "
                            "bit-reproducible ones (results record it; see advmoe.numerics)")
        q.add_argument("--allow-dirty", action="store_true",
                       help="store results computed from uncommitted code (recorded as git_dirty)")

    q = sub.add_parser("run", help="train and evaluate the Table-1 slice of a preset (stored results are reused)")
    with_selection(q)
    with_compute(q, "retrain from scratch")
    q.set_defaults(func=cmd_run)

    q = sub.add_parser("autoattack", help="RA under AutoAttack (Table 2) and the worst case over every attack "
                                          "(the headline RA) of every model the book shows, stored")
    with_selection(q)
    with_compute(q, "re-run the attack")
    q.set_defaults(func=cmd_autoattack)

    q = sub.add_parser("audit", help="the gradient-masking audit of every model the book shows, stored")
    with_selection(q)
    with_compute(q, "re-run the audit")
    q.set_defaults(func=cmd_audit)

    q = sub.add_parser("verify", help="re-train stored experiments from scratch and compare (bit-identical / "
                                      "within seed spread / outside it)")
    with_selection(q)
    with_compute(q)
    q.set_defaults(func=cmd_verify)

    q = sub.add_parser("list", help="list a preset's experiments and whether they are stored")
    with_selection(q)
    q.set_defaults(func=cmd_list)

    q = sub.add_parser("bench", help="wall-clock of Dense, S-Dense, sparse MoE and the dense+mask reference")
    q.add_argument("--width", type=_at_least(1), default=64, help="ResNet-18 base width (default: 64, the paper's)")
    q.add_argument("--batch", type=_at_least(1), default=256, help="inference batch size (default: 256)")
    q.add_argument("--train-batch", type=_at_least(2), default=128, help="training batch size (default: 128)")
    q.add_argument("--repeats", type=_at_least(1), default=5, help="timed rounds (default: 5)")
    q.add_argument("--pin-cost", nargs="+", type=_at_least(1), metavar="WIDTH",
                   help="instead: time AT training iterations pinned vs native numerics at these base widths "
                        "(one process per mode and round, interleaved; --repeats rounds)")
    q.add_argument("--moe-cost", nargs="+", type=_at_least(1), metavar="WIDTH",
                   help="instead: time sparse MoE against S-Dense (training iteration, inference) at these base widths "
                        "(one process per round, --repeats rounds)")
    q.add_argument("--output", help="also write the result as JSON to this file")
    q.add_argument("--json", action="store_true", help="print the result as JSON")
    q.set_defaults(func=cmd_bench)

    q = sub.add_parser("book", help="execute the notebooks with papermill (reusing stored results) and build the site")
    q.add_argument("--preset", default="cpu", help=f"one of {', '.join(ex.PRESETS)} (default: cpu)")
    q.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    q.add_argument("--recompute", action="store_true", help="retrain and re-evaluate instead of loading results")
    q.add_argument("--jobs", type=_at_least(1), default=1, help="experiments trained at once when some must be (default 1)")
    with_executor(q)
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
    signal.signal(signal.SIGTERM, ex._interrupt)
    if getattr(args, "native_numerics", False) and numerics.mode() != "native":
        # the kernels are chosen when torch first runs one: start again with the pin off from the beginning
        os.environ[numerics.SWITCH] = "native"
        for k in numerics.PIN:
            os.environ.pop(k, None)
        os.execv(sys.executable, [sys.executable, "-m", "advmoe", *(sys.argv[1:] if argv is None else argv)])
    if getattr(args, "allow_dirty", False):
        os.environ[ex.ALLOW_DIRTY] = "1"
    try:
        numerics.check()
        if hasattr(args, "device"):  # ADVMOE_ACCEL checked before any compute (advmoe.accel), for the device's type
            import torch
            gpu = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
            accel.for_device("cuda" if gpu else "cpu")
        executor = getattr(args, "executor", "local")
        settings = (getattr(args, "address", None), getattr(args, "gpus_per_run", 0.0),
                    getattr(args, "cpus_per_run", 1.0), getattr(args, "device", "cpu"))
        if executor == "local":
            cluster.check(executor, *settings)
            return args.func(args)
        if args.jobs != 1:
            raise ValueError("--jobs runs units on this machine; on Ray, --cpus-per-run and --gpus-per-run decide "
                             "how many run at once: drop --jobs")
        with cluster.executor(executor, *settings):
            return args.func(args)
    except cluster.UnitsFailed as e:
        print(f"advmoe: error: {e}", file=sys.stderr)
        return 1
    except (ValueError, datalib.DataMissingError, FileNotFoundError) as e:
        print(f"advmoe: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("advmoe: interrupted; finished results and the last epoch checkpoint are kept; "
              "re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
