"""Wall-clock of Dense, S-Dense (r = 0.5), sparse MoE (r = 0.5, N = 2) and the dense+mask MoE reference.

Inference at batch 256 and one training iteration (TRADES with the 2-step training attack) at batch 128,
as ratios to Dense. The MoE routers are given a large random term per sample, so every MoE layer really
splits the batch between its experts (the case of a trained model, and the worst case for grouping);
they keep their parameters, so the router's cost and gradient are in the timing.

Targets (issue 2): sparse MoE inference <= 1.15x S-Dense and <= 0.75x the dense+mask reference; one
AdvMoE iteration (router step + backbone step) <= 1.0x one AT(Dense) iteration at the same batch size.
"""
from __future__ import annotations

import contextlib
import platform
import statistics
import time

import torch
from tqdm import tqdm

from . import data as datalib
from .experiments import make_spec, model_for
from .io import atomic_write_json
from .models import Router, SharedRouter, create_model, dense_reference
from .train import iteration, make_optimizers


def mixed_routing(model):
    """Make every router's choice random per sample (its parameters still get gradients)."""
    for m in model.modules():
        if isinstance(m, (Router, SharedRouter)):
            m.forward = lambda x, f=m.forward, n=m.fc.out_features: f(x) + 100 * torch.randn(x.shape[0], n, device=x.device)
    return model


def interleaved(fns: dict, repeats: int, bar=None) -> dict:
    """Median time of each function, measured in rounds (A, B, C, A, B, C, ...) so that drift in the
    machine's speed hits every function alike. bar: a tqdm bar, advanced once per round (warm-up included)."""
    for fn in fns.values():
        fn()  # warm-up
    if bar is not None:
        bar.update()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
        if bar is not None:
            bar.update()
    return {k: statistics.median(v) for k, v in times.items()}


def main(width: int = 64, batch: int = 256, train_batch: int = 128, repeats: int = 5, output: str | None = None,
         progress: bool = True) -> dict:
    torch.manual_seed(0)
    x, xt = torch.rand(batch, 3, 32, 32), torch.rand(train_batch, 3, 32, 32)
    yt = torch.randint(0, 10, (train_batch,))
    rows = {  # label -> (kind, scale, method, dense reference?)
        "Dense": ("dense", 1.0, "at", False),
        "S-Dense": ("s-dense", 0.5, "at", False),
        "MoE (sparse)": ("moe", 0.5, "at", False),
        "MoE (dense+mask)": ("moe", 0.5, "at", True),
        "AdvMoE iteration": ("moe", 0.5, "advmoe", False),
    }
    result = {"width": width, "batch": batch, "train_batch": train_batch, "repeats": repeats,
              "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
              "torch": torch.__version__, "seconds": {}}
    inference, training = {}, {}
    for label, (kind, scale, method, reference) in rows.items():
        spec = make_spec("paper", kind, method, scale, base_width=width, batch_size=train_batch)
        model = mixed_routing(create_model("resnet18", kind, scale, 2, base_width=width))
        optimizers = make_optimizers(model, spec)

        def in_mode(fn, model=model, reference=reference):
            def call():
                with dense_reference(model) if reference else contextlib.nullcontext():
                    return fn()
            return call

        if method == "at":
            def infer(model=model):
                model.eval()
                with torch.no_grad():
                    model(x)
            inference[label] = in_mode(infer)
        training[label] = in_mode(lambda model=model, opt=optimizers, spec=spec:
                                  iteration(model, opt, (xt, yt), (xt, yt), spec))
    with tqdm(total=2, desc="bench (inference, training)", disable=not progress) as bar:
        inf_times = interleaved(inference, repeats)
        bar.update()
        train_times = interleaved(training, repeats)
        bar.update()
    result["seconds"] = {k: {**({"inference": inf_times[k]} if k in inf_times else {}),
                             "train_iteration": train_times[k]} for k in rows}
    s = result["seconds"]
    inf = {k: v["inference"] for k, v in s.items() if "inference" in v}
    result["ratios_to_dense"] = {
        "inference": {k: v / inf["Dense"] for k, v in inf.items()},
        "train_iteration": {k: v["train_iteration"] / s["Dense"]["train_iteration"] for k, v in s.items()},
    }
    result["targets"] = {
        "moe_inference_vs_sdense": (inf["MoE (sparse)"] / inf["S-Dense"], 1.15),
        "moe_inference_vs_dense_mask": (inf["MoE (sparse)"] / inf["MoE (dense+mask)"], 0.75),
        "advmoe_iteration_vs_at_dense": (s["AdvMoE iteration"]["train_iteration"] / s["Dense"]["train_iteration"], 1.0),
    }
    print(f"ResNet-18 base width {width}, {result['threads']} threads; inference batch {batch}, "
          f"training batch {train_batch} (TRADES, 2-step PGD); median of {repeats} interleaved rounds")
    print(f"{'model':20s} {'inference s':>12s} {'x Dense':>8s} {'train it s':>11s} {'x Dense':>8s}")
    for k, v in s.items():
        r = result["ratios_to_dense"]
        inf_s = f"{v['inference']:12.3f} {r['inference'][k]:8.2f}" if "inference" in v else f"{'-':>12s} {'-':>8s}"
        print(f"{k:20s} {inf_s} {v['train_iteration']:11.3f} {r['train_iteration'][k]:8.2f}")
    for name, (value, target) in result["targets"].items():
        print(f"{name:32s} {value:.2f} (target <= {target:.2f}: {'met' if value <= target else 'NOT met'})")
    if output:
        atomic_write_json(result, output)
    return result


