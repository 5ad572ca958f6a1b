"""How much a preset's results move with the training seed: the noise model a verdict needs.

Trains the Table-1 models of a preset with several seeds (on any device: the seed spread is a property of
training randomness, so a GPU can measure it for the CPU preset quickly) and writes, per model, the final
SA/RA and the per-image correctness. `--combine` then reports each model's seed SD and, for the Table-1
comparisons, the seed SD of the paired gap, the paired test-set SE and the threshold the book's verdict
rule would need with that many seeds.

    python benchmarks/seed_spread.py --preset cpu --model "AT (MoE)" --seeds 0 1 2 --device cuda --output DIR
    python benchmarks/seed_spread.py --combine DIR/*.json --output results/bench/seed-spread-cpu.json
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from advmoe import experiments as ex
from advmoe import report as R
from advmoe.io import atomic_write_json

COMPARISONS = [("AdvMoE", "AT (MoE)"), ("AdvMoE", "AT (S-Dense)"), ("AdvMoE", "AT (Dense)"), ("AT (S-Dense)", "AT (MoE)")]


def train(preset: str, model: str, seeds: list[int], device: str, output: Path, overrides: dict) -> None:
    label, kind, method, scale = next(row for row in ex.TABLE1 if row[0] == model)
    runs = []
    with tempfile.TemporaryDirectory() as root:
        for seed in seeds:
            spec = ex.row_spec(preset, kind, method, scale, seed=seed, **overrides)
            t0 = time.perf_counter()
            m = ex.run(spec, device, Path(root), progress=False)
            runs.append({"seed": seed, "hash": spec.hash, "final": {k: m["final"][k] for k in ("sa", "ra", "n_test", "correct")},
                         "seconds": time.perf_counter() - t0, "device": m["provenance"]["device_name"]})
            print(f"{label} seed {seed}: SA {100 * m['final']['sa']:.1f} RA {100 * m['final']['ra']:.1f} "
                  f"({runs[-1]['seconds']:.0f}s)", flush=True)
    atomic_write_json({"preset": preset, "overrides": overrides, "label": label, "runs": runs},
                      output / f"seed-spread-{kind}-{method}-s{'-'.join(map(str, seeds))}.json")


def combine(files: list[str], output: str | None) -> dict:
    models: dict[str, dict] = {}
    for f in files:  # one model's seeds may come in several files
        d = json.loads(Path(f).read_text())
        models.setdefault(d["label"], {**d, "runs": []})["runs"] += d["runs"]
    out = {"preset": next(iter(models.values()))["preset"], "models": {}, "comparisons": {}}
    for label, d in models.items():
        for metric in ("sa", "ra"):
            mean, sd = R._mean_std([100 * r["final"][metric] for r in d["runs"]])
            out["models"].setdefault(label, {})[metric] = {"mean": mean, "seed_sd": sd, "seeds": len(d["runs"])}
    for a, b in COMPARISONS:
        if a in models and b in models:
            ra = {r["seed"]: r for r in models[a]["runs"]}
            pairs = [(ra[r["seed"]], r) for r in models[b]["runs"] if r["seed"] in ra]
            v = R.verdict(f"{a} RA > {b} RA", [p for p, _ in pairs], [q for _, q in pairs], "ra", out["preset"])
            gaps = [100 * (p["final"]["ra"] - q["final"]["ra"]) for p, q in pairs]
            se_test, n, paired = R.test_set_se([p for p, _ in pairs], [q for _, q in pairs], "ra")
            out["comparisons"][f"{a} > {b}"] = {"gaps": gaps, "gap_seed_sd": R._mean_std(gaps)[1],
                                               "test_set_se": se_test, "paired": paired, "n": n,
                                               "threshold": v.threshold, "verdict": v.status}
    print(json.dumps(out, indent=1))
    if output:
        atomic_write_json(out, output)
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cpu")
    p.add_argument("--model", choices=[row[0] for row in ex.TABLE1], help="a Table-1 row, by its label")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--device", default="cpu")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="spec overrides (JSON values)")
    p.add_argument("--combine", nargs="+", help="per-model files to combine")
    p.add_argument("--output")
    a = p.parse_args()
    if a.combine:
        combine(a.combine, a.output)
    else:
        overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in a.set)}
        train(a.preset, a.model, a.seeds, a.device, Path(a.output), overrides)
