"""Scale-out on this machine: the smoke preset's Table-1 slice (every seed, HYDRA's chain included) run by the local
executor with --jobs 2 and by a local Ray instance (`advmoe.cluster`), wall time and results compared; and one smoke
training (AT (Dense), 2 epochs) by torchrun on 2 processes against one process (`advmoe.distributed`): the relative
distance of the weights, beside the distance a change of CPU kernels (ATen's default instead of AVX2, one process)
makes. Every run writes to a temporary results directory; the numbers are stored in
results/bench/scale-out-cpu.json. Run it on an idle machine (the times are wall-clock).

    python benchmarks/scale_out.py
"""
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from advmoe import cluster
from advmoe import experiments as ex
from advmoe.data import REPO
from advmoe.io import atomic_write_json

SETTINGS = dict(base_width=4, epochs=2, train_subset=64, batch_size=16, test_subset=16, eval_steps=2, lr=0.01)


def comparable(m: dict):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in m["history"]], m["final"], m["model_sha256"]


def units(tmp: Path) -> dict:
    specs = ex.table1("smoke")
    out = {"units": [s.name for s in specs]}
    for name, run in (("local --jobs 2", lambda: ex.get_many(specs, root=tmp / "local", progress=False, jobs=2)),
                      ("ray (local instance)", None)):
        t0 = time.perf_counter()
        if run is not None:
            results = run()
        else:
            with cluster.executor("ray"):
                started = time.perf_counter()
                results = ex.get_many(specs, root=tmp / "ray", progress=False)
            out["ray_start_seconds"] = started - t0
        out[name] = {"wall_seconds": time.perf_counter() - t0, "results": [comparable(m) for m in results]}
        print(f"{len(specs)} smoke units, {name}: {out[name]['wall_seconds']:.0f} s", flush=True)
    out["same_results"] = out["local --jobs 2"].pop("results") == out["ray (local instance)"].pop("results")
    print(f"Ray started in {out['ray_start_seconds']:.0f} s; same results as the local run: {out['same_results']}")
    return out


def torchrun(tmp: Path) -> dict:
    spec = ex.make_spec("smoke", "dense", "at", 1.0, **SETTINGS)
    cli = ["run", "--preset", "smoke", "--only", spec.name, "--no-progress", "--set",
           *(f"{k}={v}" for k, v in SETTINGS.items())]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    runs = {"one process": ([sys.executable, "-m", "advmoe"], {}),
            "torchrun, 2 processes": ([str(Path(sys.executable).with_name("torchrun")), "--standalone",
                                       "--nproc-per-node", "2", "-m", "advmoe"], {}),
            "one process, ATen default kernels": ([sys.executable, "-m", "advmoe"],
                                                  {"ADVMOE_NUMERICS": "native", "ATEN_CPU_CAPABILITY": "default"})}
    out, weights = {"spec": spec.name}, {}
    for name, (cmd, extra) in runs.items():
        root = tmp / name.replace(" ", "_").replace(",", "")
        t0 = time.perf_counter()
        subprocess.run(cmd + cli, env={**env, **extra, "ADVMOE_RESULTS": str(root)}, check=True, capture_output=True)
        out[name] = {"wall_seconds": time.perf_counter() - t0}
        weights[name] = torch.load(ex.result_dir(spec, root) / "checkpoint.pt", weights_only=True)["model"]
    keys = [k for k in weights["one process"] if "running" not in k and "num_batches" not in k]
    flat = {n: torch.cat([w[k].float().flatten() for k in keys]) for n, w in weights.items()}
    base = flat["one process"]
    for name in list(runs)[1:]:
        out[name]["relative_weight_distance"] = float((flat[name] - base).norm() / base.norm())
        print(f"{name}: weights {out[name]['relative_weight_distance']:.2e} (relative L2) from one process", flush=True)
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        result = {"units": units(Path(tmp)), "torchrun": torchrun(Path(tmp)),
                  "provenance": ex.provenance(ex.resolve_device("cpu"))}
    path = REPO / "results" / "bench" / "scale-out-cpu.json"
    atomic_write_json(result, path)
    print(f"stored in {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