# One process of `pin_cost`: median seconds of one AT training iteration (TRADES, 2-step PGD) per model.
_PIN_WORKER = """
import json, statistics, sys, time
import advmoe, torch
from advmoe import bench, numerics
from advmoe.experiments import make_spec
from advmoe.models import create_model
from advmoe.train import iteration, make_optimizers
width, batch, repeats, threads = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
numerics.use_pinned_threads() if numerics.mode() == "pinned" else torch.set_num_threads(threads)
torch.manual_seed(0)
x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
out = {"numerics": numerics.state()}
for label, kind in (("AT (S-Dense)", "s-dense"), ("AT (MoE)", "moe")):
    spec = make_spec("paper", kind, "at", 0.5, base_width=width, batch_size=batch)
    model = bench.mixed_routing(create_model("resnet18", kind, 0.5, 2, base_width=width))
    opt = make_optimizers(model, spec)
    times = []
    for i in range(repeats + 1):  # the first is a warm-up
        t = time.perf_counter()
        iteration(model, opt, (x, y), (x, y), spec)
        times.append(time.perf_counter() - t)
    out[label] = statistics.median(times[1:])
print(json.dumps(out))
"""


def pin_cost(width: int = 16, batch: int = 128, rounds: int = 3, repeats: int = 3, progress: bool = True) -> dict:
    """What the pinned numerics cost: one AT training iteration, pinned / native, per model.

    The kernel choice is fixed per process, so each round starts one process per mode, one after the other
    (interleaved, so drift in the machine's speed hits every mode alike), each timing `repeats` iterations
    after a warm-up. Modes: pinned (AVX2 kernels, one thread); native, 1 thread (ADVMOE_NUMERICS=native: the
    CPU's own kernels; what each worker of --jobs N gets); native, all cores (the kernels and every core).
    """
    import json
    import os
    import subprocess
    import sys

    base = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR",
                                                           "ADVMOE_NUMERICS")}
    modes = {"pinned": ("pinned", 1), "native, 1 thread": ("native", 1),
             f"native, {os.cpu_count()} threads": ("native", os.cpu_count() or 1)}
    runs = {mode: [] for mode in modes}
    for _ in tqdm(range(rounds), desc=f"pin cost, width {width}", disable=not progress):
        for mode, (switch, threads) in modes.items():
            out = subprocess.run([sys.executable, "-c", _PIN_WORKER, str(width), str(batch), str(repeats), str(threads)],
                                 env={**base, "ADVMOE_NUMERICS": switch}, capture_output=True, text=True, check=True)
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    models = [k for k in runs["pinned"][0] if k != "numerics"]
    seconds = {mode: {m: statistics.median(r[m] for r in rs) for m in models} for mode, rs in runs.items()}
    return {"width": width, "batch": batch, "rounds": rounds, "repeats": repeats, "seconds": seconds,
            "ratio_pinned_to_native": {mode: {m: seconds["pinned"][m] / seconds[mode][m] for m in models}
                                       for mode in modes if mode != "pinned"},
            "numerics": {mode: rs[0]["numerics"] for mode, rs in runs.items()}, "torch": torch.__version__}


