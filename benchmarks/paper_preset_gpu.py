"""Time the paper preset on a GPU and estimate its GPU hours (the How-to-reproduce page quotes the result).

For each Table-1 model at the paper's settings (ResNet-18 width 64, batch 128, TRADES with the 2-step
training PGD; AdvMoE's iteration is its router step plus its backbone step) it measures training images per
second and PGD-50 evaluation images per second on random inputs (speed does not depend on the pixels; the
MoE routers get a random term so every layer really splits the batch). Then: hours = 100 epochs x 50,000
images / train speed + 10,000 test images x (PGD-50 + clean) / eval speed, per model and seed.

    python benchmarks/paper_preset_gpu.py [--output FILE]     (needs a CUDA GPU)
"""
from __future__ import annotations

import argparse
import time

import torch

from advmoe import bench
from advmoe.attacks import pgd
from advmoe.experiments import TABLE1, preset_seeds, row_spec
from advmoe.io import atomic_write_json
from advmoe.models import create_model
from advmoe.train import iteration, make_optimizers


def timed(fn, repeats: int, device) -> float:
    fn()  # warm-up (allocator, kernel selection)
    torch.cuda.synchronize(device)
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize(device)
    return (time.perf_counter() - t) / repeats


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output")
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("paper_preset_gpu.py: no CUDA GPU visible; run it on a GPU machine")
    dev = torch.device("cuda")
    # cuDNN's autotuner stays off, as in training: an MoE layer sees a new batch size per expert at every
    # step, and autotuning each new shape made AT (MoE) 200x slower (measured on an H100: 19 img/s).
    torch.backends.cudnn.benchmark = False
    seeds = len(preset_seeds("paper"))
    rows = {}
    jobs = []
    for label, *row in TABLE1:
        spec = row_spec("paper", *row)
        if spec.method == "hydra-finetune":  # AT (Sparse): the mask stage (Dense width, masked), then fine-tuning
            jobs.append((f"{label}, mask stage", spec.parent))
            label = f"{label}, fine-tuning"
        jobs.append((label, spec))
    for label, spec in jobs:
        torch.manual_seed(0)
        model = bench.mixed_routing(create_model("resnet18", spec.kind, spec.scale, spec.n_experts)).to(dev)
        opt = make_optimizers(model, spec)
        x = torch.rand(spec.batch_size, 3, 32, 32, device=dev)
        y = torch.randint(0, 10, (spec.batch_size,), device=dev)
        train_s = timed(lambda: iteration(model, opt, (x, y), (x, y), spec), args.repeats, dev)
        xe, ye = torch.rand(500, 3, 32, 32, device=dev), torch.randint(0, 10, (500,), device=dev)
        eval_s = timed(lambda: pgd(model, xe, ye, spec.eval_eps, spec.eval_step_size, spec.eval_steps), 3, dev)
        train_ips, eval_ips = spec.batch_size / train_s, 500 / eval_s
        hours = (spec.epochs * 50_000 / train_ips + 10_000 / eval_ips) / 3600
        rows[label] = {"train_images_per_s": train_ips, "pgd50_images_per_s": eval_ips, "hours_per_seed": hours}
        print(f"{label:14s} train {train_ips:8.0f} img/s   PGD-50 eval {eval_ips:7.0f} img/s   "
              f"{hours:5.2f} h per seed", flush=True)
    total = seeds * sum(r["hours_per_seed"] for r in rows.values())
    result = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__, "seeds": seeds,
              "models": rows, "table1_slice_gpu_hours": total,
              "note": "random inputs; the MoE routers split every batch; 100 epochs x 50k images, PGD-50 on 10k"}
    print(f"Table-1 slice at the paper preset ({seeds} seeds): {total:.1f} GPU hours on {result['device']}")
    if args.output:
        atomic_write_json(result, args.output)
    return result


if __name__ == "__main__":
    main()
