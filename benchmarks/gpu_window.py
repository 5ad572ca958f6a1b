"""One GPU window for issue 22, in one call: check, time, size, compute.

1. sync: one training iteration of every Table-1 method (paper width, static MoE execution) under
   torch.cuda.set_sync_debug_mode("error"): any host read fails it (the dry run checks on the meta device instead);
2. step: training images/s of AT (Dense), AT (S-Dense), AT (MoE) and AdvMoE at the gpu preset's width and batch, and
   PGD-20 images/s, for each `CONFIGS` entry (eager; torch.compile with CUDA graphs; that plus channels_last and
   bf16), each in its own process with a time limit, so a failing or slow compile costs only its own minutes;
3. concurrency: K = 1, 2, 4, 8 processes training AT (MoE) at once on the GPU (`--jobs K --device cuda`), aggregate
   images/s, and the K that gives most;
4. sizing: the gpu preset's epochs from those speeds (`advmoe.gpupreset.size`), written to
   results/bench/gpu-preset.json unless a sizing is stored (E is in every gpu result's hash);
5. units: the gpu preset's Table-1 slice, seed by seed, K at a time with the fastest configuration (ADVMOE_ACCEL),
   each unit trained and evaluated (metrics, AutoAttack, the worst case) until the minutes run out.

Everything it measures goes to OUT/gpu-window.json after every phase (a timeout keeps what is done) and the stored
results to OUT/gpu-results.tar.gz (metrics and evaluations, no checkpoints; with results/bench/gpu-preset.json and
gpu-window.json, which the book reads), to be unpacked at the repository's root and committed:

    python benchmarks/gpu_window.py --out $OUT --minutes 8       (the GPU machine; data: advmoe fetch cifar10-jpeg)
    python benchmarks/gpu_window.py --out DIR --dry-run          (a CPU, the smoke preset, a few minutes: the test)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from advmoe import accel, gpupreset  # noqa: E402  (before torch: it pins the CPU kernels, advmoe.numerics)
from advmoe import experiments as ex  # noqa: E402
from advmoe.io import atomic_write_json  # noqa: E402

import torch  # noqa: E402

CONFIGS = {"eager": "", "graphs": "compile=reduce-overhead", "graphs+bf16": "compile=reduce-overhead,channels_last,bf16"}
TIMED = ("AT (Dense)", "AT (S-Dense)", "AT (MoE)", "AdvMoE")
MODELS = tuple(row[0] for row in ex.TABLE1)
DRY_RUN_UNITS = ("AT (S-Dense)", "AT (MoE)")  # the dry run's units: one dense and one MoE model, seconds each
KS = (1, 2, 4, 8)


def _spec(preset: str, label: str) -> ex.ExperimentSpec:
    _, kind, method, scale = next(row for row in ex.TABLE1 if row[0] == label)
    return ex.row_spec(preset, kind, method, scale)


def _model(spec, device, settings: accel.Accel):
    from advmoe.bench import mixed_routing

    torch.manual_seed(0)
    return accel.prepare(mixed_routing(ex.model_for(spec)), device, settings)  # every MoE layer splits its batch


def _batch(spec, device, n: int | None = None):
    n = n or spec.batch_size
    return torch.rand(n, 3, 32, 32, device=device), torch.randint(0, 10, (n,), device=device)


def sync_check(preset: str, device: str) -> dict:
    """Per Table-1 method: "ok" when one training iteration reads nothing on the host, else the error."""
    from advmoe.train import iteration, make_optimizers

    out = {}
    where = "meta" if device == "cpu" else device
    for label, *_ in ex.TABLE1:
        spec = _spec(preset, label)
        model = _model(spec, where, accel.Accel("static"))
        opts, batch = make_optimizers(model, spec), _batch(spec, where)
        try:
            if where == "meta":
                iteration(model, opts, batch, batch, spec)
            else:
                iteration(model, opts, batch, batch, spec)  # warm-up: allocator and kernel selection may sync once
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("error")
                try:
                    iteration(model, opts, batch, batch, spec)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            out[label] = "ok"
        except Exception as e:  # noqa: BLE001 - the finding is the error itself
            out[label] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_config(preset: str, device: str, text: str, seconds: float) -> dict:
    """Training images/s (full iterations) and PGD-20 images/s of each `TIMED` model under ADVMOE_ACCEL=text,
    with the compile/warm-up time kept apart."""
    from advmoe.attacks import pgd
    from advmoe.train import iteration, make_optimizers

    settings = accel.parse(text, torch.device(device))
    out = {}
    for label in TIMED:
        spec = _spec(preset, label)
        model = _model(spec, device, settings)
        opts, batch = make_optimizers(model, spec), _batch(spec, device)
        t0 = time.perf_counter()
        with accel.compiled(model, device, settings):
            for _ in range(3):  # warm-up: compilation, graph capture
                with accel.autocast(device, settings):
                    iteration(model, opts, batch, batch, spec)
            _sync(device)
            warm = time.perf_counter() - t0
            n, t1 = 0, time.perf_counter()
            while n < 3 or time.perf_counter() - t1 < seconds:
                with accel.autocast(device, settings):
                    iteration(model, opts, batch, batch, spec)
                n += 1
                if n % 5 == 0:
                    _sync(device)
            _sync(device)
            train_ips = n * spec.batch_size / (time.perf_counter() - t1)
        xe, ye = _batch(spec, device, 256)
        pgd(model.eval(), xe, ye, spec.eval_eps, spec.eval_step_size, 2)
        _sync(device)
        t2 = time.perf_counter()
        pgd(model, xe, ye, spec.eval_eps, spec.eval_step_size, gpupreset.EVAL_STEPS)
        _sync(device)
        out[label] = {"train_images_per_s": train_ips, "pgd20_images_per_s": 256 / (time.perf_counter() - t2),
                      "warm_up_seconds": warm, "iterations_timed": n}
        print(f"  {text or 'eager'}: {label} {train_ips:.0f} img/s train, {out[label]['pgd20_images_per_s']:.0f} "
              f"img/s PGD-20 (warm-up {warm:.0f}s)", flush=True)
    return out


def concurrent(preset: str, device: str, text: str, k: int, seconds: float, warm_up: float) -> float:
    """Aggregate training images/s of k processes training AT (MoE) on one device at once."""
    start = time.time() + 5 + 2 * warm_up + 2 * k  # every process warms up first, then all time the same interval
    cmd = [sys.executable, __file__, "--worker", str(start), "--preset", preset, "--device", device,
           "--seconds", str(seconds), "--accel", text]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(k)]
    counts = [json.loads(p.communicate(timeout=start - time.time() + seconds + 120)[0].strip().splitlines()[-1])
              for p in procs]
    return sum(c["images"] for c in counts) / max(c["seconds"] for c in counts)


def worker(start: float, preset: str, device: str, seconds: float, text: str) -> None:
    from advmoe.train import iteration, make_optimizers

    settings = accel.parse(text, torch.device(device))
    spec = _spec(preset, "AT (MoE)")
    model = _model(spec, device, settings)
    opts, batch = make_optimizers(model, spec), _batch(spec, device)
    with accel.compiled(model, device, settings), accel.autocast(device, settings):
        while True:  # warm up until the common start
            iteration(model, opts, batch, batch, spec)
            _sync(device)
            if time.time() >= start:
                break
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            iteration(model, opts, batch, batch, spec)
            n += 1
        _sync(device)
    print(json.dumps({"images": n * spec.batch_size, "seconds": time.perf_counter() - t0}), flush=True)


def units(preset: str, device: str, k: int, seeds: tuple[int, ...], labels: tuple[str, ...] = MODELS) -> None:
    """The preset's Table-1 slice (`labels` of it), seed after seed (a window that ends mid-way leaves whole seeds),
    k at a time, each model trained and evaluated: metrics, AutoAttack, the worst case (`worst_case_eval`)."""
    from advmoe.worstcase import worst_case_eval

    for seed in seeds:
        ex.get_many([ex.row_spec(preset, kind, method, scale, seed=seed) for label, kind, method, scale in ex.TABLE1
                     if label in labels], device, jobs=k, progress=False, task=worst_case_eval,
                    on_done=lambda spec, r: print(f"done {spec.name} ({spec.hash}): RA worst {100 * r['ra_worst']:.2f}"
                                                  f"  RA-AA {100 * r['ra_aa']:.2f}", flush=True))


def _run_until(cmd: list[str], env: dict, seconds: float) -> str:
    """Run cmd in a process group of its own; at the deadline stop the group (the units' workers too). Returns the
    end of its output."""
    import signal

    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=seconds)
        output += f"\nexit status {proc.returncode}"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # workers keep their last checkpoint; stored units are whole
        output, _ = proc.communicate()
        output += "\nstopped at the deadline"
    return output[-3000:]


def _save(report: dict, out: Path) -> None:
    atomic_write_json(report, out / "gpu-window.json")


def bundle(preset: str, out: Path, root: Path) -> list[str]:
    """The stored results of `preset` (every JSON, no checkpoint) as OUT/gpu-results.tar.gz."""
    files = sorted((root / preset).glob("*/*.json")) if (root / preset).is_dir() else []
    sizing = [f for f in (gpupreset.SIZING, gpupreset.WINDOW_REPORT) if preset == "gpu" and f.is_file()]
    with tarfile.open(out / "gpu-results.tar.gz", "w:gz") as tar:
        for f in files:
            tar.add(f, arcname=str(f.relative_to(root.parent)))
        for f in sizing:
            tar.add(f, arcname=str(f.relative_to(REPO)))
    return [f.parent.name for f in files if f.name == "metrics.json"]


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path)
    p.add_argument("--minutes", type=float, default=8.0, help="wall-clock budget of the whole call (default 8)")
    p.add_argument("--dry-run", action="store_true", help="the smoke preset on the CPU, in a few minutes")
    p.add_argument("--worker", type=float, help=argparse.SUPPRESS)
    p.add_argument("--time-config", help=argparse.SUPPRESS)
    p.add_argument("--units", type=int, metavar="K", help=argparse.SUPPRESS)
    p.add_argument("--preset", default="gpu", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, default=10.0, help=argparse.SUPPRESS)
    p.add_argument("--accel", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is not None:
        return worker(args.worker, args.preset, args.device, args.seconds, args.accel)
    if args.units is not None:
        dry = args.preset == "smoke"
        return units(args.preset, args.device, args.units, (0,) if dry else ex.preset_seeds(args.preset),
                     DRY_RUN_UNITS if dry else MODELS)
    if args.time_config is not None:
        print(json.dumps(time_config(args.preset, args.device, args.accel, args.seconds)), flush=True)
        return {}
    if args.out is None:
        p.error("--out DIR is required")
    deadline = time.time() + 60 * args.minutes
    preset, device = ("smoke", "cpu") if args.dry_run else ("gpu", "cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_window.py: no CUDA GPU visible; run it on a GPU machine, or pass --dry-run")
    configs = {"eager": ""} if args.dry_run else CONFIGS  # torch.compile and bf16 are for a GPU (advmoe.accel)
    ks = (1, 2) if args.dry_run else KS
    seconds = 1.0 if args.dry_run else 6.0
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run)", "preset": preset,
              "torch": torch.__version__, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    print("1. sync check", flush=True)
    report["sync"] = sync_check(preset, device)
    print(f"  {report['sync']}", flush=True)
    _save(report, args.out)

    print("2. step speed per configuration", flush=True)
    report["configs"] = {}
    start_units = time.time() + 0.45 * (deadline - time.time())  # the checks and timings take under half
    for i, (name, text) in enumerate(configs.items()):
        cmd = [sys.executable, __file__, "--time-config", name, "--preset", preset, "--device", device,
               "--seconds", str(seconds), "--accel", text]
        left = start_units - time.time()  # each configuration its share of the time before the units
        if left < 30:
            report["configs"][name] = {"error": "skipped: no time left in the window"}
            continue
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=left / (len(configs) - i))
            report["configs"][name] = (json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0
                                       else {"error": done.stderr.strip().splitlines()[-1][:300]})
            print(done.stdout.strip() if done.returncode == 0 else f"  {name}: {report['configs'][name]}", flush=True)
        except subprocess.TimeoutExpired:
            report["configs"][name] = {"error": "timed out (compile or warm-up too slow)"}
        _save(report, args.out)
    working = {n: c for n, c in report["configs"].items() if "error" not in c}
    if not working:
        raise SystemExit("gpu_window.py: no configuration trained; see gpu-window.json")
    best = max(working, key=lambda n: 1 / sum(1 / working[n][m]["train_images_per_s"] for m in TIMED))
    speeds = working[best]
    report["best_config"] = best
    # issue 22's goal is per TRADES step: AdvMoE's iteration is two of them (router step, backbone step)
    report["ratios_per_trades_step"] = {
        f"{m} / AT (S-Dense)": (2 if m == "AdvMoE" else 1) * speeds[m]["train_images_per_s"]
        / speeds["AT (S-Dense)"]["train_images_per_s"] for m in TIMED}
    if "eager" in working and best != "eager":
        report["speed_up_over_eager"] = {m: speeds[m]["train_images_per_s"] / working["eager"][m]["train_images_per_s"]
                                         for m in TIMED}
    _save(report, args.out)

    print(f"3. concurrent trainings ({best})", flush=True)
    report["concurrency"] = {}
    for k in ks:
        try:
            if time.time() > start_units + 0.1 * (deadline - start_units):
                raise ValueError("no time left in the window")
            report["concurrency"][str(k)] = concurrent(preset, device, configs[best], k, seconds,
                                                       speeds["AT (MoE)"]["warm_up_seconds"])
        except (subprocess.TimeoutExpired, ValueError, IndexError) as e:
            report["concurrency"][str(k)] = None
            print(f"  K = {k}: failed ({type(e).__name__})", flush=True)
        print(f"  K = {k}: {report['concurrency'][str(k)]} img/s in all", flush=True)
        _save(report, args.out)
    measured = {k: v for k, v in report["concurrency"].items() if v}
    k_best = int(max(measured, key=measured.get)) if measured else 1
    gain = measured[str(k_best)] / measured["1"] if measured.get("1") else 1.0
    report["k"], report["concurrency_gain"] = k_best, gain

    print("4. sizing", flush=True)
    sized = gpupreset.size({m: speeds[m]["train_images_per_s"] for m in TIMED},
                           {m: speeds[m]["pgd20_images_per_s"] for m in TIMED}, gain)
    sized.update(measured_on=report["device"], config=best, accel=configs[best], k=k_best)
    report["sizing"] = (gpupreset.write_sizing(sized) if not args.dry_run else sized)
    print(f"  {report['sizing']}", flush=True)
    _save(report, args.out)

    print("5. units", flush=True)
    root = Path(os.environ.get("ADVMOE_RESULTS", REPO / "results"))
    left = deadline - time.time() - 30
    env = {**os.environ, accel.ENV: configs[best]}
    cmd = [sys.executable, __file__, "--units", str(k_best), "--preset", preset, "--device", device]
    if left > 60 or args.dry_run:
        report["units_output"] = _run_until(cmd, env, max(left, 60))
    if not args.dry_run:  # committed beside the results: the How-to-reproduce page reads the speeds from it
        atomic_write_json({**report, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                          gpupreset.WINDOW_REPORT)
    report["units_stored"] = bundle(preset, args.out, root)
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    _save(report, args.out)
    print(f"done: {len(report['units_stored'])} unit(s) stored; {args.out / 'gpu-window.json'}", flush=True)
    return report


if __name__ == "__main__":
    main()