# One process of `moe_cost`: S-Dense and sparse MoE (r = 0.5, N = 2, routing split per sample), interleaved.
_MOE_WORKER = """
import json, sys
import advmoe, torch
from advmoe import bench, numerics
from advmoe.experiments import make_spec
from advmoe.models import create_model
from advmoe.train import iteration, make_optimizers
width, batch, train_batch, repeats = map(int, sys.argv[1:5])
numerics.use_pinned_threads()
torch.manual_seed(0)
x, xt, yt = torch.rand(batch, 3, 32, 32), torch.rand(train_batch, 3, 32, 32), torch.randint(0, 10, (train_batch,))
fns = {}
for kind in ("s-dense", "moe"):
    spec = make_spec("paper", kind, "at", 0.5, base_width=width, batch_size=train_batch)
    model = bench.mixed_routing(create_model("resnet18", kind, 0.5, 2, base_width=width))
    opt = make_optimizers(model, spec)
    fns[kind + " train"] = lambda m=model, o=opt, s=spec: iteration(m, o, (xt, yt), (xt, yt), s)
    def infer(m=model):
        m.eval()
        with torch.no_grad():
            m(x)
    fns[kind + " inference"] = infer
print(json.dumps({"seconds": bench.interleaved(fns, repeats), "numerics": numerics.state()}))
"""


def moe_cost(width: int = 16, batch: int = 256, train_batch: int = 128, rounds: int = 5, repeats: int = 5,
             progress: bool = True) -> dict:
    """Sparse MoE against S-Dense at the same r (issue 8: training <= 1.15x, inference <= 1.10x).

    Each round is a fresh process (pinned numerics, as the book computes) timing both models interleaved,
    `repeats` times after a warm-up; the ratio is taken per round and the median over rounds is reported,
    because on this machine the process-to-process spread of one ratio (about 0.2) exceeds the spread within
    a process.
    """
    import json
    import subprocess
    import sys

    runs = []
    for _ in tqdm(range(rounds), desc=f"MoE cost, width {width}", disable=not progress):
        out = subprocess.run([sys.executable, "-c", _MOE_WORKER, str(width), str(batch), str(train_batch), str(repeats)],
                             capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    ratios = {what: [r["seconds"][f"moe {what}"] / r["seconds"][f"s-dense {what}"] for r in runs]
              for what in ("train", "inference")}
    return {"width": width, "batch": batch, "train_batch": train_batch, "rounds": rounds, "repeats": repeats,
            "seconds_per_round": [r["seconds"] for r in runs], "ratio_per_round": ratios,
            "ratio_median": {k: statistics.median(v) for k, v in ratios.items()},
            "targets": {"train": 1.15, "inference": 1.10}, "numerics": runs[0]["numerics"], "torch": torch.__version__}


def config(spec) -> tuple:
    """What one training iteration of `spec` costs depends on: model shape, method, attack steps, batch, the image
    size and classes (the dataset), and for a Robust Experts model where its MoE sits, its gate and k."""
    return (spec.backbone, spec.kind, spec.method, spec.scale, spec.n_experts, spec.base_width, spec.train_steps,
            spec.batch_size, spec.placement, spec.gate, spec.top_k, spec.dataset)


def load_factor(seconds: dict[tuple, float], anchor, preset: str = "cpu") -> float:
    """How loaded this machine was during `iteration_seconds` rounds that also timed `anchor` (the Robust Experts
    chapter's AT (Dense), PGD-7): its seconds here over those stored in results/bench/robust-experts-cost-<preset>.json
    (an idle machine); 1 when none is stored. Printed, with both times."""
    from .data import REPO
    from .io import read_json

    stored = read_json(REPO / "results" / "bench" / f"robust-experts-cost-{preset}.json")
    idle = next((r["seconds_per_iteration"] for r in (stored or {}).get("rows", []) if r["model"] == "AT (Dense)"),
                None)
    here = seconds[config(anchor)]
    print(f"load factor {here / idle if idle else 1.0:.2f} (AT (Dense) PGD-7: {here:.2f} s here, "
          f"{idle or float('nan'):.2f} s stored)")
    return here / idle if idle else 1.0


def iteration_seconds(specs: list, repeats: int = 3, progress: bool = True) -> dict[tuple, float]:
    """Median seconds of one training iteration of each distinct `config` among `specs`, on random inputs, all timed
    in this process in interleaved rounds (drift in the machine's speed hits every configuration alike; the
    ratios between them are what `advmoe.scale.estimate` uses). The MoE routers split every batch."""
    fns = {}
    for spec in specs:
        key = config(spec)
        if key in fns:
            continue
        torch.manual_seed(0)
        model = mixed_routing(model_for(spec))
        side = datalib.IMAGE_SIZE[spec.dataset]
        x, y = torch.rand(spec.batch_size, 3, side, side), torch.randint(0, spec.num_classes, (spec.batch_size,))
        fns[key] = lambda m=model, o=make_optimizers(model, spec), s=spec, b=(x, y): iteration(m, o, b, b, s)
    with tqdm(total=repeats + 1, desc=f"timing {len(fns)} training configurations (rounds)", disable=not progress) as bar:
        return interleaved(fns, repeats, bar)
